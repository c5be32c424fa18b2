//! deal-service: the deal API on gRPC.

use std::{net::SocketAddr, process::ExitCode};

use clap::Parser;
use topkart::shared::{cli, db, server, telemetry};

/// Serves the deal API, gRPC health and server reflection.
#[derive(Debug, Parser)]
#[command(name = "deal-service", version)]
struct Args {
    #[command(flatten)]
    database: cli::DatabaseArgs,

    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    listen_addr: SocketAddr,
}

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "deal-service stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let pool = db::connect_and_migrate(&args.database.database_url, args.database.database_max_connections).await?;
    let listener = cli::bind(args.listen_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "deal-service listening");
    topkart::deal::run(listener, pool, server::shutdown_signal()).await?;
    Ok(())
}
