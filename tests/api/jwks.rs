//! Keys from a JWKS file rotate without a restart: deal-service verifies tokens against the keys of
//! `--jwks-file`, picks up a file renamed over the old one within a few seconds, and keeps its keys
//! while the file is broken.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use sqlx::PgPool;
use tonic::Code;
use topkart::{
    proto::deal as dealpb,
    shared::{
        auth::{AuthArgs, KeyAlgorithm, Role, Signer},
        server::ServerSettings,
    },
};

use crate::helpers::*;

/// How long a changed file may take to be seen (the services look once a second).
const SEEN_WITHIN: Duration = Duration::from_secs(10);

/// A directory of its own under the temporary one, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("topkart-jwks-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).unwrap();
        Self(dir)
    }

    fn jwks(&self) -> PathBuf {
        self.0.join("jwks.json")
    }

    /// Replaces the JWKS file at once: written beside it, then renamed over it.
    fn write_jwks(&self, text: &str) {
        let staged = self.0.join(format!("{}.tmp", uuid::Uuid::new_v4()));
        std::fs::write(&staged, text).unwrap();
        std::fs::rename(staged, self.jwks()).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh Ed25519 key: an admin's token signed under `kid`, and the key's public JWK.
fn key(kid: &str) -> (String, serde_json::Value) {
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let signer = Signer::from_private_pem(key_pair.serialize_pem().as_bytes(), KeyAlgorithm::EdDsa).unwrap();
    let signer = signer.with_key_id(kid);
    let token = signer.token("admin", Role::Admin, Duration::from_secs(3600)).unwrap();
    (token, serde_json::to_value(signer.public_jwk().unwrap()).unwrap())
}

fn jwks(keys: &[&serde_json::Value]) -> String {
    serde_json::json!({ "keys": keys }).to_string()
}

/// What deal-service answers `token`'s ListDeals with.
async fn code_for(deals_channel: &tonic::transport::Channel, token: &str) -> Code {
    let mut deals = deals_with(deals_channel, Bearer::of(token));
    deals.list_deals(dealpb::ListDealsRequest::default()).await.map_or_else(|status| status.code(), |_| Code::Ok)
}

/// Waits until `token` gets `code`, trying every 200 ms for [`SEEN_WITHIN`].
async fn until_code(deals_channel: &tonic::transport::Channel, token: &str, code: Code) {
    let deadline = Instant::now() + SEEN_WITHIN;
    loop {
        let got = code_for(deals_channel, token).await;
        if got == code {
            return;
        }
        assert!(Instant::now() < deadline, "still {got:?} after {SEEN_WITHIN:?}, expected {code:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[sqlx::test(migrator = "topkart::shared::db::MIGRATOR")]
async fn keys_rotate_through_the_jwks_file_without_a_restart(pool: PgPool) {
    let ((a_token, a_jwk), (b_token, b_jwk)) = (key("a"), key("b"));
    let dir = TempDir::new();
    dir.write_jwks(&jwks(&[&a_jwk]));
    let auth = AuthArgs {
        jwt_secret: None,
        jwt_public_key_file: None,
        jwt_algorithm: KeyAlgorithm::Rs256,
        jwks_file: Some(dir.jwks()),
        jwt_issuer: None,
        jwt_audience: None,
        insecure_no_auth: false,
    };
    let (addr, _stop) = spawn_deal_service_with(pool, ServerSettings::plaintext(auth.authenticator().unwrap())).await;
    let deals = channel(addr).await;
    assert_eq!(code_for(&deals, &a_token).await, Code::Ok);
    assert_eq!(code_for(&deals, &b_token).await, Code::Unauthenticated);

    // B is published beside A, then A is withdrawn.
    dir.write_jwks(&jwks(&[&a_jwk, &b_jwk]));
    until_code(&deals, &b_token, Code::Ok).await;
    assert_eq!(code_for(&deals, &a_token).await, Code::Ok);
    dir.write_jwks(&jwks(&[&b_jwk]));
    until_code(&deals, &a_token, Code::Unauthenticated).await;
    assert_eq!(code_for(&deals, &b_token).await, Code::Ok);

    // A half-written file leaves B in place across several looks, and the next good file is read.
    let whole = jwks(&[&a_jwk]);
    dir.write_jwks(&whole[..whole.len() / 2]);
    let watched_until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < watched_until {
        assert_eq!(code_for(&deals, &b_token).await, Code::Ok, "the previous keys stay");
        assert_eq!(code_for(&deals, &a_token).await, Code::Unauthenticated);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    dir.write_jwks(&whole);
    until_code(&deals, &a_token, Code::Ok).await;
    assert_eq!(code_for(&deals, &b_token).await, Code::Unauthenticated);
}
