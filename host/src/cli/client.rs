//! The one HTTP client of redstage's API: what the commands that talk to a
//! running server use (`redstage --server URL submit|get|list|locks|
//! resolve|participants|deploy`), and what the test suite sends its
//! requests with.
//!
//! It knows the API's shapes only as far as a command needs (the path of
//! each route, the bearer token); answers come back whole, status, headers
//! and body, so that a caller can look at whatever it needs to, errors
//! included.

use std::time::Duration;

use anyhow::Context;
use reqwest::Method;
use serde_json::Value;

/// How long a request waits to connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a command's request may take, all told, unless it says
/// otherwise (a deploy waits for the server's compile).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A server's API: its base URL and the token to send.
#[derive(Debug, Clone)]
pub struct Client {
    /// `http(s)://host[:port]`, without a trailing slash.
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// One answer, whole.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON, or as a JSON string when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.body).into_owned()))
    }

    /// The value of header `name` (lower case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

impl Client {
    /// A client of the server at `server` (`http(s)://HOST[:PORT]`), sending
    /// `token` as a bearer token if given, each request bounded by
    /// `timeout`.
    pub fn new(server: &str, token: Option<&str>, timeout: Duration) -> anyhow::Result<Client> {
        let url = reqwest::Url::parse(server)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .filter(|u| u.path() == "/" && u.query().is_none())
            .with_context(|| format!("--server must be http(s)://HOST[:PORT], not {server}"))?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(timeout)
            .build()?;
        Ok(Client {
            base: url.as_str().trim_end_matches('/').to_owned(),
            token: token.map(str::to_owned),
            http,
        })
    }

    /// A client on a connection of its own per request (no connection kept
    /// between requests), so that a server going away is met by the
    /// request that needed it: for tests that kill servers.
    pub fn fresh(server: &str, token: Option<&str>) -> anyhow::Result<Client> {
        let mut client = Client::new(server, token, REQUEST_TIMEOUT)?;
        client.http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()?;
        Ok(client)
    }

    /// The server's base URL.
    pub fn server(&self) -> &str {
        &self.base
    }

    /// Sends `method path` (the path with its query, as the server takes
    /// it) with `headers` and `body`, and the token if any.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> anyhow::Result<Answer> {
        let method = Method::from_bytes(method.as_bytes())
            .with_context(|| format!("{method:?} is not an HTTP method"))?;
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.body(body).send().await?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = response.bytes().await?.to_vec();
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// [`Client::send`] with a JSON body (or none), for the commands: an
    /// error names the server when it does not answer at all.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        let (headers, body): (&[(&str, &str)], Vec<u8>) = match body {
            Some(json) => (
                &[("content-type", "application/json")],
                serde_json::to_vec(json)?,
            ),
            None => (&[], Vec::new()),
        };
        self.send(method, path, headers, body)
            .await
            .with_context(|| format!("no answer from {}", self.base))
    }
}

/// `segment` escaped for a URL path (an id or a participant name, which
/// are plain already; anything else stays one segment).
pub fn segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A query string of `pairs` (those with a value), escaped, with its `?`.
pub fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", segment(v))))
        .collect();
    match parts.is_empty() {
        true => String::new(),
        false => format!("?{}", parts.join("&")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_base_urls_only() {
        for good in [
            "http://127.0.0.1:7878",
            "https://redstage.internal/",
            "http://h",
        ] {
            assert!(Client::new(good, None, REQUEST_TIMEOUT).is_ok(), "{good}");
        }
        for bad in [
            "127.0.0.1:7878",
            "ftp://h",
            "http://h/v1",
            "http://h/?x=1",
            "http://",
        ] {
            assert!(Client::new(bad, None, REQUEST_TIMEOUT).is_err(), "{bad}");
        }
    }

    #[test]
    fn queries_and_segments_are_escaped() {
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
        assert_eq!(
            query(&[
                ("state", Some("in_doubt".into())),
                ("limit", None),
                ("cursor", Some("a=b".into()))
            ]),
            "?state=in_doubt&cursor=a%3Db"
        );
        assert_eq!(query(&[("limit", None)]), "");
    }
}
