//! The commands that talk to a running server (`--server`, `--token`):
//! each one request or a few (a listing follows its pages), through the
//! API client ([`super::client`]), printing the answer's JSON on stdout.
//! An error answer is printed too, with a line on stderr naming its
//! status, and exits 1; "not found" exits 2.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use super::client::{Answer, Client, REQUEST_TIMEOUT, query, segment};

/// Where the commands send their requests.
#[derive(Debug)]
pub(super) struct Remote {
    pub server: String,
    pub token: Option<String>,
}

/// Exit status 2: what was asked for does not exist.
fn unknown() -> ExitCode {
    ExitCode::from(2)
}

impl Remote {
    fn client(&self, timeout: Duration) -> anyhow::Result<Client> {
        Client::new(&self.server, self.token.as_deref(), timeout)
    }

    /// Prints `answer`; its exit status if it is an error (2 for a 404),
    /// else `None`.
    fn print(&self, answer: &Answer) -> anyhow::Result<Option<ExitCode>> {
        println!("{}", serde_json::to_string_pretty(&answer.json())?);
        if answer.is_success() {
            return Ok(None);
        }
        eprintln!("redstage: {} answered HTTP {}", self.server, answer.status);
        Ok(Some(match answer.status {
            404 => unknown(),
            _ => ExitCode::FAILURE,
        }))
    }

    pub async fn submit(
        &self,
        file: Option<PathBuf>,
        transaction: Option<&str>,
    ) -> anyhow::Result<ExitCode> {
        let text = match (file, transaction) {
            (Some(path), _) => std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?,
            (None, Some(json)) if json != "-" => json.to_owned(),
            (None, _) => {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("reading the transaction from stdin")?;
                text
            }
        };
        let transaction: Value = serde_json::from_str(&text).context(
            "the transaction is not JSON; expected {\"steps\":[{\"participant\":...,\"input\":...}]}",
        )?;
        let answer = self
            .client(REQUEST_TIMEOUT)?
            .call("POST", "/v1/transactions", Some(&transaction))
            .await?;
        if let Some(code) = self.print(&answer)? {
            return Ok(code);
        }
        Ok(match answer.json()["status"].as_str() {
            Some("committed") => ExitCode::SUCCESS,
            _ => ExitCode::from(2),
        })
    }

    pub async fn get(&self, id: &str) -> anyhow::Result<ExitCode> {
        let path = format!("/v1/transactions/{}", segment(id));
        let answer = self
            .client(REQUEST_TIMEOUT)?
            .call("GET", &path, None)
            .await?;
        Ok(self.print(&answer)?.unwrap_or(ExitCode::SUCCESS))
    }

    pub async fn resolve(&self, id: &str) -> anyhow::Result<ExitCode> {
        let path = format!("/v1/transactions/{}/resolve", segment(id));
        let answer = self
            .client(REQUEST_TIMEOUT)?
            .call("POST", &path, None)
            .await?;
        Ok(self.print(&answer)?.unwrap_or(ExitCode::SUCCESS))
    }

    pub async fn participants(&self, name: Option<&str>) -> anyhow::Result<ExitCode> {
        let path = match name {
            Some(name) => format!("/v1/participants/{}", segment(name)),
            None => "/v1/participants".to_owned(),
        };
        let answer = self
            .client(REQUEST_TIMEOUT)?
            .call("GET", &path, None)
            .await?;
        Ok(self.print(&answer)?.unwrap_or(ExitCode::SUCCESS))
    }

    /// `GET /v1/{what}` with `filter`, page after page, until `limit` rows
    /// or the end; prints the rows and the cursor to go on from.
    pub async fn list(
        &self,
        what: &str,
        filter: &[(&str, Option<String>)],
        limit: usize,
        mut cursor: Option<String>,
    ) -> anyhow::Result<ExitCode> {
        let client = self.client(REQUEST_TIMEOUT)?;
        let mut rows = Vec::new();
        loop {
            let page_limit = (limit - rows.len()).min(crate::txn::inspect::LIST_LIMIT_MAX);
            let mut pairs = filter.to_vec();
            pairs.push(("limit", Some(page_limit.to_string())));
            pairs.push(("cursor", cursor.take()));
            let path = format!("/v1/{what}{}", query(&pairs));
            let answer = client.call("GET", &path, None).await?;
            if !answer.is_success() {
                return Ok(self.print(&answer)?.unwrap_or(ExitCode::FAILURE));
            }
            let mut page = answer.json();
            if let Some(found) = page[what].as_array_mut() {
                rows.append(found);
            }
            cursor = page["next_cursor"].as_str().map(str::to_owned);
            if cursor.is_none() || rows.len() >= limit {
                break;
            }
        }
        let mut out = serde_json::json!({ what: rows });
        if let Some(cursor) = cursor {
            out["next_cursor"] = cursor.into();
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        Ok(ExitCode::SUCCESS)
    }

    /// `PUT /v1/participants/{name}?manifest` with the component as the
    /// body, bounded by `timeout_s` (the server's compile included).
    pub async fn deploy(
        &self,
        name: &str,
        manifest: &[(&str, Option<String>)],
        component: &Path,
        timeout_s: u64,
    ) -> anyhow::Result<ExitCode> {
        let bytes = std::fs::read(component)
            .with_context(|| format!("cannot read {}", component.display()))?;
        let path = format!("/v1/participants/{}{}", segment(name), query(manifest));
        let answer = self
            .client(Duration::from_secs(timeout_s))?
            .send("PUT", &path, &[("content-type", "application/wasm")], bytes)
            .await
            .with_context(|| format!("no answer from {}", self.server))?;
        self.deployed(&answer)
    }

    /// `POST /v1/participants/{name}/rollback`.
    pub async fn rollback(&self, name: &str, timeout_s: u64) -> anyhow::Result<ExitCode> {
        let path = format!("/v1/participants/{}/rollback", segment(name));
        let answer = self
            .client(Duration::from_secs(timeout_s))?
            .call("POST", &path, None)
            .await?;
        self.deployed(&answer)
    }

    fn deployed(&self, answer: &Answer) -> anyhow::Result<ExitCode> {
        println!("{}", serde_json::to_string_pretty(&answer.json())?);
        if answer.is_success() {
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!(
            "redstage: the server refused the deploy (HTTP {})",
            answer.status
        );
        Ok(ExitCode::FAILURE)
    }
}
