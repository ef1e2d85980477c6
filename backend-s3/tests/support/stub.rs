//! A tiny HTTP server that plays a misbehaving S3 store. In most modes it
//! answers every request with one fixed response, whatever its headers say:
//! with `200` it is a store that ignores conditional writes (every
//! `If-None-Match: *` and `If-Match` PUT "succeeds"); with `403` one that
//! refuses the credentials; with `503` one that is failing. In
//! [`StubResponse::NoEtag`] it keeps objects and honours conditional PUTs,
//! but never sends an ETag.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// How the stub answers.
#[derive(Clone, Copy, Debug)]
pub enum StubResponse {
    /// `200 OK` with an ETag: conditions are ignored.
    IgnoreConditions,
    /// `403 AccessDenied`.
    AccessDenied,
    /// `503 SlowDown`.
    Unavailable,
    /// A store that keeps objects and honours `If-None-Match: *` (412 when
    /// the object exists) and `If-Match` (always 412: it has no ETag to
    /// match), but sends no `ETag` header on PUT or GET.
    NoEtag,
}

/// One parsed request.
struct Request {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

type Objects = Arc<Mutex<HashMap<String, Vec<u8>>>>;

impl StubResponse {
    fn render(self, request: &Request, objects: &Objects) -> String {
        let (status, etag, body) = match self {
            StubResponse::IgnoreConditions => ("200 OK", true, String::new()),
            StubResponse::AccessDenied => (
                "403 Forbidden",
                true,
                error_body("AccessDenied", "Access Denied"),
            ),
            StubResponse::Unavailable => (
                "503 Service Unavailable",
                true,
                error_body("SlowDown", "Please reduce your request rate."),
            ),
            StubResponse::NoEtag => {
                let (status, body) = keep_objects(request, objects);
                (status, false, body)
            }
        };
        let etag = if etag { "ETag: \"stub-etag\"\r\n" } else { "" };
        format!(
            "HTTP/1.1 {status}\r\n{etag}Content-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }
}

/// The [`StubResponse::NoEtag`] store: objects by path.
fn keep_objects(request: &Request, objects: &Objects) -> (&'static str, String) {
    let mut objects = objects.lock().unwrap();
    let path = request
        .path
        .split('?')
        .next()
        .unwrap_or_default()
        .to_string();
    let precondition_failed = || {
        (
            "412 Precondition Failed",
            error_body(
                "PreconditionFailed",
                "At least one of the preconditions you specified did not hold",
            ),
        )
    };
    match request.method.as_str() {
        "PUT" => {
            if request.headers.contains_key("if-match") {
                return precondition_failed();
            }
            if request
                .headers
                .get("if-none-match")
                .is_some_and(|v| v == "*")
                && objects.contains_key(&path)
            {
                return precondition_failed();
            }
            objects.insert(path, request.body.clone());
            ("200 OK", String::new())
        }
        "GET" | "HEAD" => match objects.get(&path) {
            Some(body) => ("200 OK", String::from_utf8_lossy(body).into_owned()),
            None => (
                "404 Not Found",
                error_body("NoSuchKey", "The specified key does not exist."),
            ),
        },
        _ => ("200 OK", String::new()),
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
    let objects: Objects = Arc::default();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let objects = Arc::clone(&objects);
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                loop {
                    let mut request_line = String::new();
                    let mut headers = HashMap::new();
                    loop {
                        let mut line = String::new();
                        match reader.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if line == "\r\n" && !request_line.is_empty() {
                            break;
                        }
                        if request_line.is_empty() {
                            request_line = line;
                        } else if let Some((name, value)) = line.split_once(':') {
                            headers
                                .insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
                        }
                    }
                    let content_length = headers
                        .get("content-length")
                        .and_then(|value| value.parse().ok())
                        .unwrap_or(0usize);
                    let mut body = vec![0; content_length];
                    if reader.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let mut parts = request_line.split_whitespace();
                    let request = Request {
                        method: parts.next().unwrap_or_default().to_string(),
                        path: parts.next().unwrap_or_default().to_string(),
                        headers,
                        body,
                    };
                    let reply = response.render(&request, &objects);
                    if reader.get_mut().write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{address}")
}
