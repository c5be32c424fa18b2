//! Settings every binary takes, from flags with environment fallbacks.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use sqlx::PgPool;
use tokio::net::TcpListener;

use tonic::transport::{Identity, ServerTlsConfig};

use super::{
    auth::AuthArgs,
    db,
    layers::{self, Limits, rate_limit::RateLimit},
    metrics,
    server::ServerSettings,
    telemetry::{self, LogFormat},
};

/// The threads a service runs on.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct RuntimeArgs {
    /// Threads that run the service's tasks. 1, the default, runs them all on one thread (tokio's
    /// current-thread scheduler): on the benchmark machine that sold the hot deal faster and
    /// streamed WatchDeal at half the CPU per message (BENCHMARKS.md).
    /// Past one core, run more replicas, or give more threads here (a work-stealing scheduler).
    #[arg(long, env = "WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: u16,
}

impl RuntimeArgs {
    /// Runs `main` to its end on the runtime these settings describe.
    pub fn block_on(self, binary: &str, main: impl Future<Output = ExitCode>) -> ExitCode {
        let mut builder = match self.worker_threads {
            1 => tokio::runtime::Builder::new_current_thread(),
            threads => {
                let mut builder = tokio::runtime::Builder::new_multi_thread();
                builder.worker_threads(threads.into());
                builder
            }
        };
        match builder.enable_all().build() {
            Ok(runtime) => runtime.block_on(main),
            Err(err) => {
                eprintln!("{binary}: cannot start the runtime: {err}");
                ExitCode::FAILURE
            }
        }
    }
}

/// Database settings.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// Postgres connection URL. Never logged.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// The most connections this process opens (deal-service gives half to the sale's pool).
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,

    /// Apply pending migrations at start (each logged by name). `false` for a deploy that runs
    /// `topkart migrate` as a step of its own: the service then refuses to start while a
    /// migration is pending.
    #[arg(long, env = "MIGRATE_ON_START", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate_on_start: bool,
}

impl DatabaseArgs {
    /// The pool, once the schema is this binary's: migrated here, or checked when migrating is a
    /// deploy step.
    pub async fn connect(&self) -> Result<PgPool, db::StartupError> {
        if self.migrate_on_start {
            db::connect_and_migrate(&self.database_url, self.database_max_connections).await
        } else {
            db::connect_migrated(&self.database_url, self.database_max_connections).await
        }
    }
}

/// TLS for a server, from PEM files.
#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// PEM certificate chain to serve TLS with (with `--tls-key-file`); plain text when unset.
    #[arg(long, env = "TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of `--tls-cert-file`.
    #[arg(long, env = "TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
}

impl TlsArgs {
    /// The TLS configuration, when files were given.
    pub fn server_config(&self) -> Result<Option<ServerTlsConfig>, MainError> {
        let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_key_file) else {
            return Ok(None);
        };
        let identity = Identity::from_pem(read(cert)?, read(key)?);
        Ok(Some(ServerTlsConfig::new().identity(identity)))
    }
}

/// Reads a file, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>, MainError> {
    std::fs::read(path).map_err(|err| format!("cannot read {}: {err}", path.display()).into())
}

/// Logs and metrics, the settings of every binary.
#[derive(Debug, Clone, clap::Args)]
pub struct ObservabilityArgs {
    /// How log lines are written.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Address to serve Prometheus metrics on (`GET /metrics`); none when unset.
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// The share of successful calls given an access-log line at INFO, from 0 (none) to 1 (all).
    /// Every failed call gets one (within `--access-log-max-per-second`).
    #[arg(long, env = "ACCESS_LOG_OK_SAMPLE", default_value_t = 0.0, value_parser = parse_share)]
    pub access_log_ok_sample: f64,

    /// The most access-log lines written per second: a flood of refused calls is counted in the
    /// metrics, and the lines it would have written beyond this are counted in the next line.
    #[arg(long, env = "ACCESS_LOG_MAX_PER_SECOND", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub access_log_max_per_second: u32,
}

impl ObservabilityArgs {
    /// Installs the log subscriber for the binary `service`, and the access log's settings; keep
    /// what it returns until `main` ends.
    pub fn init_logs(&self, service: &'static str) -> telemetry::Telemetry {
        layers::observe::access_log::configure(self.access_log_ok_sample, self.access_log_max_per_second);
        telemetry::init(self.log_format, service)
    }
}

/// A share, from 0 to 1.
fn parse_share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(share) if (0.0..=1.0).contains(&share) => Ok(share),
        _ => Err(format!("{text:?} is not a number from 0 to 1")),
    }
}

