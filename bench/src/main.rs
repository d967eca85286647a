use std::process::ExitCode;

use clap::Parser;
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
