//! The Postgres pool every service uses, and the migrations in `migrations/`.

use std::time::Duration;

use sqlx::{PgPool, migrate::MigrateError, postgres::PgPoolOptions};

/// The schema, embedded at build time. sqlx takes a Postgres advisory lock while it migrates, so
/// several services starting at once apply each migration exactly once.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long a request waits for a pooled connection before it is told the database is unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long start-up keeps trying to reach the database before giving up.
const STARTUP_PATIENCE: Duration = Duration::from_secs(30);

/// Errors of start-up; the URL is never part of them, since it may hold a password.
#[derive(Debug)]
pub enum StartupError {
    /// The database never answered within the start-up patience.
    Unreachable(sqlx::Error),
    /// A migration failed.
    Migrate(MigrateError),
}

impl std::fmt::Display for StartupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(err) => write!(f, "database unreachable: {err}"),
            Self::Migrate(err) => write!(f, "migration failed: {err}"),
        }
    }
}

impl std::error::Error for StartupError {}

/// Connects to `database_url`, retrying while the database starts, then applies pending migrations.
pub async fn connect_and_migrate(database_url: &str, max_connections: u32) -> Result<PgPool, StartupError> {
    let options = PgPoolOptions::new().max_connections(max_connections).acquire_timeout(ACQUIRE_TIMEOUT);
    let deadline = tokio::time::Instant::now() + STARTUP_PATIENCE;
    let pool = loop {
        match options.clone().connect(database_url).await {
            Ok(pool) => break pool,
            Err(err) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %err, "database not reachable yet, retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(err) => return Err(StartupError::Unreachable(err)),
        }
    };
    MIGRATOR.run(&pool).await.map_err(StartupError::Migrate)?;
    Ok(pool)
}

/// True when the error means the database could not be reached (as opposed to a bad statement).
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_))
}

/// True when the error is a violation of a unique index or primary key.
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}
