//! Migrations as a deploy step: `topkart migrate` (and its dry run) against a database never
//! migrated, and a service told not to migrate, which refuses a schema behind it.

use std::{process::Output, time::Duration};

use sqlx::PgPool;

use crate::processes::*;

/// Runs `topkart` with `args` over `database_url` to its end.
async fn topkart(database_url: &str, args: &[&str]) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_topkart"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "info")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), run).await.expect("topkart exits").expect("topkart runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[sqlx::test(migrations = false)]
async fn a_service_told_not_to_migrate_waits_for_topkart_migrate_which_applies_each_migration_by_name(pool: PgPool) {
    let url = database_url(&pool);
    let migrations: Vec<_> = topkart::shared::db::MIGRATOR.iter().collect();

    // The dry run lists every migration, in order, and writes nothing.
    let dry_run = topkart(&url, &["migrate", "--dry-run"]).await;
    assert!(dry_run.status.success(), "{}", text(&dry_run.stderr));
    let listed: Vec<String> = text(&dry_run.stdout).lines().map(str::to_owned).collect();
    let expected: Vec<String> =
        migrations.iter().map(|migration| format!("{} {}", migration.version, migration.description)).collect();
    assert_eq!(listed, expected);
    let table: Option<String> =
        sqlx::query_scalar("select to_regclass('_sqlx_migrations')::text").fetch_one(&pool).await.unwrap();
    assert_eq!(table, None, "a dry run changes nothing");

    // A service told not to migrate refuses to start, and says what to run.
    let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_deal-service"))
        .args(["--listen-addr", "127.0.0.1:0", "--migrate-on-start=false"])
        .env("DATABASE_URL", &url)
        .env("JWT_SECRET", crate::helpers::TEST_SECRET)
        .kill_on_drop(true)
        .output();
    let refused = tokio::time::timeout(Duration::from_secs(60), refused).await.expect("it exits").unwrap();
    assert!(!refused.status.success());
    let said = text(&refused.stderr);
    assert!(said.contains(&format!("{} migration(s) pending", migrations.len())), "{said}");
    assert!(said.contains("topkart migrate"), "{said}");

    // `topkart migrate` applies them, naming each with its duration.
    let migrated = topkart(&url, &["migrate"]).await;
    let log = text(&migrated.stderr);
    assert!(migrated.status.success(), "{log}");
    for migration in &migrations {
        let line = log
            .lines()
            .find(|line| line.contains("migration applied") && line.contains(&format!("version={}", migration.version)))
            .unwrap_or_else(|| panic!("no line for {}: {log}", migration.version));
        assert!(line.contains(&*migration.description) && line.contains("ms="), "{line}");
    }
    let again = topkart(&url, &["migrate", "--dry-run"]).await;
    assert_eq!(text(&again.stdout), "", "nothing left to apply");
    let rerun = topkart(&url, &["migrate"]).await;
    assert!(rerun.status.success() && text(&rerun.stderr).contains("database schema up to date"));

    // Now the service starts without migrating.
    let addr = free_addr().await;
    let _deal = Process::start(
        env!("CARGO_BIN_EXE_deal-service"),
        &url,
        &["--listen-addr", &addr.to_string(), "--migrate-on-start=false"],
    );
    wait_serving(addr).await;
}
