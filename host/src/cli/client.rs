//! The client side of `redstage deploy`: one HTTP/1.1 request to a server.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `PUT /v1/participants/{name}?query` with the component as the body;
/// prints the answer.
pub async fn deploy(
    server: &str,
    token: Option<&str>,
    name: &str,
    query: &[(&str, String)],
    component: &Path,
) -> anyhow::Result<ExitCode> {
    let bytes =
        std::fs::read(component).with_context(|| format!("cannot read {}", component.display()))?;
    let query: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{k}={}", percent_encode(v)))
        .collect();
    let path = format!(
        "/v1/participants/{}?{}",
        percent_encode(name),
        query.join("&")
    );
    let (status, body) = request(server, token, "PUT", &path, &bytes).await?;
    println!("{body}");
    Ok(if (200..300).contains(&status) {
        ExitCode::SUCCESS
    } else {
        eprintln!("redstage: the server refused the deploy (HTTP {status})");
        ExitCode::FAILURE
    })
}

/// Sends one request to `server` (`http://host:port`) and returns the
/// status and the body.
async fn request(
    server: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    let Some(authority) = server.strip_prefix("http://") else {
        bail!("--server must be http://HOST:PORT, not {server}");
    };
    let authority = authority.trim_end_matches('/');
    let mut stream = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("cannot connect to {server}"))?;
    let authorization = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    // `expect: 100-continue`: a server that refuses the request (a missing
    // token, a component too large) answers before the body is sent, and
    // the answer is not lost to a connection reset by the unread body.
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/wasm\r\n\
         {authorization}content-length: {}\r\nexpect: 100-continue\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    let mut raw = Vec::new();
    let first = tokio::time::timeout(CONTINUE_WAIT, read_head(&mut stream, &mut raw)).await;
    let go_on = match first {
        // No interim answer: a server that ignores the expectation.
        Err(_) => true,
        Ok(read) => {
            read?;
            raw.starts_with(b"HTTP/1.1 100")
        }
    };
    if go_on {
        raw.clear();
        stream.write_all(body).await?;
    }
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{server} sent no complete HTTP response"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{server} sent no HTTP status line"))?;
    Ok((status, body.to_owned()))
}

/// How long a request waits for `100 Continue` before it sends its body
/// anyway.
const CONTINUE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads into `raw` until it holds a whole response head.
async fn read_head(stream: &mut tokio::net::TcpStream, raw: &mut Vec<u8>) -> anyhow::Result<()> {
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        if stream.read_buf(raw).await? == 0 {
            bail!("the connection closed before a response");
        }
    }
    Ok(())
}

/// Percent-encodes everything but the unreserved characters of RFC 3986.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_encoding_keeps_only_unreserved_characters() {
        assert_eq!(
            super::percent_encode(r#"inv:{"a":1} ä"#),
            "inv%3A%7B%22a%22%3A1%7D%20%C3%A4"
        );
    }
}
