//! redstage through its HTTP API: the API served in this process on a
//! loopback port, and a keep-alive HTTP/1.1 client per bench client (what a
//! service with a connection pool does).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use redstage::txn::Coordinator;
use redstage::txn::types::TxnResponse;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Done;
use crate::workload::Txn;

/// The largest response head read before giving up on it.
const HEAD_BYTES_MAX: usize = 16 << 10;

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

/// One keep-alive connection to the API.
#[derive(Debug)]
pub struct Client {
    addr: SocketAddr,
    stream: TcpStream,
    /// Bytes read past the previous response (none, as requests are sent
    /// one at a time, but kept rather than dropped).
    buf: Vec<u8>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Client> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to the API at {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            addr,
            stream,
            buf: Vec::new(),
        })
    }

    pub async fn run(&mut self, txn: &Txn) -> anyhow::Result<Done> {
        let body = serde_json::to_vec(&super::library::request(txn, false))?;
        let (status, body) = self.post("/v1/transactions", &body).await?;
        if status != 200 {
            bail!(
                "POST /v1/transactions answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let response: TxnResponse =
            serde_json::from_slice(&body).context("reading a transaction response")?;
        Ok(super::library::done(&response))
    }

    async fn post(&mut self, path: &str, body: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        self.stream.write_all(&request).await?;
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > HEAD_BYTES_MAX {
                bail!("a response head over {HEAD_BYTES_MAX} bytes");
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("a response without a status")?;
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|n| n.trim().parse().ok())
            .context("a response without content-length")?;
        while self.buf.len() < head_end + length {
            self.fill().await?;
        }
        let rest = self.buf.split_off(head_end + length);
        let body = self.buf.split_off(head_end);
        self.buf = rest;
        Ok((status, body))
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the API closed the connection");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}
