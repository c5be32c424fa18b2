//! Public keys from a JWKS file (`--jwks-file`), so keys can rotate: a token's `kid` picks its key,
//! and the file is re-read when it changes, without a restart and without a background task — the
//! calls themselves look at the file's modification time and length, at most once a second. A file
//! that cannot be used (half-written, say) leaves the previous keys in place until it can.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse},
};
use tonic::Status;

use super::{AuthConfigError, Claims, Expected, KeyCheck, VerifiedTokens, describe, unauthenticated};

/// How often the calls look at the file.
const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// A JWKS file and the keys last read from it.
pub(super) struct JwksFile {
    path: PathBuf,
    expected: Expected,
    keys: RwLock<Arc<KeySet>>,
    /// When the file was last looked at, in milliseconds since `opened`.
    last_check_ms: AtomicU64,
    opened: Instant,
    recheck_every: Duration,
    seen: Mutex<Seen>,
}

/// What the checks have seen of the file.
struct Seen {
    /// The file's stamp when the current keys were read from it.
    loaded: Stamp,
    /// The stamp last warned about, so a bad file is reported once, not once a second.
    warned: Option<Stamp>,
}

/// What tells one version of the file from the next: its modification time (in nanoseconds, though
/// kernels advance it only every few milliseconds), its length, and its inode, which a file renamed
/// over the old one (the way to replace it safely) always changes; `None` when it cannot be looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp(Option<(Option<SystemTime>, u64, u64)>);

impl Stamp {
    fn of(path: &Path) -> Self {
        Self(std::fs::metadata(path).ok().map(|metadata| (metadata.modified().ok(), metadata.len(), inode(&metadata))))
    }
}

#[cfg(unix)]
fn inode(metadata: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(metadata)
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> u64 {
    0
}

/// The keys of one version of the file, by `kid`, and the tokens they verified.
pub(super) struct KeySet {
    keys: HashMap<String, KeyCheck>,
    verified: VerifiedTokens,
}

impl JwksFile {
    /// Reads the keys of the JWKS file at `path`; a file without a usable key is an error.
    pub(super) fn open(path: PathBuf, expected: Expected) -> Result<Self, AuthConfigError> {
        Self::open_rechecking(path, expected, RECHECK_EVERY)
    }

    /// [`Self::open`], looking at the file every `recheck_every` (tests look at every call).
    pub(super) fn open_rechecking(
        path: PathBuf,
        expected: Expected,
        recheck_every: Duration,
    ) -> Result<Self, AuthConfigError> {
        let loaded = Stamp::of(&path);
        let keys = KeySet::read(&path, &expected)?;
        tracing::info!(path = %path.display(), keys = keys.keys.len(), "read the jwks file");
        Ok(Self {
            path,
            expected,
            keys: RwLock::new(Arc::new(keys)),
            last_check_ms: AtomicU64::new(0),
            opened: Instant::now(),
            recheck_every,
            seen: Mutex::new(Seen { loaded, warned: None }),
        })
    }

    /// The file's path.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The claims of `token` if a key of the file signed it and they hold now.
    pub(super) fn verify(&self, token: &str) -> Result<Claims, Status> {
        self.recheck_if_due();
        let keys = Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner));
        keys.verify(token)
    }

    /// Re-reads the file if it changed, when the last look is `recheck_every` old. Only the caller that
    /// wins the exchange looks; the others go on with the current keys.
    fn recheck_if_due(&self) {
        let now_ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last_ms = self.last_check_ms.load(Ordering::Relaxed);
        let every_ms = u64::try_from(self.recheck_every.as_millis()).unwrap_or(u64::MAX);
        if now_ms.saturating_sub(last_ms) < every_ms {
            return;
        }
        if self.last_check_ms.compare_exchange(last_ms, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            return;
        }
        // A look that outlasts the interval is still running: let it finish alone.
        let Ok(mut seen) = self.seen.try_lock() else {
            return;
        };
        self.recheck(&mut seen);
    }

    fn recheck(&self, seen: &mut Seen) {
        // Stamped before reading: a change during the read is seen by the next look.
        let stamp = Stamp::of(&self.path);
        if stamp == seen.loaded {
            return;
        }
        match KeySet::read(&self.path, &self.expected) {
            Ok(keys) => {
                tracing::info!(path = %self.path.display(), keys = keys.keys.len(), "re-read the changed jwks file");
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
                *seen = Seen { loaded: stamp, warned: None };
            }
            Err(err) if seen.warned != Some(stamp) => {
                tracing::warn!(path = %self.path.display(), error = %err, "the jwks file changed but cannot be used; keeping the previous keys");
                seen.warned = Some(stamp);
            }
            Err(_) => {}
        }
    }
}

