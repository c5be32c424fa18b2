//! topkart: operator commands. `topkart token` mints a token for local use and grpcurl.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use topkart::shared::{
    auth::{KeyAlgorithm, Role, Signer},
    cli,
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
    let Args { command: Command::Token { role, sub, ttl, jwt_secret, jwt_private_key_file, jwt_algorithm } } =
        Args::parse();
    let signer = match (jwt_secret, jwt_private_key_file) {
        (Some(secret), _) => Ok(Signer::hs256(secret.as_bytes())),
        (None, Some(path)) => cli::read(&path).and_then(|pem| Ok(Signer::from_private_pem(&pem, jwt_algorithm)?)),
        (None, None) => Err("set JWT_SECRET or --jwt-private-key-file".into()),
    };
    match signer.and_then(|signer| Ok(signer.token(&sub, role, ttl)?)) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("topkart token: {err}");
            ExitCode::FAILURE
        }
    }
}
