//! topkart: operator commands. `topkart token` mints a token for local use and grpcurl;
//! `topkart jwk` prints a private key's public JWK, for a JWKS file; `topkart descriptors` writes the
//! contracts' descriptor set for gateways; `topkart migrate` applies the schema's migrations, as a
//! step of a deploy.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::{Parser, Subcommand};
use topkart::shared::{
    auth::{self, KeyAlgorithm, Role, Signer},
    cli, db, migrations,
    telemetry::{self, LogFormat},
};

/// Operator commands for Topkart lightning deals.
#[derive(Debug, Parser)]
#[command(name = "topkart", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints a signed token, for example `topkart token --role admin --sub alice --ttl 1h`.
    Token {
        /// The role the token grants.
        #[arg(long, value_enum)]
        role: Role,
        /// Who the token names: a customer id, an admin's name, a service's name.
        #[arg(long)]
        sub: String,
        /// How long it lives: seconds, or a number with s, m, h or d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
        /// HS256 secret to sign with (the services' JWT_SECRET).
        #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
        jwt_secret: Option<String>,
        /// PEM private key to sign with instead (RSA for RS256, Ed25519 for EdDSA).
        #[arg(long, env = "JWT_PRIVATE_KEY_FILE", conflicts_with = "jwt_secret")]
        jwt_private_key_file: Option<PathBuf>,
        /// The algorithm of `--jwt-private-key-file`.
        #[arg(long, env = "JWT_ALGORITHM", value_enum, default_value_t = KeyAlgorithm::Rs256)]
        jwt_algorithm: KeyAlgorithm,
        /// The key id to put in the header, naming the key in the services' `--jwks-file`.
        #[arg(long)]
        kid: Option<String>,
        /// The issuer to put in `iss` (the services' `--jwt-issuer`).
        #[arg(long)]
        iss: Option<String>,
        /// The audience to put in `aud` (the services' `--jwt-audience`).
        #[arg(long)]
        aud: Option<String>,
    },
    /// Prints the public JWK of a private key, one line of JSON, for a JWKS file
    /// (`{"keys": [...]}`): `topkart jwk --jwt-private-key-file key.pem --jwt-algorithm ed-dsa --kid k1`.
    Jwk {
        /// The PEM private key (RSA for RS256, Ed25519 for EdDSA).
        #[arg(long, env = "JWT_PRIVATE_KEY_FILE")]
        jwt_private_key_file: PathBuf,
        /// Its algorithm.
        #[arg(long, env = "JWT_ALGORITHM", value_enum, default_value_t = KeyAlgorithm::Rs256)]
        jwt_algorithm: KeyAlgorithm,
        /// The key id tokens signed with it will carry (`topkart token --kid`).
        #[arg(long)]
        kid: String,
    },
    /// Writes the FileDescriptorSet of the public contracts (with imports and comments), as `buf build
    /// -o` would, for a gateway such as Envoy's gRPC-JSON transcoder. The internal HoldService is
    /// not in it.
    Descriptors {
        /// Where to write it.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Applies the pending migrations of the schema, each logged by name with its duration, for a
    /// deploy that runs them as a step of their own (an init container, a job) and starts the
    /// services with `--migrate-on-start=false`. Safe to run from several places at once.
    Migrate {
        /// Postgres connection URL. Never logged.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// Lists the migrations that would be applied, one per line (version and name), and
        /// changes nothing.
        #[arg(long)]
        dry_run: bool,
        /// How log lines are written.
        #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
}

fn parse_ttl(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.find(|c: char| !c.is_ascii_digit()).map_or((text, "s"), |at| text.split_at(at));
    let number: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration such as 90s, 30m, 1h or 7d"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}

fn main() -> ExitCode {
    let result = match Args::parse().command {
        Command::Token { role, sub, ttl, jwt_secret, jwt_private_key_file, jwt_algorithm, kid, iss, aud } => {
            let claims = TokenClaims { role, sub, ttl, kid, iss, aud };
            token(&claims, jwt_secret, jwt_private_key_file, jwt_algorithm).map(|token| println!("{token}"))
        }
        Command::Jwk { jwt_private_key_file, jwt_algorithm, kid } => {
            jwk(&jwt_private_key_file, jwt_algorithm, kid).map(|jwk| println!("{jwk}"))
        }
        Command::Descriptors { out } => std::fs::write(&out, topkart::proto::PUBLIC_DESCRIPTOR_SET)
            .map_err(|err| format!("cannot write {}: {err}", out.display()).into()),
        Command::Migrate { database_url, dry_run, log_format } => migrate(&database_url, dry_run, log_format),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("topkart: {err}");
            ExitCode::FAILURE
        }
    }
}

/// What `topkart token` puts in a token.
struct TokenClaims {
    role: Role,
    sub: String,
    ttl: Duration,
    kid: Option<String>,
    iss: Option<String>,
    aud: Option<String>,
}

/// A token of `claims`, signed with the HS256 secret or the private key.
fn token(
    claims: &TokenClaims,
    jwt_secret: Option<String>,
    jwt_private_key_file: Option<PathBuf>,
    jwt_algorithm: KeyAlgorithm,
) -> Result<String, cli::MainError> {
    let mut signer = match (jwt_secret, jwt_private_key_file) {
        (Some(secret), _) => {
            auth::check_secret(&secret)?;
            Signer::hs256(secret.as_bytes())
        }
        (None, Some(path)) => Signer::from_private_pem(&cli::read(&path)?, jwt_algorithm)?,
        (None, None) => return Err("set JWT_SECRET or --jwt-private-key-file".into()),
    };
    if let Some(kid) = &claims.kid {
        signer = signer.with_key_id(kid);
    }
    if let Some(iss) = &claims.iss {
        signer = signer.with_issuer(iss);
    }
    if let Some(aud) = &claims.aud {
        signer = signer.with_audience(aud);
    }
    Ok(signer.token(&claims.sub, claims.role, claims.ttl)?)
}

/// The public JWK of the private key at `path`, as JSON.
fn jwk(path: &Path, algorithm: KeyAlgorithm, kid: String) -> Result<String, cli::MainError> {
    let jwk = Signer::from_private_pem(&cli::read(path)?, algorithm)?.with_key_id(kid).public_jwk()?;
    Ok(serde_json::to_string(&jwk)?)
}

/// Applies the pending migrations, or with `dry_run` lists them on stdout.
fn migrate(database_url: &str, dry_run: bool, log_format: LogFormat) -> Result<(), cli::MainError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let telemetry = telemetry::init(log_format, "topkart-migrate");
        let result = migrate_with(database_url, dry_run).await;
        telemetry.shut_down().await;
        result
    })
}

async fn migrate_with(database_url: &str, dry_run: bool) -> Result<(), cli::MainError> {
    let pool = db::connect(database_url, 1).await?;
    if dry_run {
        for migration in migrations::pending(&pool).await? {
            println!("{} {}", migration.version, migration.description);
        }
    } else {
        migrations::apply_pending(&pool).await?;
    }
    pool.close().await;
    Ok(())
}
