//! `redstage-floor`: the parts of an order alone, served over HTTP (see
//! `redstage_bench::floor`). `scripts/wrk.sh` runs it next to `serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// The same allocator as `redstage serve`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Serves POST /v1/transactions for orders (an inventory step and a
/// payments step) with only what any coordinator pays: HTTP, JSON, a fresh
/// instance per step, and a hand-written two-phase commit's three scripts.
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// The Redis URL of the inventory's store.
    #[arg(long)]
    orders: String,
    /// The Redis URL of the payments' store.
    #[arg(long)]
    ledger: String,
    /// Folder with inventory.wasm and payments.wasm.
    #[arg(long, default_value = "target/wasm32-unknown-unknown/release")]
    components: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match redstage_bench::floor::serve(args.listen, &args.orders, &args.ledger, &args.components)
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
