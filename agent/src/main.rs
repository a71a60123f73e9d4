use std::process::ExitCode;

use clap::Parser;
use kwasm_agent::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    kwasm_agent::telemetry::init(cli.log_format);
    // A node agent waits far more than it computes: one thread drives the I/O, and the CPU-heavy
    // unpacking runs on a blocking thread beside it. Fewer threads keep the idle footprint small.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(4)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::anyhow!(e).context("starting the async runtime")),
    };
    match rt.block_on(kwasm_agent::cli::commands::dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// The one-line reason on stderr that the CLI contract promises.
fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!(
        "kwasm-agent: error: {}",
        format!("{e:#}").replace('\n', " ")
    );
    ExitCode::FAILURE
}
