//! Who is calling: bearer JWTs verified once per request by the call stack's callers layer
//! (`layers::callers`), shared by every service, and the roles the handlers authorize against.
//!
//! Tokens are signed with HS256 (a shared secret) or verified against an RS256 or EdDSA public key,
//! one given as PEM or several in a JWKS file chosen by the token's `kid` (`auth/jwks.rs`). They carry
//! `sub`, `role` (`admin`, `customer` or `service`) and `exp`; `nbf` and `iat` are honoured, and `iss`
//! and `aud` are required and checked when configured. [`Signer`] (`auth/signer.rs`) mints them.
//! Health and reflection are passed by it untouched and stay open. No token or key is ever logged.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use tonic::{Code, Request, Status, metadata::MetadataMap};

use super::status;

/// The `google.rpc.ErrorInfo` domain of authentication errors.
pub const DOMAIN: &str = "auth.topkart.com";
/// The shortest HS256 secret accepted: a guessable key makes every token forgeable.
pub const MIN_SECRET_BYTES: usize = 32;
/// The longest subject a token may carry, in characters (a customer id's limit).
pub const MAX_SUBJECT_CHARS: usize = 128;
/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
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
    /// Not valid before, in seconds since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub nbf: Option<u64>,
    /// Who issued the token; checked when `--jwt-issuer` is set.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub iss: Option<String>,
    /// Whom the token is for; checked when `--jwt-audience` is set.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub aud: Option<Audience>,
}

/// A token's `aud`: one name or several, as RFC 7519 allows both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// A single audience, `"aud": "deals"`.
    One(String),
    /// Several, `"aud": ["deals", "orders"]`.
    Many(Vec<String>),
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
    /// Refuses a caller with none of `roles`.
    pub fn require(&self, roles: &'static [Role]) -> Result<(), Refusal> {
        if self.is_any(roles) { Ok(()) } else { Err(Refusal::LacksRole(roles)) }
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

/// How tokens are checked. Cheap to clone: every connection's call stack holds one.
#[derive(Clone)]
pub enum Authenticator {
    /// Every request must carry a token that the verifier accepts.
    Verify(Arc<Verifier>),
    /// No checks at all. Development only.
    Insecure,
}

/// What verifies tokens: one key, or the keys of a JWKS file.
pub struct Verifier(Keys);

enum Keys {
    /// An HS256 secret or a PEM public key: every token is checked against it, once.
    Single(KeyCheck, VerifiedTokens),
    /// Keys chosen by the token's `kid`, re-read when the file changes.
    Jwks(jwks::JwksFile),
}

impl std::fmt::Debug for Authenticator {
    // The keys stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Verify(verifier) => match &verifier.0 {
                Keys::Single(key, _) => write!(f, "Authenticator::Verify({:?})", key.validation.algorithms),
                Keys::Jwks(file) => write!(f, "Authenticator::Verify(jwks {})", file.path().display()),
            },
            Self::Insecure => write!(f, "Authenticator::Insecure"),
        }
    }
}

/// One key and the checks a token verified by it must pass (only the key's algorithm among them).
struct KeyCheck {
    key: DecodingKey,
    validation: Validation,
}

/// What `iss` and `aud` must be, where configured.
#[derive(Debug, Clone, Default)]
struct Expected {
    issuer: Option<String>,
    audience: Option<String>,
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

    /// JWKS file (`{"keys": [...]}`) of RSA (RS256) and Ed25519 (EdDSA) public keys, each with a `kid`;
    /// a token's `kid` picks its key. Re-read when it changes, so keys can rotate without a restart.
    #[arg(long, env = "JWKS_FILE", conflicts_with_all = ["jwt_secret", "jwt_public_key_file"])]
    pub jwks_file: Option<PathBuf>,

