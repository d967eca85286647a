//! redstage through its HTTP API: the API served in this process on a
//! loopback port, and one keep-alive HTTP/1.1 connection per bench client
//! (hyper's client connection: what a service with a connection pool does,
//! with as little of the client's own work as a real client can have).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
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

/// A bench client's connection to the API.
#[derive(Debug)]
pub struct Client {
    sender: SendRequest<Full<Bytes>>,
    authority: String,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Client> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to the API at {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // Drives the connection; its errors reach the requests that meet them.
        tokio::spawn(connection);
        Ok(Client {
            sender,
            authority: addr.to_string(),
        })
    }

    pub async fn run(&mut self, txn: &Txn) -> anyhow::Result<Done> {
        let body = serde_json::to_vec(&super::library::request(txn, false))?;
        let request = hyper::Request::post("/v1/transactions")
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        self.sender.ready().await.context("the API connection")?;
        let response = self
            .sender
            .send_request(request)
            .await
            .context("POST /v1/transactions")?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if status != hyper::StatusCode::OK {
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