/// How much an API server takes on.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// API calls in flight at once, over all connections; beyond it calls are answered
    /// RESOURCE_EXHAUSTED (OVERLOADED) at once. Health and reflection are never shed.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = layers::DEFAULT_MAX_IN_FLIGHT as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,

    /// The least `RetryInfo` delay a shed call is given, in milliseconds; it grows with the calls
    /// shed in the last second per `--max-in-flight`, up to 5 s.
    #[arg(long, env = "SHED_RETRY_AFTER_MS", default_value_t = layers::DEFAULT_RETRY_AFTER.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..=5000))]
    pub shed_retry_after_ms: u64,

    /// HTTP/2 streams one connection may have open at once; a client beyond it waits for one.
    #[arg(long, env = "MAX_STREAMS_PER_CONNECTION", default_value_t = layers::DEFAULT_MAX_STREAMS_PER_CONNECTION,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_connection: u32,

    /// WatchDeal streams open at once (deal-service); beyond it RESOURCE_EXHAUSTED
    /// (TOO_MANY_WATCHERS). Streams are not counted in `--max-in-flight`.
    #[arg(long, env = "MAX_WATCHERS", default_value_t = layers::DEFAULT_MAX_WATCHERS as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_watchers: u32,

    /// The least time between two reads of watched deals that changed, in milliseconds
    /// (deal-service): every read sends each of the deals' watchers a message, so a longer interval
    /// spends less CPU on the fan-out and delivers changes later.
    #[arg(long, env = "WATCH_REFRESH_MS", default_value_t = layers::DEFAULT_WATCH_REFRESH_INTERVAL.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub watch_refresh_ms: u64,

    /// API calls one caller (token subject, or address without a valid token) may have waiting
    /// for a permit once `--max-in-flight` are running; beyond, RESOURCE_EXHAUSTED (OVERLOADED),
    /// answered after its RetryInfo delay.
    #[arg(long, env = "MAX_WAITING_PER_CALLER", default_value_t = layers::DEFAULT_MAX_WAITING_PER_CALLER as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_waiting_per_caller: u32,

    /// API calls waiting for a permit, all callers together.
    #[arg(long, env = "MAX_WAITING", default_value_t = layers::DEFAULT_MAX_WAITING as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_waiting: u32,

    /// Calls a second each caller (token subject, or address without a valid token) may make;
    /// beyond it RESOURCE_EXHAUSTED (RATE_LIMITED). Unlimited when unset.
    #[arg(long, env = "RATE_LIMIT_PER_SECOND", requires = "rate_limit_burst")]
    pub rate_limit_per_second: Option<f64>,

    /// Calls a caller may make at once above its rate (with `--rate-limit-per-second`).
    #[arg(long, env = "RATE_LIMIT_BURST", requires = "rate_limit_per_second",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_burst: Option<u32>,
}

impl LimitArgs {
    /// The limits these flags describe.
    pub fn limits(&self) -> Result<Limits, MainError> {
        let rate_limit = match (self.rate_limit_per_second, self.rate_limit_burst) {
            (Some(per_second), Some(burst)) if per_second.is_finite() && per_second > 0.0 => {
                Some(RateLimit { per_second, burst })
            }
            (Some(_), _) => return Err("--rate-limit-per-second must be a positive number".into()),
            _ => None,
        };
        Ok(Limits {
            max_in_flight: self.max_in_flight as usize,
            retry_after: std::time::Duration::from_millis(self.shed_retry_after_ms),
            rate_limit,
            max_waiting_per_caller: self.max_waiting_per_caller as usize,
            max_waiting: self.max_waiting as usize,
            max_wait: layers::DEFAULT_MAX_WAIT,
            max_wait_overloaded: layers::DEFAULT_MAX_WAIT_OVERLOADED,
            sold_out_for: layers::admission::stock::SOLD_OUT_FOR,
            max_streams_per_connection: self.max_streams_per_connection,
            max_watchers: self.max_watchers as usize,
            watch_refresh_interval: std::time::Duration::from_millis(self.watch_refresh_ms),
        })
    }
}

/// Which browser pages may call an API server.
#[derive(Debug, Clone, clap::Args)]
pub struct WebArgs {
    /// Origins whose pages may call this server over gRPC-Web, comma-separated
    /// (`https://deals.topkart.com,http://localhost:5173`): CORS preflights are answered for them.
    /// Unset, no CORS header is sent, so browsers let only same-origin pages call.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", value_delimiter = ',', value_parser = layers::web::parse_origin)]
    pub cors_allowed_origins: Vec<http::HeaderValue>,
}

/// Authentication, limits, TLS and browser access, the settings of every API server.
pub fn server_settings(
    auth: &AuthArgs,
    limits: &LimitArgs,
    tls: &TlsArgs,
    web: &WebArgs,
) -> Result<ServerSettings, MainError> {
    Ok(ServerSettings {
        auth: auth.authenticator()?,
        limits: limits.limits()?,
        tls: tls.server_config()?,
        cors_allowed_origins: web.cors_allowed_origins.clone(),
        stock: None,
    })
}

/// What a binary's start-up or serving failed with.
pub type MainError = Box<dyn std::error::Error>;

/// What a binary's `/metrics` shows: its name, and the gauges it reads from the database at each
/// scrape, if any.
#[derive(Debug, Clone, Copy)]
pub struct Exposed {
    pub service: &'static str,
    pub database_gauges: Option<metrics::DatabaseGauges>,
}

impl Exposed {
    /// What every binary shows.
    pub fn service(service: &'static str) -> Self {
        Self { service, database_gauges: None }
    }
}

/// Start-up common to every binary: connect (and migrate, unless that is a deploy step), start
/// serving metrics when asked, then bind `addr`.
pub async fn start(
    database: &DatabaseArgs,
    observability: &ObservabilityArgs,
    addr: SocketAddr,
    exposed: Exposed,
) -> Result<(PgPool, TcpListener), MainError> {
    let pool = database.connect().await?;
    if let Some(metrics_addr) = observability.metrics_addr {
        let handle = metrics::install(exposed.service)?;
        let metrics_listener = metrics::bind(metrics_addr).await?;
        tracing::info!(addr = %metrics_listener.local_addr()?, "serving metrics on /metrics");
        let mut exposition = metrics::Exposition::new(pool.clone());
        if let Some(read) = exposed.database_gauges {
            exposition = exposition.reading(read);
        }
        tokio::spawn(metrics::serve(metrics_listener, handle, exposition));
    }
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|err| std::io::Error::new(err.kind(), format!("cannot listen on {addr}: {err}")))?;
    Ok((pool, listener))
}

/// The process's exit code, logging why `binary` stopped if it failed.
pub fn exit_code(binary: &str, result: Result<(), MainError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "{binary} stopped");
            ExitCode::FAILURE
        }
    }
}
