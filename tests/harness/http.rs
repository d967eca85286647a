//! Requests to the served API for real, one connection each (so that a
//! server going away is met by the request that needed it).

use std::net::SocketAddr;

use redstage::cli::client::Client;
use serde_json::Value;

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
    exchange(addr, method, path, &[], body).await
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
    exchange(addr, method, path, headers, body)
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

/// One request with `headers` (name, value) added, on a connection of its
/// own, through the API client the `redstage` commands use.
async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String, Value)> {
    let client = Client::fresh(&format!("http://{addr}"), None).map_err(std::io::Error::other)?;
    let mut with: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    with.extend_from_slice(headers);
    let answer = client
        .send(method, path, &with, body.to_vec())
        .await
        .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    let mut head = format!("HTTP/1.1 {}", answer.status);
    for (name, value) in &answer.headers {
        head.push_str(&format!("\r\n{name}: {value}"));
    }
    Ok((answer.status, head.to_ascii_lowercase(), answer.json()))
}

pub async fn post(addr: SocketAddr, path: &str, body: &[u8]) -> (u16, Value) {
    request(addr, "POST", path, body).await
}

pub async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    request(addr, "GET", path, b"").await
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
