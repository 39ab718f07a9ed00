//! `capsa`: check the host, show the configuration, build guest assets and
//! run containers in VMs.

mod args;
mod cmd;
mod output;
mod terminal;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Exit status of capsa's own failures (not the workload's).
const EXIT_RUNTIME_ERROR: u8 = 125;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("capsa: error: start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME_ERROR);
        }
    };
    {
        // The span exporter's gRPC channel lives in the runtime.
        let _in_runtime = runtime.enter();
        init_logging(&cli);
    }
    let result = runtime.block_on(cmd::dispatch(cli));
    runtime.block_on(async {
        let _ = tokio::task::spawn_blocking(capsa_runtime::otel::flush).await;
    });
    output::logs_off();
    // A blocking read of stdin must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) if output::is_stdout_closed(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("capsa: error: {e:#}");
            ExitCode::from(EXIT_RUNTIME_ERROR)
        }
    }
}

fn init_logging(cli: &args::Cli) {
    // The owner of a detached sandbox logs to a file: it says what happened.
    let detached = std::env::var_os(cmd::DETACHED_DIR_ENV).is_some();
    let default = match (cli.debug, detached) {
        (true, _) => "debug",
        (false, true) => "info",
        (false, false) => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAPSA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // The filter is the log's only: the timeline sees its steps whatever
    // the log level.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(output::log_writer)
        .with_target(false)
        .with_filter(filter);
    let timeline = match &cli.command {
        args::Command::Run(run) if run.timeline.is_some() => Some(cmd::timeline().layer()),
        _ => None,
    };
    // `capsa run` with `[runtime] enable_tracing`: its steps as spans (a
    // configuration that does not load fails the run itself, later).
    let otel = match &cli.command {
        args::Command::Run(_) => capsa_runtime::load_config(cli.config.as_deref())
            .ok()
            .and_then(|(config, _)| capsa_runtime::otel::layer(&config)),
        _ => None,
    };
    tracing_subscriber::registry()
        .with(fmt)
        .with(timeline)
        .with(capsa_runtime::metrics::StepLayer::layer()) // metrics hook
        .with(otel)
        .init();
}
