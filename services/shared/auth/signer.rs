//! Minting tokens: what `topkart token` and order-service's service credentials sign, and the public
//! JWK of a private key that `topkart jwk` prints for a JWKS file.

use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header, jwk::Jwk};

use super::{Audience, AuthConfigError, Claims, KeyAlgorithm, Role, unix_now};

/// How tokens are signed, and what they say beyond subject and role.
pub struct Signer {
    key: EncodingKey,
    algorithm: Algorithm,
    key_id: Option<String>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl Signer {
    /// Signs HS256 tokens with `secret`.
    pub fn hs256(secret: &[u8]) -> Self {
        Self::new(EncodingKey::from_secret(secret), Algorithm::HS256)
    }

    /// Signs with a PEM private key (RSA for RS256, Ed25519 for EdDSA).
    pub fn from_private_pem(pem: &[u8], algorithm: KeyAlgorithm) -> Result<Self, AuthConfigError> {
        let (key, algorithm) = match algorithm {
            KeyAlgorithm::Rs256 => (EncodingKey::from_rsa_pem(pem), Algorithm::RS256),
            KeyAlgorithm::EdDsa => (EncodingKey::from_ed_pem(pem), Algorithm::EdDSA),
        };
        let key = key.map_err(|err| AuthConfigError(format!("not a usable private key: {err}")))?;
        Ok(Self::new(key, algorithm))
    }

    fn new(key: EncodingKey, algorithm: Algorithm) -> Self {
        Self { key, algorithm, key_id: None, issuer: None, audience: None }
    }

    /// Names the key in each token's header (`kid`), for verifiers holding several.
    pub fn with_key_id(self, key_id: impl Into<String>) -> Self {
        Self { key_id: Some(key_id.into()), ..self }
    }

    /// Puts `iss` in each token.
    pub fn with_issuer(self, issuer: impl Into<String>) -> Self {
        Self { issuer: Some(issuer.into()), ..self }
    }

    /// Puts `aud` in each token.
    pub fn with_audience(self, audience: impl Into<String>) -> Self {
        Self { audience: Some(audience.into()), ..self }
    }

    /// A token for `subject` in `role`, valid for `ttl` from now.
    pub fn token(&self, subject: &str, role: Role, ttl: Duration) -> Result<String, AuthConfigError> {
        let now = unix_now();
        self.sign(&Claims {
            sub: subject.to_owned(),
            role,
            iat: now,
            exp: now.saturating_add(ttl.as_secs()),
            nbf: None,
            iss: self.issuer.clone(),
            aud: self.audience.clone().map(Audience::One),
        })
    }

    /// A token of exactly `claims`, under this signer's algorithm and key id.
    pub fn sign(&self, claims: &Claims) -> Result<String, AuthConfigError> {
        let header = Header { kid: self.key_id.clone(), ..Header::new(self.algorithm) };
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|err| AuthConfigError(format!("cannot sign: {err}")))
    }

    /// The public half of a private key as a JWK (with this signer's key id, `use: sig` and `alg`), for a
    /// JWKS file. An HS256 secret has no public half.
    pub fn public_jwk(&self) -> Result<Jwk, AuthConfigError> {
        if self.algorithm == Algorithm::HS256 {
            return Err(AuthConfigError("an HS256 secret has no public key to publish".into()));
        }
        let mut jwk = Jwk::from_encoding_key(&self.key, self.algorithm)
            .or_else(|err| match ed25519_pkcs8_v1(&self.key) {
                Some(v1) => Jwk::from_encoding_key(&v1, self.algorithm),
                None => Err(err),
            })
            .map_err(|err| AuthConfigError(format!("cannot derive the public key: {err}")))?;
        jwk.common.key_id = self.key_id.clone();
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        Ok(jwk)
    }
}

/// `key` as a PKCS#8 v1 Ed25519 key, if it is a v2 one. jsonwebtoken derives a JWK only from v1 (the
/// 48 bytes `openssl genpkey` writes); v2, which ring and rcgen write, adds the public key after the
/// same seed.
fn ed25519_pkcs8_v1(key: &EncodingKey) -> Option<EncodingKey> {
    // SEQUENCE { INTEGER version, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING seed } }
    const V1_PREFIX: [u8; 16] =
        [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    const ALGORITHM_AND_SEED_HEADER: std::ops::Range<usize> = 5..16;
    let der = key.as_bytes();
    let v2 = key.family() == AlgorithmFamily::Ed
        && der.len() > 48
        && der.get(2..5) == Some(&[0x02, 0x01, 0x01][..])
        && der.get(ALGORITHM_AND_SEED_HEADER) == V1_PREFIX.get(ALGORITHM_AND_SEED_HEADER);
    if !v2 {
        return None;
    }
    let mut v1 = V1_PREFIX.to_vec();
    v1.extend_from_slice(der.get(16..48)?);
    Some(EncodingKey::from_ed_der(&v1))
}
