//! deal-service: the deal API on gRPC.

use std::{net::SocketAddr, process::ExitCode};

use clap::Parser;
use topkart::{
    deal,
    shared::{auth, cli, server},
};

/// Serves the deal API, gRPC health and server reflection.
#[derive(Debug, Parser)]
#[command(name = "deal-service", version)]
struct Args {
    #[command(flatten)]
    database: cli::DatabaseArgs,

    #[command(flatten)]
    observability: cli::ObservabilityArgs,

    #[command(flatten)]
    runtime: cli::RuntimeArgs,

    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    listen_addr: SocketAddr,

    #[command(flatten)]
    auth: auth::AuthArgs,

    #[command(flatten)]
    limits: cli::LimitArgs,

    #[command(flatten)]
    tls: cli::TlsArgs,

    #[command(flatten)]
    web: cli::WebArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.runtime.block_on("deal-service", async {
        let telemetry = args.observability.init_logs("deal-service");
        let code = cli::exit_code("deal-service", run(args).await);
        telemetry.shut_down().await;
        code
    })
}

async fn run(args: Args) -> Result<(), cli::MainError> {
    let settings = cli::server_settings(&args.auth, &args.limits, &args.tls, &args.web)?;
    // DATABASE_MAX_CONNECTIONS bounds the process: the sale's pool takes its share of it.
    let (requests, sale_connections) = deal::Database::split(args.database.database_max_connections)
        .ok_or(format!("DATABASE_MAX_CONNECTIONS must be at least {} for deal-service", deal::MIN_CONNECTIONS))?;
    let database = cli::DatabaseArgs { database_max_connections: requests, ..args.database.clone() };
    let (pool, listener) =
        cli::start(&database, &args.observability, args.listen_addr, cli::Exposed::service("deal-service")).await?;
    tracing::info!(addr = %listener.local_addr()?, tls = settings.tls.is_some(), "deal-service listening");
    deal::run(listener, deal::Database { pool, sale_connections }, settings, server::shutdown_signal()).await?;
    Ok(())
}
