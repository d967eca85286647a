//! redstage through its HTTP API: the API served in this process on a
//! loopback port, and a keep-alive HTTP/1.1 client per bench client.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use redstage::txn::Coordinator;
use redstage::txn::types::TxnResponse;

use super::Done;
use crate::workload::Txn;

/// Serves the API of `coordinator` on a free loopback port, in this runtime.
pub async fn serve(coordinator: Arc<Coordinator>) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(
            listener,
            redstage::api::router(coordinator, redstage::api::auth::Tokens::none()),
        )
        .await
        {
            eprintln!("the bench's HTTP server stopped: {e}");
        }
    });
    Ok(addr)
}

/// A bench client's connection to the API: a client of its own, so that
/// each keeps one keep-alive connection (what a service with a connection
/// pool does).
#[derive(Debug)]
pub struct Client {
    client: reqwest::Client,
    url: reqwest::Url,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Client> {
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1)
            .build()?;
        let url = format!("http://{addr}/v1/transactions").parse()?;
        Ok(Client { client, url })
    }

    pub async fn run(&mut self, txn: &Txn) -> anyhow::Result<Done> {
        let body = serde_json::to_vec(&super::library::request(txn, false))?;
        let response = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .with_context(|| format!("POST {}", self.url))?;
        let status = response.status();
        let body = response.bytes().await?;
        if status != reqwest::StatusCode::OK {
            bail!(
                "POST /v1/transactions answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let response: TxnResponse =
            serde_json::from_slice(&body).context("reading a transaction response")?;
        Ok(super::library::done(&response))
    }
}
