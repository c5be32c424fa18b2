//! health-probe: asks a server for its `grpc.health.v1` status and exits 0 only if it is SERVING.
//! For container health checks, where no grpcurl is at hand.

use std::{process::ExitCode, time::Duration};

use clap::Parser;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

/// Exits 0 when the server at `--addr` reports SERVING, 1 otherwise.
#[derive(Debug, Parser)]
#[command(name = "health-probe", version)]
struct Args {
    /// The server's URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,

    /// The service to ask about; the empty default means the whole server.
    #[arg(long, default_value = "")]
    service: String,

    /// Seconds to wait for an answer.
    #[arg(long, default_value_t = 2)]
    timeout_secs: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let timeout = Duration::from_secs(args.timeout_secs);
    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(args.addr.clone())
            .map_err(|err| err.to_string())?
            .connect()
            .await
            .map_err(|err| err.to_string())?;
        let mut client = HealthClient::new(channel);
        let response = client
            .check(HealthCheckRequest { service: args.service.clone() })
            .await
            .map_err(|status| status.message().to_owned())?;
        Ok::<_, String>(response.into_inner().status())
    };
    match tokio::time::timeout(timeout, check).await {
        Ok(Ok(ServingStatus::Serving)) => ExitCode::SUCCESS,
        Ok(Ok(status)) => {
            eprintln!("{}: {}", args.addr, status.as_str_name());
            ExitCode::FAILURE
        }
        Ok(Err(err)) => {
            eprintln!("{}: {err}", args.addr);
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("{}: no answer within {timeout:?}", args.addr);
            ExitCode::FAILURE
        }
    }
}
