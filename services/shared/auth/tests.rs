use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic_types::StatusExt;

use super::*;

const SECRET: &str = "a-test-secret-of-at-least-32-bytes";

fn with_bearer(token: &str) -> MetadataMap {
    let mut metadata = MetadataMap::new();
    metadata.insert("authorization", bearer(token).unwrap());
    metadata
}

#[test]
fn a_valid_token_names_its_caller() {
    let token = Signer::hs256(b"secret").token("alice", Role::Customer, Duration::from_secs(60)).unwrap();
    let caller = Authenticator::hs256(b"secret").authenticate(&with_bearer(&token)).unwrap();
    assert_eq!(caller, Caller::Token { subject: "alice".into(), role: Role::Customer });
    assert_eq!(caller.customer(), Some("alice"));
}

#[test]
fn bad_tokens_are_unauthenticated() {
    let authenticator = Authenticator::hs256(b"secret");
    let forged = Signer::hs256(b"other").token("alice", Role::Admin, Duration::from_secs(60)).unwrap();
    let unsigned = {
        let claims = r#"{"sub":"alice","role":"admin","exp":9999999999,"iat":0}"#;
        let encode = |text: &str| {
            use std::fmt::Write;
            // base64url without padding, by hand: the test should not trust the library it checks.
            const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let bytes = text.as_bytes();
            let mut out = String::new();
            for chunk in bytes.chunks(3) {
                let n = chunk.iter().enumerate().fold(0u32, |n, (i, byte)| n | (u32::from(*byte) << (16 - 8 * i)));
                for i in 0..=chunk.len() {
                    let _ = out.write_char(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
                }
            }
            out
        };
        format!("{}.{}.", encode(r#"{"alg":"none","typ":"JWT"}"#), encode(claims))
    };
    let mut no_bearer = MetadataMap::new();
    no_bearer.insert("authorization", MetadataValue::from_static("Basic YWxpY2U6cHc="));
    for metadata in
        [MetadataMap::new(), no_bearer, with_bearer("not-a-jwt"), with_bearer(&forged), with_bearer(&unsigned)]
    {
        let status = authenticator.authenticate(&metadata).unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{metadata:?}");
    }
}

fn args() -> AuthArgs {
    AuthArgs {
        jwt_secret: None,
        jwt_public_key_file: None,
        jwt_algorithm: KeyAlgorithm::Rs256,
        jwks_file: None,
        jwt_issuer: None,
        jwt_audience: None,
        insecure_no_auth: false,
    }
}

#[test]
fn services_refuse_to_start_without_a_key_unless_told_to_be_insecure() {
    assert!(args().authenticator().is_err());
    let insecure = AuthArgs { insecure_no_auth: true, ..args() };
    assert!(matches!(insecure.authenticator(), Ok(Authenticator::Insecure)));
    let keyed = AuthArgs { jwt_secret: Some("s".repeat(MIN_SECRET_BYTES)), insecure_no_auth: true, ..args() };
    assert!(matches!(keyed.authenticator(), Ok(Authenticator::Verify(_))), "a key wins over the insecure flag");
    let placeholder = "replace-me-with-32-random-bytes-in-hex-0000000000000000";
    for weak in ["", "short", &"s".repeat(MIN_SECRET_BYTES - 1), placeholder] {
        let weak = AuthArgs { jwt_secret: Some(weak.into()), ..args() };
        assert!(weak.authenticator().is_err(), "a weak secret is refused");
    }
}

#[test]
fn eddsa_tokens_verify_against_the_public_key_only() {
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let public_key_file = std::env::temp_dir().join(format!("topkart-ed25519-{}.pem", uuid::Uuid::new_v4()));
    std::fs::write(&public_key_file, key_pair.public_key_pem()).unwrap();
    let args =
        AuthArgs { jwt_public_key_file: Some(public_key_file.clone()), jwt_algorithm: KeyAlgorithm::EdDsa, ..args() };
    let authenticator = args.authenticator().unwrap();
    std::fs::remove_file(public_key_file).unwrap();

    let signer = Signer::from_private_pem(key_pair.serialize_pem().as_bytes(), KeyAlgorithm::EdDsa).unwrap();
    let token = signer.token("admin", Role::Admin, Duration::from_secs(60)).unwrap();
    let caller = authenticator.authenticate(&with_bearer(&token)).unwrap();
    assert_eq!(caller, Caller::Token { subject: "admin".into(), role: Role::Admin });
    // An HS256 token signed with the public key's text (algorithm confusion) is refused.
    let public_pem = key_pair.public_key_pem();
    let confused = Signer::hs256(public_pem.as_bytes()).token("admin", Role::Admin, Duration::from_secs(60)).unwrap();
    assert_eq!(authenticator.authenticate(&with_bearer(&confused)).unwrap_err().code(), Code::Unauthenticated);
}

#[test]
fn the_insecure_mode_trusts_everyone_and_says_so_in_the_type() {
    assert_eq!(Authenticator::Insecure.authenticate(&MetadataMap::new()).unwrap(), Caller::Trusted);
    assert!(Caller::Trusted.is_any(&[Role::Admin]));
    assert_eq!(Caller::Trusted.customer(), None);
}

/// Claims of an admin token valid for a minute from now, to adjust.
fn claims() -> Claims {
    let now = unix_now();
    Claims { sub: "admin".into(), role: Role::Admin, iat: now, exp: now + 60, nbf: None, iss: None, aud: None }
}

fn hs256(issuer: Option<&str>, audience: Option<&str>) -> Authenticator {
    let args = AuthArgs {
        jwt_secret: Some(SECRET.into()),
        jwt_issuer: issuer.map(Into::into),
        jwt_audience: audience.map(Into::into),
        ..args()
    };
    args.authenticator().unwrap()
}

/// What `authenticator` says of a token of `claims` signed by `signer`: `Ok` or the refusal's message.
fn verdict(authenticator: &Authenticator, signer: &Signer, claims: &Claims) -> Result<(), String> {
    let token = signer.sign(claims).unwrap();
    match authenticator.authenticate(&with_bearer(&token)) {
        Ok(_) => Ok(()),
        Err(status) => {
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            let info = status.get_error_details().error_info().cloned().expect("an ErrorInfo");
            assert_eq!((info.reason.as_str(), info.domain.as_str()), ("UNAUTHENTICATED", DOMAIN));
            Err(status.message().to_owned())
        }
    }
}

#[test]
fn a_token_is_refused_before_its_nbf_and_accepted_within_the_leeway() {
    let (authenticator, signer) = (hs256(None, None), Signer::hs256(SECRET.as_bytes()));
    let hour_ahead = Claims { nbf: Some(unix_now() + 3600), ..claims() };
    assert_eq!(verdict(&authenticator, &signer, &hour_ahead), Err("invalid token: not yet valid".into()));
    let within_leeway = Claims { nbf: Some(unix_now() + LEEWAY_SECS - 2), ..claims() };
    assert_eq!(verdict(&authenticator, &signer, &within_leeway), Ok(()));
    let past = Claims { nbf: Some(unix_now() - 10), ..claims() };
    assert_eq!(verdict(&authenticator, &signer, &past), Ok(()));
}

#[test]
fn a_token_issued_in_the_future_is_refused_beyond_the_leeway() {
    let (authenticator, signer) = (hs256(None, None), Signer::hs256(SECRET.as_bytes()));
    let day_ahead = Claims { iat: unix_now() + 86_400, exp: unix_now() + 90_000, ..claims() };
    assert_eq!(verdict(&authenticator, &signer, &day_ahead), Err("invalid token: issued in the future".into()));
    let within_leeway = Claims { iat: unix_now() + LEEWAY_SECS - 2, ..claims() };
    assert_eq!(verdict(&authenticator, &signer, &within_leeway), Ok(()));
}

#[test]
fn a_configured_issuer_and_audience_are_required_and_must_match() {
    let authenticator = hs256(Some("https://id.topkart.com"), Some("deals"));
    let signer = Signer::hs256(SECRET.as_bytes());
    let iss = |name: &str| Some(name.to_owned());
    let aud = |name: &str| Some(Audience::One(name.into()));
    let cases = [
        (Claims { iss: iss("https://id.topkart.com"), aud: aud("deals"), ..claims() }, Ok(())),
        (
            Claims {
                iss: iss("https://id.topkart.com"),
                aud: Some(Audience::Many(vec!["orders".into(), "deals".into()])),
                ..claims()
            },
            Ok(()),
        ),
        (Claims { iss: iss("https://evil.example"), aud: aud("deals"), ..claims() }, Err("wrong issuer")),
        (Claims { iss: None, aud: aud("deals"), ..claims() }, Err("missing issuer")),
        (Claims { iss: iss("https://id.topkart.com"), aud: aud("orders"), ..claims() }, Err("wrong audience")),
        (Claims { iss: iss("https://id.topkart.com"), aud: None, ..claims() }, Err("missing audience")),
    ];
    for (claims, expected) in cases {
        let expected = expected.map_err(|why| format!("invalid token: {why}"));
        assert_eq!(verdict(&authenticator, &signer, &claims), expected, "{claims:?}");
    }
    // What `topkart token --iss --aud` mints passes.
    let minted = signer.with_issuer("https://id.topkart.com").with_audience("deals");
    let token = minted.token("admin", Role::Admin, Duration::from_secs(60)).unwrap();
    assert!(authenticator.authenticate(&with_bearer(&token)).is_ok());
}

#[test]
fn without_a_configured_audience_any_aud_is_accepted() {
    let (authenticator, signer) = (hs256(None, None), Signer::hs256(SECRET.as_bytes()));
    for aud in [Audience::One("someone-else".into()), Audience::Many(vec!["a".into(), "b".into()])] {
        assert_eq!(verdict(&authenticator, &signer, &Claims { aud: Some(aud), ..claims() }), Ok(()));
    }
    let empty = AuthArgs { jwt_secret: Some(SECRET.into()), jwt_audience: Some(String::new()), ..args() };
    assert!(empty.authenticator().is_err(), "an empty audience is a mistake, not a wildcard");
}

#[test]
fn permission_denied_lists_the_required_roles_for_programs() {
    let status = Refusal::LacksRole(&[Role::Admin, Role::Service]).into_status("deals.topkart.com");
    assert_eq!(status.code(), Code::PermissionDenied);
    let info = status.get_error_details().error_info().cloned().expect("an ErrorInfo");
    assert_eq!(info.metadata.get("required_roles").map(String::as_str), Some("admin,service"));
    assert_eq!(status.message(), "this call needs the admin or service role");
}

/// A JWKS file in the temporary directory, removed on drop.
struct JwksPath(std::path::PathBuf);

impl JwksPath {
    fn new() -> Self {
        Self(std::env::temp_dir().join(format!("topkart-jwks-{}.json", uuid::Uuid::new_v4())))
    }

    /// Replaces the file's contents at once, as an operator's `mv` would.
    fn write(&self, keys: &[serde_json::Value]) {
        self.write_text(&serde_json::json!({ "keys": keys }).to_string());
    }

    fn write_text(&self, text: &str) {
        let staged = self.0.with_extension(format!("{}.tmp", uuid::Uuid::new_v4()));
        std::fs::write(&staged, text).unwrap();
        std::fs::rename(staged, &self.0).unwrap();
    }

    fn authenticator(&self) -> Result<Authenticator, AuthConfigError> {
        AuthArgs { jwks_file: Some(self.0.clone()), ..args() }.authenticator()
    }
}

impl Drop for JwksPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A fresh Ed25519 key signing under `kid`, and its public JWK.
fn ed25519(kid: &str) -> (Signer, serde_json::Value) {
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let signer = Signer::from_private_pem(key_pair.serialize_pem().as_bytes(), KeyAlgorithm::EdDsa).unwrap();
    let signer = signer.with_key_id(kid);
    // rcgen writes PKCS#8 v2, which `public_jwk` must read too.
    let jwk = serde_json::to_value(signer.public_jwk().unwrap()).unwrap();
    (signer, jwk)
}

/// An RSA public key (rcgen cannot make RSA keys with ring, and only the public half is needed here).
fn rsa_public_jwk(kid: &str) -> serde_json::Value {
    serde_json::json!({
        "kty": "RSA", "kid": kid, "use": "sig",
        "n": "4P-Ij4RlcTKeSAyMoMxJT-grnVFWohdFXZkRJ3P9P2XanNYwcqoGwZzqSzCmrBp8gW5SBvS2cyQ8hPoyNLXDiGlWo9wlQj_Jgkc63rtk\
              vGGzUhPbvXfDeN6gvRu0W2NC-jeZBb2_dDAEPVK9UydSUeaHS2E4RkvyU6JbAFiINm0mRTo8dBdyrj0EwATW0TEsPvu4h3tuRNmf5HBj\
              Fj_iRjwT0wi9cMIM9uNp_jX_ZyWaDxgAXhvU00etvbbQANvr5yhPgZpWVZA4Sx-8RiCj7vvUnfzyBGq6kqMDxI7Rpsj5wCZj-6TBC7om\
              RXFjXGg-98wSqrjvxVTWvrSj1iavrQ",
        "e": "AQAB",
    })
}

fn refusal(authenticator: &Authenticator, token: &str) -> String {
    let status = authenticator.authenticate(&with_bearer(token)).unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    status.message().to_owned()
}

#[test]
fn a_jwks_key_is_picked_by_the_tokens_kid() {
    let ((a, a_jwk), (b, b_jwk)) = (ed25519("a"), ed25519("b"));
    let file = JwksPath::new();
    file.write(&[a_jwk, rsa_public_jwk("r"), b_jwk]);
    let authenticator = file.authenticator().unwrap();
    for signer in [&a, &b] {
        assert_eq!(verdict(&authenticator, signer, &claims()), Ok(()));
    }
    let token = |signer: Signer| signer.sign(&claims()).unwrap();
    let (stranger, _) = ed25519("x");
    assert_eq!(refusal(&authenticator, &token(stranger.with_key_id("b"))), "invalid token: bad signature");
    let (unknown, _) = ed25519("c");
    assert_eq!(refusal(&authenticator, &token(unknown)), "invalid token: unknown key");
    let no_kid = Signer::hs256(SECRET.as_bytes());
    assert_eq!(refusal(&authenticator, &token(no_kid)), "invalid token: unknown key");
}

#[test]
fn a_jwks_key_accepts_only_its_own_algorithm() {
    let (a, a_jwk) = ed25519("a");
    let file = JwksPath::new();
    file.write(&[a_jwk.clone(), rsa_public_jwk("r")]);
    let authenticator = file.authenticator().unwrap();
    // HS256 keyed with the published key (algorithm confusion), under an Ed25519 and an RSA kid.
    let published = a_jwk["x"].as_str().unwrap().to_owned();
    for kid in ["a", "r"] {
        let confused = Signer::hs256(published.as_bytes()).with_key_id(kid).sign(&claims()).unwrap();
        assert_eq!(refusal(&authenticator, &confused), "invalid token: algorithm not accepted");
    }
    let eddsa_under_rsa_kid = a.with_key_id("r").sign(&claims()).unwrap();
    assert_eq!(refusal(&authenticator, &eddsa_under_rsa_kid), "invalid token: algorithm not accepted");
}

#[test]
fn a_jwks_file_without_usable_public_keys_stops_the_start() {
    let (_, ed_jwk) = ed25519("a");
    let mut no_kid = ed_jwk.clone();
    no_kid.as_object_mut().unwrap().remove("kid");
    let mut wrong_alg = rsa_public_jwk("r");
    wrong_alg["alg"] = "RS512".into();
    let mut encryption = rsa_public_jwk("r");
    encryption["use"] = "enc".into();
    let oct = serde_json::json!({ "kty": "oct", "kid": "s", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ" });
    let cases: [(&[serde_json::Value], &str); 6] = [
        (&[], "no keys"),
        (&[ed_jwk.clone(), oct], "symmetric"),
        (&[no_kid], "no kid"),
        (&[wrong_alg], "RS512"),
        (&[encryption], "not a signing key"),
        (&[ed_jwk.clone(), ed_jwk], "used twice"),
    ];
    for (keys, why) in cases {
        let file = JwksPath::new();
        file.write(keys);
        let err = file.authenticator().unwrap_err().to_string();
        assert!(err.contains(why), "{err:?} should say {why:?}");
    }
    let file = JwksPath::new();
    file.write_text(r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"#);
    let err = file.authenticator().unwrap_err().to_string();
    assert!(err.contains("not a JWKS") && !err.contains("c2VjcmV0"), "{err:?} must not quote the file");
    assert!(JwksPath::new().authenticator().is_err(), "a missing file stops the start");
}

#[test]
fn a_changed_jwks_file_is_reread_and_a_broken_one_keeps_the_keys() {
    let ((a, a_jwk), (b, b_jwk)) = (ed25519("a"), ed25519("b"));
    let file = JwksPath::new();
    file.write(&[a_jwk]);
    let jwks = jwks::JwksFile::open_rechecking(file.0.clone(), Expected::default(), Duration::ZERO).unwrap();
    let authenticator = Authenticator::Verify(Arc::new(Verifier(Keys::Jwks(jwks))));
    assert_eq!(refusal(&authenticator, &b.sign(&claims()).unwrap()), "invalid token: unknown key");

    file.write(std::slice::from_ref(&b_jwk));
    assert_eq!(verdict(&authenticator, &b, &claims()), Ok(()));
    assert_eq!(refusal(&authenticator, &a.sign(&claims()).unwrap()), "invalid token: unknown key");

    for broken in [r#"{"keys": [{"kty": "OKP", "#, r#"{"keys": []}"#] {
        file.write_text(broken);
        assert_eq!(verdict(&authenticator, &b, &claims()), Ok(()), "the previous keys stay after {broken:?}");
    }
    std::fs::remove_file(&file.0).unwrap();
    assert_eq!(verdict(&authenticator, &b, &claims()), Ok(()), "the previous keys stay while the file is gone");
}

/// A 2048-bit RSA key made with `openssl genpkey` for these tests alone (ring cannot make RSA keys).
const RSA_TEST_KEY: &[u8] =
    include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rsa-test-only.key.pem"));

#[test]
fn rs256_tokens_verify_against_the_pem_public_key_and_the_jwk_derived_from_the_private_key() {
    let signer = Signer::from_private_pem(RSA_TEST_KEY, KeyAlgorithm::Rs256).unwrap().with_key_id("r");
    let public_pem =
        std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rsa-test-only.pub.pem"));
    let by_pem = AuthArgs { jwt_public_key_file: Some(public_pem), jwt_algorithm: KeyAlgorithm::Rs256, ..args() }
        .authenticator()
        .unwrap();
    assert_eq!(verdict(&by_pem, &signer, &claims()), Ok(()));

    let file = JwksPath::new();
    file.write(&[serde_json::to_value(signer.public_jwk().unwrap()).unwrap()]);
    let by_jwks = file.authenticator().unwrap();
    assert_eq!(verdict(&by_jwks, &signer, &claims()), Ok(()));
    let (eddsa, _) = ed25519("r");
    assert_eq!(refusal(&by_jwks, &eddsa.sign(&claims()).unwrap()), "invalid token: algorithm not accepted");
}

#[test]
fn the_signer_of_the_shared_secret_mints_tokens_its_own_settings_accept() {
    let settings = AuthArgs {
        jwt_secret: Some(SECRET.into()),
        jwt_issuer: Some("https://id.topkart.com".into()),
        jwt_audience: Some("deals".into()),
        ..args()
    };
    let authenticator = settings.authenticator().unwrap();
    let token =
        settings.secret_signer().unwrap().token("order-service", Role::Service, Duration::from_secs(60)).unwrap();
    let caller = authenticator.authenticate(&with_bearer(&token)).unwrap();
    assert_eq!(caller, Caller::Token { subject: "order-service".into(), role: Role::Service });
    let bare = Signer::hs256(SECRET.as_bytes()).token("order-service", Role::Service, Duration::from_secs(60)).unwrap();
    assert_eq!(authenticator.authenticate(&with_bearer(&bare)).unwrap_err().code(), Code::Unauthenticated);
    assert!(args().secret_signer().is_none(), "no secret, no signer");
}
