//! Settings every binary takes, from flags with environment fallbacks.

use std::{net::SocketAddr, process::ExitCode};

use sqlx::PgPool;
use tokio::net::TcpListener;

use super::db;

/// Database settings.
#[derive(Debug, clap::Args)]
pub struct DatabaseArgs {
    /// Postgres connection URL. Never logged.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// The most connections this process opens.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,
}

/// What a binary's start-up or serving failed with.
pub type MainError = Box<dyn std::error::Error>;

/// Start-up common to every binary: connect and migrate, then bind `addr`.
pub async fn start(database: &DatabaseArgs, addr: SocketAddr) -> Result<(PgPool, TcpListener), MainError> {
    let pool = db::connect_and_migrate(&database.database_url, database.database_max_connections).await?;
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
