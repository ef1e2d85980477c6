//! Tiny HTTP servers that play misbehaving S3 stores, on a free loopback
//! port, for as long as the test's runtime runs:
//!
//! - [`Misbehaviour::IgnoreConditions`] answers `200` with an ETag to
//!   everything, whatever the condition headers say.
//! - [`Misbehaviour::RacyConditions`] keeps objects and checks
//!   `If-None-Match` / `If-Match`, but checks and writes in two steps with
//!   a pause between, so concurrent conditional writers all win.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// How the stub misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misbehaviour {
    /// Every request succeeds.
    IgnoreConditions,
    /// Conditions are checked, but not atomically with the write.
    RacyConditions,
}

#[derive(Default)]
struct Objects {
    by_key: HashMap<String, (Vec<u8>, String)>,
    next_etag: u64,
}

struct Request {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.split('?').next()?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).await.ok()? == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let length = headers
        .get("content-length")
        .and_then(|value| value.parse().ok())
        .unwrap_or(0usize);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.ok()?;
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

fn response(status: &str, etag: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
    if let Some(etag) = etag {
        head.push_str(&format!("ETag: {etag}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

const PRECONDITION_FAILED: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>PreconditionFailed</Code><Message>At least one of the pre-conditions you specified did not hold</Message></Error>";

async fn answer(mode: Misbehaviour, objects: &Mutex<Objects>, request: Request) -> Vec<u8> {
    if mode == Misbehaviour::IgnoreConditions {
        return response("200 OK", Some("\"stub-etag\""), b"");
    }
    match request.method.as_str() {
        "PUT" => {
            let current = objects
                .lock()
                .unwrap()
                .by_key
                .get(&request.path)
                .map(|(_, etag)| etag.clone());
            let refused = match (
                request.headers.get("if-none-match"),
                request.headers.get("if-match"),
            ) {
                (Some(_), _) => current.is_some(),
                (None, Some(expected)) => current.as_deref() != Some(expected.as_str()),
                (None, None) => false,
            };
            if refused {
                return response(
                    "412 Precondition Failed",
                    None,
                    PRECONDITION_FAILED.as_bytes(),
                );
            }
            // The flaw: another writer can pass the same check here.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut objects = objects.lock().unwrap();
            objects.next_etag += 1;
            let etag = format!("\"etag-{}\"", objects.next_etag);
            objects
                .by_key
                .insert(request.path, (request.body, etag.clone()));
            response("200 OK", Some(&etag), b"")
        }
        "GET" => match objects.lock().unwrap().by_key.get(&request.path) {
            Some((body, etag)) => response("200 OK", Some(etag), body),
            None => response("404 Not Found", None, b""),
        },
        "DELETE" => {
            objects.lock().unwrap().by_key.remove(&request.path);
            response("204 No Content", None, b"")
        }
        _ => response("200 OK", None, b""),
    }
}

/// Starts a stub; returns its endpoint URL.
pub async fn start(mode: Misbehaviour) -> String {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the stub");
    let address = listener.local_addr().expect("the stub's address");
    let objects = Arc::new(Mutex::new(Objects::default()));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let objects = objects.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut reader = BufReader::new(read);
                while let Some(request) = read_request(&mut reader).await {
                    let bytes = answer(mode, &objects, request).await;
                    if write.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    format!("http://{address}")
}
