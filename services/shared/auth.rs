//! Who is calling: bearer JWTs verified once per request by the call stack's callers layer
//! (`layers::callers`), shared by every service, and the roles the handlers authorize against.
//!
//! Tokens are signed with HS256 (a shared secret) or verified against an RS256 or EdDSA public key,
//! and carry `sub`, `role` (`admin`, `customer` or `service`) and `exp`. Health and reflection are
//! passed by it untouched and stay open. No token or key is ever logged.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tonic::{Code, Request, Status, metadata::MetadataMap};

use super::status;

/// The `google.rpc.ErrorInfo` domain of authentication errors.
pub const DOMAIN: &str = "auth.topkart.com";
/// The shortest HS256 secret accepted: a guessable key makes every token forgeable.
pub const MIN_SECRET_BYTES: usize = 32;
/// The longest subject a token may carry, in characters (a customer id's limit).
pub const MAX_SUBJECT_CHARS: usize = 128;
/// Clock skew tolerated on `exp`, in seconds.
const LEEWAY_SECS: u64 = 5;

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Creates and updates deals, approves and rejects orders, sees everything.
    Admin,
    /// Reads deals, places and follows its own orders.
    Customer,
    /// Another service of ours: order-service reserving and releasing units.
    Service,
}

impl Role {
    /// The name tokens use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Customer => "customer",
            Self::Service => "service",
        }
    }
}

/// The claims of our tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who: a customer id, an admin's name, or a service's name.
    pub sub: String,
    /// What they may do.
    pub role: Role,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: u64,
    /// Issue time, in seconds since the Unix epoch (0 when the issuer left it out).
    #[serde(default)]
    pub iat: u64,
}

/// The caller of a request, as the callers layer established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Authentication is off (`--insecure-no-auth`): every caller may do everything, and a customer
    /// is named by the request's `customer_id`.
    Trusted,
    /// A verified token's subject and role.
    Token { subject: String, role: Role },
}

impl Caller {
    /// The caller of `request`; a request that did not pass the callers layer has none.
    pub fn of<T>(request: &Request<T>) -> Result<&Caller, Status> {
        request.extensions().get::<Caller>().ok_or_else(|| unauthenticated("no credentials"))
    }

    /// Whether the caller has one of `roles` (a trusted caller has them all).
    pub fn is_any(&self, roles: &[Role]) -> bool {
        match self {
            Self::Trusted => true,
            Self::Token { role, .. } => roles.contains(role),
        }
    }

    /// The customer the caller is, if its token is a customer's.
    pub fn customer(&self) -> Option<&str> {
        match self {
            Self::Token { subject, role: Role::Customer } => Some(subject),
            _ => None,
        }
    }
}

/// How tokens are checked.
#[derive(Clone)]
pub enum Authenticator {
    /// Every request must carry a token that this key verifies.
    Verify(Arc<(DecodingKey, Validation)>),
    /// No checks at all. Development only.
    Insecure,
}

impl std::fmt::Debug for Authenticator {
    // The key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Verify(verifier) => write!(f, "Authenticator::Verify({:?})", verifier.1.algorithms),
            Self::Insecure => write!(f, "Authenticator::Insecure"),
        }
    }
}

/// Authentication settings, shared by every binary.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// HS256 secret that tokens are signed with. Never logged.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM public key (RSA for RS256, Ed25519 for EdDSA) that tokens are verified with.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE", conflicts_with = "jwt_secret")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// The algorithm of `--jwt-public-key-file`.
    #[arg(long, env = "JWT_ALGORITHM", value_enum, default_value_t = KeyAlgorithm::Rs256)]
    pub jwt_algorithm: KeyAlgorithm,

    /// Serve without authentication: anyone who reaches the port may do anything. Development only.
    #[arg(long, env = "INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
}

/// The public-key algorithms accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyAlgorithm {
    /// RSA PKCS#1 v1.5 with SHA-256.
    Rs256,
    /// Ed25519.
    EdDsa,
}

/// Why authentication could not be configured.
#[derive(Debug)]
pub struct AuthConfigError(String);

impl std::fmt::Display for AuthConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AuthConfigError {}

impl AuthArgs {
    /// The authenticator these settings describe; refuses to run without a key unless authentication
    /// is explicitly turned off.
    pub fn authenticator(&self) -> Result<Authenticator, AuthConfigError> {
        if let Some(secret) = &self.jwt_secret {
            check_secret(secret)?;
            return Ok(Authenticator::hs256(secret.as_bytes()));
        }
        if let Some(path) = &self.jwt_public_key_file {
            let pem =
                std::fs::read(path).map_err(|err| AuthConfigError(format!("cannot read {}: {err}", path.display())))?;
            let (key, algorithm) = match self.jwt_algorithm {
                KeyAlgorithm::Rs256 => (DecodingKey::from_rsa_pem(&pem), Algorithm::RS256),
                KeyAlgorithm::EdDsa => (DecodingKey::from_ed_pem(&pem), Algorithm::EdDSA),
            };
            let key =
                key.map_err(|err| AuthConfigError(format!("{} is not a usable public key: {err}", path.display())))?;
            return Ok(Authenticator::with_key(key, algorithm));
        }
        if self.insecure_no_auth {
            tracing::warn!(
                "AUTHENTICATION IS OFF (--insecure-no-auth): anyone who reaches this port can do anything. \
                 Never run like this outside a developer's machine."
            );
            return Ok(Authenticator::Insecure);
        }
        Err(AuthConfigError(
            "no token key: set JWT_SECRET or JWT_PUBLIC_KEY_FILE (or --insecure-no-auth for local development)".into(),
        ))
    }
}

