//! The Postgres pool every service uses, and the migrations in `migrations/` ([`super::migrations`]
//! applies them).

use std::time::Duration;

use sqlx::{
    PgPool,
    migrate::MigrateError,
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// The schema, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long a request waits for a pooled connection before it is told the database is unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long start-up keeps trying to reach the database before giving up.
const STARTUP_PATIENCE: Duration = Duration::from_secs(30);

/// Errors of start-up; the URL is never part of them, since it may hold a password.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The database never answered within the start-up patience.
    #[error("database unreachable: {0}")]
    Unreachable(sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(MigrateError),
    /// DATABASE_URL is not a Postgres connection URL (the URL itself is not repeated).
    #[error("DATABASE_URL is not a postgres:// URL")]
    BadUrl,
    /// Told not to migrate, and the schema is behind this binary.
    #[error(
        "{count} migration(s) pending, the first {first}: run `topkart migrate` first (or start with --migrate-on-start=true)"
    )]
    Pending { count: usize, first: String },
}

/// Connects to `database_url`, retrying while the database starts, then applies pending migrations.
pub async fn connect_and_migrate(database_url: &str, max_connections: u32) -> Result<PgPool, StartupError> {
    let connect: PgConnectOptions = database_url.parse().map_err(|_| StartupError::BadUrl)?;
    connect_and_migrate_with(connect, max_connections).await
}

/// [`connect_and_migrate`] with options already parsed (a benchmark's own database, say).
pub async fn connect_and_migrate_with(connect: PgConnectOptions, max_connections: u32) -> Result<PgPool, StartupError> {
    let pool = connect_with(connect, max_connections).await?;
    super::migrations::apply_pending(&pool).await.map_err(StartupError::Migrate)?;
    Ok(pool)
}

/// Connects to `database_url` and checks that no migration is pending, without migrating: for a
/// deploy that migrates as a step of its own.
pub async fn connect_migrated(database_url: &str, max_connections: u32) -> Result<PgPool, StartupError> {
    let pool = connect(database_url, max_connections).await?;
    let pending = super::migrations::pending(&pool).await.map_err(StartupError::Migrate)?;
    if let Some(first) = pending.first() {
        return Err(StartupError::Pending {
            count: pending.len(),
            first: format!("{} {}", first.version, first.description),
        });
    }
    Ok(pool)
}

/// Connects to `database_url`, retrying while the database starts.
pub async fn connect(database_url: &str, max_connections: u32) -> Result<PgPool, StartupError> {
    let connect: PgConnectOptions = database_url.parse().map_err(|_| StartupError::BadUrl)?;
    connect_with(connect, max_connections).await
}

async fn connect_with(connect: PgConnectOptions, max_connections: u32) -> Result<PgPool, StartupError> {
    let options = PgPoolOptions::new().max_connections(max_connections).acquire_timeout(ACQUIRE_TIMEOUT);
    let deadline = tokio::time::Instant::now() + STARTUP_PATIENCE;
    let pool = loop {
        match options.clone().connect_with(connect.clone()).await {
            Ok(pool) => break pool,
            Err(err) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %err, "database not reachable yet, retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(err) => return Err(StartupError::Unreachable(err)),
        }
    };
    Ok(pool)
}

/// True when the error means the database could not serve the statement now but may later (as
/// opposed to a bad statement): unreachable, out of connections, starting or shutting down, or a
/// transaction it chose to abort (a deadlock or serialization failure, safe to retry).
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| is_transient_sqlstate(&code)),
        _ => false,
    }
}

/// SQLSTATEs worth a retry: connection exceptions (08), too many connections (53300), the server
/// shutting down or starting (57P01–57P03), deadlocks and serialization failures (40P01, 40001),
/// and a write refused by a read-only server (25006): during a failover or switchover a connection
/// can reach the old primary, now a standby, before the proxy in front stops sending it there.
fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "53300" | "57P01" | "57P02" | "57P03" | "40P01" | "40001" | "25006")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_sqlstates_are_the_ones_worth_a_retry() {
        for code in ["08006", "08001", "53300", "57P01", "57P03", "40P01", "40001", "25006"] {
            assert!(is_transient_sqlstate(code), "{code}");
        }
        for code in ["23505", "42601", "22P02", "P0001"] {
            assert!(!is_transient_sqlstate(code), "{code}");
        }
    }
}
