//! loadgen: drives the running services with one scenario and reports throughput, latency and
//! statuses; exits 1 when a check after the run fails (errors, oversold units, broken invariants).

mod clients;
mod discard;
mod failover;
mod histogram;
mod options;
mod polite;
mod report;
mod scenario;
mod setup;
mod timeline;
mod watch;
mod watched_load;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use topkart::shared::{auth::Signer, cli, telemetry};

use options::{Options, Scenario};

/// How long the polite buyer gives one order, retries included.
const POLITE_PATIENCE: Duration = Duration::from_secs(30);

/// Load generator for the Topkart services.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
struct Args {
    /// What to run.
    #[arg(value_enum)]
    scenario: Scenario,

    /// deal-service's URL.
    #[arg(long, env = "DEAL_SERVICE_URL", default_value = "http://127.0.0.1:50051")]
    deal_service: String,

    /// order-service's URL.
    #[arg(long, env = "ORDER_SERVICE_URL", default_value = "http://127.0.0.1:50052")]
    order_service: String,

    /// Concurrent clients, each with one call in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,

    /// HTTP/2 connections per service.
    #[arg(long, default_value_t = 4)]
    connections: usize,

    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,

    /// Seconds measured (`failover`: the longest it runs before SIGTERM stops it).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,

    /// Units of each deal created (default: 1,000,000, the most a deal may have; 20,000 for hot-deal-sell-out).
    #[arg(long)]
    units: Option<i32>,

    /// The deadline of every call, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    deadline_ms: u64,

    /// The services' HS256 secret, to mint the admin's and the buyers' tokens; unset when the
    /// services run with --insecure-no-auth.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,

    /// The issuer the services require (their JWT_ISSUER), put in every token minted.
    #[arg(long, env = "JWT_ISSUER")]
    jwt_issuer: Option<String>,

    /// The audience the services require (their JWT_AUDIENCE), put in every token minted.
    #[arg(long, env = "JWT_AUDIENCE")]
    jwt_audience: Option<String>,

    /// The services' database, for the invariant checker after the run. Never logged.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,

    /// An existing deal to sell (`hot-deal`, `watch`), `deals/{id}`, instead of creating one: so
    /// that another client (h2load) can watch it.
    #[arg(long)]
    deal: Option<String>,

    /// WatchDeal streams of the hot deal (`watch`).
    #[arg(long, default_value_t = 10_000)]
    watchers: usize,

    /// HTTP/2 connections the watchers share (`watch`), apart from the orders'.
    #[arg(long, default_value_t = 100)]
    watch_connections: usize,

    /// The deal-service the watchers watch through (`watch`), when it is not the one the orders
    /// reserve from (`--deal-service`).
    #[arg(long)]
    watch_deal_service: Option<String>,

    /// The watched deal-service's process id, to read its resident memory from /proc (`watch`).
    #[arg(long, env = "DEAL_SERVICE_PID")]
    deal_service_pid: Option<u32>,

    /// `NAME=URL` of a server whose `grpc.health.v1` status to follow (`failover`; repeatable).
    #[arg(long)]
    health: Vec<String>,

    /// The file of `UNIX_MS NAME` lines the test writes as it causes events (`failover`), read at
    /// the end to report each event's error window.
    #[arg(long)]
    events: Option<PathBuf>,

    /// Orders the polite buyer places (`polite`).
    #[arg(long, default_value_t = 200)]
    orders: usize,

    /// Buyers resend at once when refused, ignoring the `RetryInfo` delay (`surge`), as a naive
    /// client or a bot does.
    #[arg(long)]
    ignore_retry_info: bool,

    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let _telemetry = telemetry::init(telemetry::LogFormat::Text, "loadgen");
    let args = Args::parse();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            tracing::error!(error = %err, "loadgen failed");
            ExitCode::from(2)
        }
    }
}

/// Whether every check passed.
async fn run(args: Args) -> Result<bool, cli::MainError> {
    let scenario = args.scenario;
    let database = match &args.database_url {
        Some(url) => Some(sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(url).await?),
        None => None,
    };
    let default_units = if scenario == Scenario::HotDealSellOut { 20_000 } else { 1_000_000 };
    let options = Options {
        deal_service: args.deal_service,
        order_service: args.order_service,
        concurrency: args.concurrency,
        connections: args.connections,
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.duration),
        units: args.units.unwrap_or(default_units),
        deadline: Duration::from_millis(args.deadline_ms),
        signer: args.jwt_secret.map(|secret| {
            let signer = Signer::hs256(secret.as_bytes());
            let signer = match args.jwt_issuer {
                Some(issuer) => signer.with_issuer(issuer),
                None => signer,
            };
            match args.jwt_audience {
                Some(audience) => signer.with_audience(audience),
                None => signer,
            }
        }),
        database,
        deal: args.deal,
        watchers: args.watchers,
        watch_connections: args.watch_connections,
        watch_deal_service: args.watch_deal_service,
        deal_service_pid: args.deal_service_pid,
        ignore_retry_info: args.ignore_retry_info,
    };
    if scenario == Scenario::Polite {
        let report = polite::run(&options, args.orders, POLITE_PATIENCE).await.map_err(|err| err.to_string())?;
        print!("{}", report.to_text());
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
        }
        return Ok(true);
    }
    if scenario == Scenario::Failover {
        let failover = failover::FailoverOptions { health: args.health, events: args.events };
        let report = failover::run(options, failover).await.map_err(|err| err.to_string())?;
        print!("{}", report.to_text());
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_vec(&report)?)?;
        }
        return Ok(report.passed());
    }
    let report = scenario::run(scenario, options).await.map_err(|err| err.to_string())?;
    print!("{}", report.to_text());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(report.passed())
}