    /// The issuer tokens must name in `iss`. Unset, `iss` is not checked.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// The audience tokens must name in `aud`. Unset, `aud` is not checked at all; set it wherever the
    /// identity provider also issues tokens for other services, or theirs are accepted here.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

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
        let expected = self.expected()?;
        if let Some(secret) = &self.jwt_secret {
            check_secret(secret)?;
            return Ok(Authenticator::single(DecodingKey::from_secret(secret.as_bytes()), Algorithm::HS256, &expected));
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
            return Ok(Authenticator::single(key, algorithm, &expected));
        }
        if let Some(path) = &self.jwks_file {
            let file = jwks::JwksFile::open(path.clone(), expected)?;
            return Ok(Authenticator::Verify(Arc::new(Verifier(Keys::Jwks(file)))));
        }
        if self.insecure_no_auth {
            tracing::warn!(
                "AUTHENTICATION IS OFF (--insecure-no-auth): anyone who reaches this port can do anything. \
                 Never run like this outside a developer's machine."
            );
            return Ok(Authenticator::Insecure);
        }
        Err(AuthConfigError(
            "no token key: set JWT_SECRET, JWT_PUBLIC_KEY_FILE or JWKS_FILE (or --insecure-no-auth for local development)"
                .into(),
        ))
    }

    /// A signer of tokens these settings accept, when they name a shared secret: HS256 with that
    /// secret, and the issuer and audience they require. order-service mints its deal-service token
    /// with it, so the token passes whatever deal-service checks.
    pub fn secret_signer(&self) -> Option<Signer> {
        let secret = self.jwt_secret.as_ref()?;
        let mut signer = Signer::hs256(secret.as_bytes());
        if let Some(issuer) = &self.jwt_issuer {
            signer = signer.with_issuer(issuer);
        }
        if let Some(audience) = &self.jwt_audience {
            signer = signer.with_audience(audience);
        }
        Some(signer)
    }

    fn expected(&self) -> Result<Expected, AuthConfigError> {
        let named = |value: &Option<String>, flag: &str| match value.as_deref() {
            Some("") => Err(AuthConfigError(format!("{flag} must not be empty"))),
            other => Ok(other.map(str::to_owned)),
        };
        Ok(Expected {
            issuer: named(&self.jwt_issuer, "--jwt-issuer")?,
            audience: named(&self.jwt_audience, "--jwt-audience")?,
        })
    }
}

/// Refuses an HS256 secret too short to resist guessing (an empty one included), or a placeholder
/// (`replace-me…`, as the Secret deploy/k8s once shipped held): anyone who read it could sign
/// tokens of any role.
pub fn check_secret(secret: &str) -> Result<(), AuthConfigError> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(AuthConfigError(format!(
            "JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes (for example `openssl rand -hex 32`)"
        )));
    }
    if secret.to_ascii_lowercase().contains("replace-me") {
        return Err(AuthConfigError(
            "JWT_SECRET is a placeholder: set a secret of your own (for example `openssl rand -hex 32`)".into(),
        ));
    }
    Ok(())
}

impl Authenticator {
    /// Verifies HS256 tokens signed with `secret`, with no issuer or audience required.
    pub fn hs256(secret: &[u8]) -> Self {
        Self::single(DecodingKey::from_secret(secret), Algorithm::HS256, &Expected::default())
    }

    fn single(key: DecodingKey, algorithm: Algorithm, expected: &Expected) -> Self {
        let check = KeyCheck::new(key, algorithm, expected);
        Self::Verify(Arc::new(Verifier(Keys::Single(check, VerifiedTokens::default()))))
    }

    /// The caller that `metadata` proves, or UNAUTHENTICATED. Only the key's own algorithm is
    /// accepted, so `alg: none` and algorithm-confusion tokens fail.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        self.authenticate_headers(metadata.as_ref())
    }

    /// [`Self::authenticate`], from a request's HTTP headers.
    pub fn authenticate_headers(&self, headers: &http::HeaderMap) -> Result<Caller, Status> {
        let Self::Verify(verifier) = self else {
            return Ok(Caller::Trusted);
        };
        let claims = match &verifier.0 {
            Keys::Single(key, verified) => verified.get_or_verify(bearer_token(headers)?, |token| key.verify(token))?,
            Keys::Jwks(file) => file.verify(bearer_token(headers)?)?,
        };
        // Subjects name customers, admins and services: 1 to 128 printable characters.
        let subject_ok =
            (1..=MAX_SUBJECT_CHARS).contains(&claims.sub.chars().count()) && !claims.sub.chars().any(char::is_control);
        if !subject_ok {
            return Err(unauthenticated("invalid token: malformed subject"));
        }
        Ok(Caller::Token { subject: claims.sub, role: claims.role })
    }
}

