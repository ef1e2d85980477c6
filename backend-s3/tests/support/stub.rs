//! A tiny HTTP server that plays a misbehaving S3 store: it answers every
//! request with one fixed response, whatever its headers say. With `200`
//! it is a store that ignores conditional writes (every `If-None-Match: *`
//! and `If-Match` PUT "succeeds"); with `403` one that refuses the
//! credentials; with `503` one that is failing.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// The response the stub gives to every request.
#[derive(Clone, Copy, Debug)]
pub enum StubResponse {
    /// `200 OK` with an ETag: conditions are ignored.
    IgnoreConditions,
    /// `403 AccessDenied`.
    AccessDenied,
    /// `503 SlowDown`.
    Unavailable,
}

impl StubResponse {
    fn render(self) -> String {
        let (status, body) = match self {
            StubResponse::IgnoreConditions => ("200 OK", String::new()),
            StubResponse::AccessDenied => {
                ("403 Forbidden", error_body("AccessDenied", "Access Denied"))
            }
            StubResponse::Unavailable => (
                "503 Service Unavailable",
                error_body("SlowDown", "Please reduce your request rate."),
            ),
        };
        format!(
            "HTTP/1.1 {status}\r\nETag: \"stub-etag\"\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }
}

fn error_body(code: &str, message: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    )
}

/// Starts the stub on a free loopback port; returns its endpoint URL. The
/// server runs until the test's runtime stops.
pub async fn start_stub(response: StubResponse) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind stub");
    let address = listener.local_addr().expect("stub address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                loop {
                    let mut content_length = 0usize;
                    let mut saw_request = false;
                    loop {
                        let mut line = String::new();
                        match reader.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if line == "\r\n" && saw_request {
                            break;
                        }
                        saw_request = true;
                        if let Some((name, value)) = line.split_once(':')
                            && name.eq_ignore_ascii_case("content-length")
                        {
                            content_length = value.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; content_length];
                    if reader.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let reply = response.render();
                    if reader.get_mut().write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{address}")
}
