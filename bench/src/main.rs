use std::process::ExitCode;

use clap::Parser;

/// Many small allocations from many threads (requests, scripts, records,
/// wasmtime's per-instance state): a thread-caching allocator spends far
/// less on them than the system's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use redstage_bench::options::Options;

#[tokio::main]
async fn main() -> ExitCode {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    match redstage_bench::run(Options::parse(), command).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