/// The token of an `authorization: Bearer <token>` header.
fn bearer_token(headers: &http::HeaderMap) -> Result<&str, Status> {
    let header = headers.get("authorization").ok_or_else(|| unauthenticated("missing bearer token"))?;
    header
        .to_str()
        .ok()
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(|| unauthenticated("the authorization header must be `Bearer <token>`"))
}

impl KeyCheck {
    fn new(key: DecodingKey, algorithm: Algorithm, expected: &Expected) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &expected.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &expected.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            // jsonwebtoken would otherwise refuse every token that names any audience at all.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Self { key, validation }
    }

    /// The claims of `token` if this key signed it and they hold now.
    fn verify(&self, token: &str) -> Result<Claims, Status> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|err| unauthenticated(&format!("invalid token: {}", describe(&err))))?
            .claims;
        // jsonwebtoken leaves `iat` alone; one in the future means a broken clock at the issuer, or a
        // token made to look fresher than it is.
        if claims.iat > unix_now().saturating_add(LEEWAY_SECS) {
            return Err(unauthenticated("invalid token: issued in the future"));
        }
        Ok(claims)
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

/// What was wrong with a token, without echoing any of it.
fn describe(err: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind;
    match err.kind() {
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::ImmatureSignature => "not yet valid",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => "algorithm not accepted",
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "iss" => "missing issuer",
            "aud" => "missing audience",
            _ => "missing claim",
        },
        _ => "malformed",
    }
}

fn unauthenticated(message: &str) -> Status {
    status::with_reason(Code::Unauthenticated, DOMAIN, "UNAUTHENTICATED", message, [])
}

/// Why a caller may not make a call. Each service's error type carries it, so every refusal reaches
/// the client through that service's one mapping to a status ([`Refusal::into_status`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The request did not pass the callers layer, which a server always puts first: UNAUTHENTICATED.
    #[error("no credentials")]
    NoCredentials,
    /// The caller has none of these roles: PERMISSION_DENIED.
    #[error("needs one of the roles {0:?}")]
    LacksRole(&'static [Role]),
}

impl Refusal {
    /// The status a client gets, PERMISSION_DENIED in `domain`.
    pub fn into_status(self, domain: &str) -> Status {
        match self {
            Self::NoCredentials => unauthenticated("no credentials"),
            Self::LacksRole(roles) => permission_denied(domain, roles),
        }
    }
}

/// The caller of `request`, if it has one of `roles`.
pub fn authorize<'r, T>(request: &'r Request<T>, roles: &'static [Role]) -> Result<&'r Caller, Refusal> {
    let caller = request.extensions().get::<Caller>().ok_or(Refusal::NoCredentials)?;
    caller.require(roles)?;
    Ok(caller)
}

/// The `authorization` header value that presents `token`: `Bearer <token>`. `None` when the token
/// holds characters no header may (ours never do).
pub fn bearer(token: &str) -> Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
    tonic::metadata::MetadataValue::try_from(format!("Bearer {token}")).ok()
}

/// PERMISSION_DENIED for a caller lacking every one of `roles`, in `domain`. The `required_roles`
/// metadata lists them for programs (`admin,service`); the message, for people.
fn permission_denied(domain: &str, roles: &[Role]) -> Status {
    let names = roles.iter().map(|role| role.as_str()).collect::<Vec<_>>();
    status::with_reason(
        Code::PermissionDenied,
        domain,
        "PERMISSION_DENIED",
        format!("this call needs the {} role", names.join(" or ")),
        [("required_roles", names.join(","))],
    )
}

mod jwks;

mod verified;
use verified::VerifiedTokens;

mod signer;
pub use signer::Signer;

#[cfg(test)]
mod tests;
