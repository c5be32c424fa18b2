//! expiry-worker: sweeps expired deals and performs the daily 00:00 UTC reset.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use clap::Parser;
use topkart::shared::{cli, server};

/// Expires deals every few seconds, performs the daily reset, and serves gRPC health.
#[derive(Debug, Parser)]
#[command(name = "expiry-worker", version)]
struct Args {
    #[command(flatten)]
    database: cli::DatabaseArgs,

    #[command(flatten)]
    observability: cli::ObservabilityArgs,

    #[command(flatten)]
    runtime: cli::RuntimeArgs,

    /// Address to serve gRPC health on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:50053")]
    listen_addr: SocketAddr,

    /// Seconds between sweeps.
    #[arg(long, env = "SWEEP_INTERVAL_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    sweep_interval_secs: u64,

    /// Seconds a step of the sweep may fail at every tick before the health service
    /// `topkart.worker.v1.ExpiryWorker` says NOT_SERVING (the server's "" follows the database).
    #[arg(long, env = "UNHEALTHY_AFTER_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    unhealthy_after_secs: u64,

    #[command(flatten)]
    tls: cli::TlsArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.runtime.block_on("expiry-worker", async {
        let telemetry = args.observability.init_logs("expiry-worker");
        let code = cli::exit_code("expiry-worker", run(args).await);
        telemetry.shut_down().await;
        code
    })
}

async fn run(args: Args) -> Result<(), cli::MainError> {
    let (pool, listener) = cli::start(
        &args.database,
        &args.observability,
        args.listen_addr,
        cli::Exposed { service: "expiry-worker", database_gauges: Some(topkart::worker::scraped_gauges) },
    )
    .await?;
    let schedule = topkart::worker::Schedule {
        sweep_interval: Duration::from_secs(args.sweep_interval_secs),
        unhealthy_after: Duration::from_secs(args.unhealthy_after_secs),
    };
    tracing::info!(addr = %listener.local_addr()?, interval_secs = args.sweep_interval_secs, "expiry-worker started");
    topkart::worker::run(listener, pool, schedule, args.tls.server_config()?, server::shutdown_signal()).await?;
    Ok(())
}
