//! The client side of `redstage deploy`: one request to a server, over
//! `http://` or `https://`.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

/// How long `redstage deploy` waits to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `PUT /v1/participants/{name}?query` with the component as the body;
/// prints the answer. The whole exchange, the server's compile included,
/// is bounded by `timeout`.
pub async fn deploy(
    server: &str,
    token: Option<&str>,
    name: &str,
    query: &[(&str, String)],
    component: &Path,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let bytes =
        std::fs::read(component).with_context(|| format!("cannot read {}", component.display()))?;
    let mut url = reqwest::Url::parse(server)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
        .with_context(|| format!("--server must be http(s)://HOST[:PORT], not {server}"))?;
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("--server {server} cannot take a path"))?
        .pop_if_empty()
        .extend(["v1", "participants", name]);
    url.query_pairs_mut().extend_pairs(query);
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(timeout)
        .build()?;
    let mut request = client
        .put(url)
        .header(reqwest::header::CONTENT_TYPE, "application/wasm")
        .body(bytes);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("no answer from {server}"))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .with_context(|| format!("reading the answer of {server}"))?;
    println!("{body}");
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "redstage: the server refused the deploy (HTTP {})",
            status.as_u16()
        );
        ExitCode::FAILURE
    })
}