impl KeySet {
    /// The keys of the JWKS file at `path`: each an RSA or Ed25519 public key with a `kid`.
    fn read(path: &Path, expected: &Expected) -> Result<Self, AuthConfigError> {
        let text =
            std::fs::read(path).map_err(|err| AuthConfigError(format!("cannot read {}: {err}", path.display())))?;
        Self::parse(&text, expected).map_err(|err| AuthConfigError(format!("{}: {err}", path.display())))
    }

    fn parse(text: &[u8], expected: &Expected) -> Result<Self, String> {
        // Only the position: serde's message may quote the file, and the file holds keys.
        let set: JwkSet = serde_json::from_slice(text).map_err(|err| {
            format!("not a JWKS (`{{\"keys\": [...]}}`): invalid at line {}, column {}", err.line(), err.column())
        })?;
        let mut keys = HashMap::new();
        for (index, jwk) in set.keys.iter().enumerate() {
            let (kid, check) = key_check(jwk, expected).map_err(|why| format!("key {index}: {why}"))?;
            if keys.insert(kid.clone(), check).is_some() {
                return Err(format!("key {index}: kid {kid:?} is used twice"));
            }
        }
        if keys.is_empty() {
            return Err("no keys: a JWKS file must hold at least one RSA or Ed25519 public key".into());
        }
        Ok(Self { keys, verified: VerifiedTokens::default() })
    }

    /// The claims of `token` if the key its `kid` names signed it, under that key's algorithm alone.
    fn verify(&self, token: &str) -> Result<Claims, Status> {
        self.verified.get_or_verify(token, |token| {
            let header = jsonwebtoken::decode_header(token)
                .map_err(|err| unauthenticated(&format!("invalid token: {}", describe(&err))))?;
            let key = header
                .kid
                .as_deref()
                .and_then(|kid| self.keys.get(kid))
                .ok_or_else(|| unauthenticated("invalid token: unknown key"))?;
            key.verify(token)
        })
    }
}

/// The `kid` of `jwk` and the checks of tokens it verifies.
fn key_check(jwk: &Jwk, expected: &Expected) -> Result<(String, KeyCheck), String> {
    let kid = jwk.common.key_id.clone().filter(|kid| !kid.is_empty()).ok_or("it has no kid")?;
    let algorithm = algorithm_of(jwk).map_err(|why| format!("kid {kid:?} {why}"))?;
    if matches!(&jwk.common.public_key_use, Some(usage) if *usage != PublicKeyUse::Signature) {
        return Err(format!("kid {kid:?} is not a signing key (its `use` is not `sig`)"));
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|err| format!("kid {kid:?} is not a usable key: {err}"))?;
    if algorithm == Algorithm::EdDSA && key.try_get_as_bytes().map(<[u8]>::len).ok() != Some(32) {
        return Err(format!("kid {kid:?} is not a usable key: an Ed25519 `x` is 32 bytes"));
    }
    Ok((kid, KeyCheck::new(key, algorithm, expected)))
}

/// The one algorithm tokens verified by `jwk` may use: its `alg`, or what its key type implies. Only
/// public keys are accepted: a symmetric key published in a file would let anyone who reads it sign.
fn algorithm_of(jwk: &Jwk) -> Result<Algorithm, String> {
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => Algorithm::EdDSA,
        AlgorithmParameters::OctetKey(_) => {
            return Err("is a symmetric (`oct`) key; only public keys are accepted".into());
        }
        _ => return Err("is neither an RSA nor an Ed25519 (OKP) key".into()),
    };
    match jwk.common.key_algorithm {
        None => Ok(implied),
        Some(KeyAlgorithm::RS256) if implied == Algorithm::RS256 => Ok(implied),
        Some(KeyAlgorithm::EdDSA) if implied == Algorithm::EdDSA => Ok(implied),
        Some(other) => Err(format!("has alg {other}; accepted are RS256 for RSA keys and EdDSA for Ed25519 keys")),
    }
}
