//! invariant-check: checks a live database and exits non-zero on any violation.

use std::process::ExitCode;

use clap::Parser;
use topkart::invariants;

/// Checks every invariant of deals, reservations and orders in one snapshot; prints each violation
/// and exits 1 if there is any (2 if the database cannot be read).
#[derive(Debug, Parser)]
#[command(name = "invariant-check", version)]
struct Args {
    /// Postgres connection URL. Never logged.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let checked = async {
        let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&args.database_url).await?;
        invariants::check(&pool).await
    };
    match checked.await {
        Ok(violations) if violations.is_empty() => {
            eprintln!("invariant-check: no violations");
            ExitCode::SUCCESS
        }
        Ok(violations) => {
            for violation in &violations {
                eprintln!("violation: {violation}");
            }
            eprintln!("invariant-check: {} violations", violations.len());
            ExitCode::from(1)
        }
        Err(err) => {
            eprintln!("invariant-check: cannot read the database: {err}");
            ExitCode::from(2)
        }
    }
}
