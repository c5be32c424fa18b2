//! order-service: the order API on gRPC.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use clap::Parser;
use topkart::{
    order::deals::DealsClient,
    shared::{cli, server, telemetry},
};

/// Serves the order API, gRPC health and server reflection.
#[derive(Debug, Parser)]
#[command(name = "order-service", version)]
struct Args {
    #[command(flatten)]
    database: cli::DatabaseArgs,

    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:50052")]
    listen_addr: SocketAddr,

    /// URL of deal-service.
    #[arg(long, env = "DEAL_SERVICE_URL", default_value = "http://127.0.0.1:50051")]
    deal_service_url: String,

    /// Deadline of each call to deal-service, in milliseconds.
    #[arg(long, env = "DEAL_SERVICE_DEADLINE_MS", default_value_t = 2000)]
    deal_service_deadline_ms: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init();
    let args = Args::parse();
    cli::exit_code("order-service", run(args).await)
}

async fn run(args: Args) -> Result<(), cli::MainError> {
    let deals =
        DealsClient::connect_lazy(&args.deal_service_url, Duration::from_millis(args.deal_service_deadline_ms))?;
    let (pool, listener) = cli::start(&args.database, args.listen_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, deal_service = %args.deal_service_url, "order-service listening");
    topkart::order::run(listener, pool, deals, server::shutdown_signal()).await?;
    Ok(())
}
