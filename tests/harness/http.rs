//! A minimal HTTP/1.1 client: enough to talk to the served API for real,
//! one request per connection.

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `method path` with `body` and returns the status and the body
/// parsed as JSON (or as a JSON string when it is not JSON).
pub async fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    try_request(addr, method, path, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// [`request`], for a server that may die before it answers: an error when
/// the connection fails or closes without a complete response.
pub async fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<(u16, Value)> {
    let (status, _, json) = try_request_with_head(addr, method, path, body).await?;
    Ok((status, json))
}

/// [`try_request`], with the response's head (status line and headers,
/// lower case) too.
pub async fn try_request_with_head(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<(u16, String, Value)> {
    exchange(addr, method, path, "", body).await
}

/// [`request`] with `Authorization: Bearer token`, when there is one; the
/// head too, as [`try_request_with_head`] gives it.
pub async fn request_as(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, String, Value) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("authorization", &**b)).collect();
    request_with(addr, &headers, method, path, body).await
}

/// [`request`] with `headers` (name, value) added; the head too.
pub async fn request_with(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, String, Value) {
    let lines: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    exchange(addr, method, path, &lines, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// The value of header `name` (lower case) in a head as [`request_with`]
/// returns it.
pub fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.split("\r\n")
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// One request with `headers` (whole lines, each ending in CRLF) added.
async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> std::io::Result<(u16, String, Value)> {
    let mut stream = TcpStream::connect(addr).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         {headers}content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let incomplete =
        || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no complete response");
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(incomplete)?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(incomplete)?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    let json = serde_json::from_str(&body).unwrap_or(Value::String(body));
    Ok((status, head.to_ascii_lowercase(), json))
}

pub async fn post(addr: SocketAddr, path: &str, body: &[u8]) -> (u16, Value) {
    request(addr, "POST", path, body).await
}

pub async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    request(addr, "GET", path, b"").await
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// Serves the API of `coordinator` on a free port, in this runtime.
pub async fn serve(coordinator: std::sync::Arc<redstage::txn::Coordinator>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        axum::serve(
            listener,
            redstage::api::router(coordinator, redstage::api::auth::Tokens::none()),
        )
        .await
        .expect("serve");
    });
    addr
}
