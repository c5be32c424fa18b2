//! Settings every binary takes, from flags with environment fallbacks.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use sqlx::PgPool;
use tokio::net::TcpListener;

use tonic::transport::{Identity, ServerTlsConfig};

use super::{auth::AuthArgs, db, server::ServerSettings};

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

/// Authentication and TLS, the settings of every server.
pub fn server_settings(auth: &AuthArgs, tls: &TlsArgs) -> Result<ServerSettings, MainError> {
    Ok(ServerSettings { auth: auth.authenticator()?, tls: tls.server_config()? })
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
