//! The schema's migrations (`migrations/`, embedded at build time), applied in order under sqlx's
//! Postgres advisory lock, so several processes migrating at once apply each exactly once; each
//! applied migration is logged by name with its duration. A service applies them as it starts
//! unless told not to (`--migrate-on-start=false`), for deploys that run `topkart migrate` as a
//! step of their own.
//!
//! A database may hold migrations this binary does not know: a newer release applied them while
//! this one still runs (a rolling deploy). They are reported, not refused, since migrations are
//! written to keep the previous release working.

use std::collections::HashMap;

use sqlx::{
    PgPool,
    migrate::{Migrate, MigrateError, Migration},
};

use super::db::MIGRATOR;

/// Where sqlx records the applied migrations.
const TABLE: &str = "_sqlx_migrations";

/// The migrations not applied to the database yet, in the order they would be applied. Reads
/// only: a database never migrated has every migration pending.
pub async fn pending(pool: &PgPool) -> Result<Vec<&'static Migration>, MigrateError> {
    let table: Option<String> = sqlx::query_scalar("select to_regclass($1)::text").bind(TABLE).fetch_one(pool).await?;
    if table.is_none() {
        return Ok(ups().collect());
    }
    let mut conn = pool.acquire().await?;
    pending_on(&mut conn).await
}

/// Applies the pending migrations, logging each; returns how many were applied.
pub async fn apply_pending(pool: &PgPool) -> Result<usize, MigrateError> {
    let mut conn = pool.acquire().await?;
    // The advisory lock is the session's: never hand a session that may still hold it back to the
    // pool (a failed unlock, this future dropped), or every later migration would wait for ever.
    conn.close_on_drop();
    conn.lock().await?;
    let applied = apply_locked(&mut conn).await;
    let unlocked = conn.unlock().await;
    let applied = applied?;
    unlocked?;
    Ok(applied)
}

async fn apply_locked(conn: &mut sqlx::PgConnection) -> Result<usize, MigrateError> {
    conn.ensure_migrations_table(TABLE).await?;
    let pending = pending_on(conn).await?;
    if pending.is_empty() {
        tracing::info!("database schema up to date");
        return Ok(0);
    }
    tracing::info!(count = pending.len(), "applying migrations");
    for migration in &pending {
        let took = conn.apply(TABLE, migration).await?;
        tracing::info!(
            version = migration.version,
            migration = %migration.description,
            ms = took.as_secs_f64() * 1000.0,
            "migration applied"
        );
    }
    Ok(pending.len())
}

/// The pending migrations, refusing a database left half-migrated or one whose applied migrations
/// differ from this binary's.
async fn pending_on(conn: &mut sqlx::PgConnection) -> Result<Vec<&'static Migration>, MigrateError> {
    if let Some(version) = conn.dirty_version(TABLE).await? {
        return Err(MigrateError::Dirty(version));
    }
    let applied: HashMap<i64, Vec<u8>> = conn
        .list_applied_migrations(TABLE)
        .await?
        .into_iter()
        .map(|migration| (migration.version, migration.checksum.into_owned()))
        .collect();
    let mut pending = Vec::new();
    for migration in ups() {
        match applied.get(&migration.version) {
            Some(checksum) if *checksum != *migration.checksum => {
                return Err(MigrateError::VersionMismatch(migration.version));
            }
            Some(_) => {}
            None => pending.push(migration),
        }
    }
    let unknown = applied.keys().filter(|version| !ups().any(|migration| migration.version == **version)).count();
    if unknown > 0 {
        tracing::info!(count = unknown, "the database has migrations a newer release applied");
    }
    Ok(pending)
}

fn ups() -> impl Iterator<Item = &'static Migration> {
    MIGRATOR.iter().filter(|migration| !migration.migration_type.is_down_migration())
}
