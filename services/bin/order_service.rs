//! order-service: the order API on gRPC.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use tonic::transport::{Certificate, ClientTlsConfig};
use topkart::{
    order::placing::holds::{Credentials, DEFAULT_CONNECTIONS, DealsClient},
    shared::{auth, cli, server},
};

/// Serves the order API, gRPC health and server reflection.
#[derive(Debug, Parser)]
#[command(name = "order-service", version)]
struct Args {
    #[command(flatten)]
    database: cli::DatabaseArgs,

    #[command(flatten)]
    observability: cli::ObservabilityArgs,

    #[command(flatten)]
    runtime: cli::RuntimeArgs,

    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:50052")]
    listen_addr: SocketAddr,

    /// URL of deal-service.
    #[arg(long, env = "DEAL_SERVICE_URL", default_value = "http://127.0.0.1:50051")]
    deal_service_url: String,

    /// The longest a call to deal-service may take, in milliseconds (less when the caller's own
    /// deadline, less a margin, is shorter).
    #[arg(long, env = "DEAL_SERVICE_DEADLINE_MS", default_value_t = 2000)]
    deal_service_deadline_ms: u64,

    /// HTTP/2 connections to deal-service, used in turn.
    #[arg(long, env = "DEAL_SERVICE_CONNECTIONS", default_value_t = DEFAULT_CONNECTIONS as u16,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    deal_service_connections: u16,

    /// A service-role token to present to deal-service. Unset, order-service mints its own with
    /// `JWT_SECRET`. Never logged.
    #[arg(long, env = "DEAL_SERVICE_TOKEN", hide_env_values = true)]
    deal_service_token: Option<String>,

    /// PEM CA certificate to verify deal-service's TLS certificate with (use an https URL).
    #[arg(long, env = "DEAL_SERVICE_CA_FILE")]
    deal_service_ca_file: Option<PathBuf>,

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
    args.runtime.block_on("order-service", async {
        let telemetry = args.observability.init_logs("order-service");
        let code = cli::exit_code("order-service", run(args).await);
        telemetry.shut_down().await;
        code
    })
}

async fn run(args: Args) -> Result<(), cli::MainError> {
    let settings = cli::server_settings(&args.auth, &args.limits, &args.tls, &args.web)?;
    let credentials = match (&args.deal_service_token, args.auth.secret_signer()) {
        (Some(token), _) => Credentials::Token(token.clone()),
        (None, Some(signer)) => Credentials::minted(signer),
        (None, None) if args.auth.insecure_no_auth => Credentials::None,
        (None, None) => {
            return Err("set DEAL_SERVICE_TOKEN: with a public key, order-service cannot mint its own".into());
        }
    };
    // tonic speaks TLS only to https URLs: a CA file with an http URL would send the service token in
    // the clear, and an https URL without one could verify nothing.
    let https = args.deal_service_url.starts_with("https://");
    let tls = match (&args.deal_service_ca_file, https) {
        (Some(path), true) => Some(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(cli::read(path)?))),
        (None, false) => None,
        (Some(_), false) => return Err("--deal-service-ca-file needs an https:// --deal-service-url".into()),
        (None, true) => return Err("an https:// --deal-service-url needs --deal-service-ca-file".into()),
    };
    let deadline = Duration::from_millis(args.deal_service_deadline_ms);
    let deals = DealsClient::connect_lazy_over(
        &args.deal_service_url,
        usize::from(args.deal_service_connections),
        deadline,
        credentials,
        tls,
    )
    .map_err(|err| err.to_string())?;
    let (pool, listener) =
        cli::start(&args.database, &args.observability, args.listen_addr, cli::Exposed::service("order-service"))
            .await?;
    tracing::info!(addr = %listener.local_addr()?, deal_service = %args.deal_service_url, tls = settings.tls.is_some(), "order-service listening");
    topkart::order::run(listener, pool, deals, settings, server::shutdown_signal()).await?;
    Ok(())
}
