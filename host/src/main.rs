use std::process::ExitCode;

use clap::Parser;

/// Many small allocations from many threads (requests, scripts, records,
/// wasmtime's per-instance state): a thread-caching allocator spends far
/// less on them than the system's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = redstage::cli::Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a terminal, never in a journal or a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format() {
        redstage::cli::LogFormat::Text => logs.init(),
        redstage::cli::LogFormat::Json => logs.json().with_current_span(true).init(),
    }
    match cli.run().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