/// Refuses an HS256 secret too short to resist guessing (an empty one included).
pub fn check_secret(secret: &str) -> Result<(), AuthConfigError> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(AuthConfigError(format!(
            "JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes (for example `openssl rand -hex 32`)"
        )));
    }
    Ok(())
}

impl Authenticator {
    /// Verifies HS256 tokens signed with `secret`.
    pub fn hs256(secret: &[u8]) -> Self {
        Self::with_key(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    fn with_key(key: DecodingKey, algorithm: Algorithm) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self::Verify(Arc::new((key, validation)))
    }

    /// The caller that `metadata` proves, or UNAUTHENTICATED. Only the one configured algorithm is
    /// accepted, so `alg: none` and algorithm-confusion tokens fail.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        self.authenticate_headers(metadata.as_ref())
    }

    /// [`Self::authenticate`], from a request's HTTP headers.
    pub fn authenticate_headers(&self, headers: &http::HeaderMap) -> Result<Caller, Status> {
        let Self::Verify(verifier) = self else {
            return Ok(Caller::Trusted);
        };
        let header = headers.get("authorization").ok_or_else(|| unauthenticated("missing bearer token"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or_else(|| unauthenticated("the authorization header must be `Bearer <token>`"))?;
        let (key, validation) = verifier.as_ref();
        let claims = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|err| unauthenticated(&format!("invalid token: {}", describe(&err))))?
            .claims;
        // Subjects name customers, admins and services: 1 to 128 printable characters.
        let subject_ok =
            (1..=MAX_SUBJECT_CHARS).contains(&claims.sub.chars().count()) && !claims.sub.chars().any(char::is_control);
        if !subject_ok {
            return Err(unauthenticated("invalid token: malformed subject"));
        }
        Ok(Caller::Token { subject: claims.sub, role: claims.role })
    }
}

/// What was wrong with a token, without echoing any of it.
fn describe(err: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind;
    match err.kind() {
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => "algorithm not accepted",
        ErrorKind::MissingRequiredClaim(_) => "missing claim",
        _ => "malformed",
    }
}

fn unauthenticated(message: &str) -> Status {
    status::with_reason(Code::Unauthenticated, DOMAIN, "UNAUTHENTICATED", message, [])
}

/// The caller of `request`, if it has one of `roles`; else PERMISSION_DENIED in `domain`.
pub fn authorize<'r, T>(request: &'r Request<T>, roles: &[Role], domain: &str) -> Result<&'r Caller, Status> {
    let caller = Caller::of(request)?;
    if caller.is_any(roles) { Ok(caller) } else { Err(permission_denied(domain, roles)) }
}

/// PERMISSION_DENIED for a caller lacking every one of `roles`, in `domain`.
pub fn permission_denied(domain: &str, roles: &[Role]) -> Status {
    let roles = roles.iter().map(|role| role.as_str()).collect::<Vec<_>>().join(" or ");
    status::with_reason(
        Code::PermissionDenied,
        domain,
        "PERMISSION_DENIED",
        format!("this call needs the {roles} role"),
        [("required_roles", roles.clone())],
    )
}

/// How tokens are signed.
pub struct Signer {
    key: EncodingKey,
    algorithm: Algorithm,
}

impl Signer {
    /// Signs HS256 tokens with `secret`.
    pub fn hs256(secret: &[u8]) -> Self {
        Self { key: EncodingKey::from_secret(secret), algorithm: Algorithm::HS256 }
    }

    /// Signs with a PEM private key (RSA for RS256, Ed25519 for EdDSA).
    pub fn from_private_pem(pem: &[u8], algorithm: KeyAlgorithm) -> Result<Self, AuthConfigError> {
        let (key, algorithm) = match algorithm {
            KeyAlgorithm::Rs256 => (EncodingKey::from_rsa_pem(pem), Algorithm::RS256),
            KeyAlgorithm::EdDsa => (EncodingKey::from_ed_pem(pem), Algorithm::EdDSA),
        };
        let key = key.map_err(|err| AuthConfigError(format!("not a usable private key: {err}")))?;
        Ok(Self { key, algorithm })
    }

    /// A token for `subject` in `role`, valid for `ttl` from now.
    pub fn token(&self, subject: &str, role: Role, ttl: Duration) -> Result<String, AuthConfigError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
        let claims = Claims { sub: subject.to_owned(), role, iat: now, exp: now.saturating_add(ttl.as_secs()) };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, &self.key)
            .map_err(|err| AuthConfigError(format!("cannot sign: {err}")))
    }
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
