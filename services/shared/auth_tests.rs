use tonic::metadata::MetadataValue;

use super::*;

fn with_bearer(token: &str) -> MetadataMap {
    let mut metadata = MetadataMap::new();
    metadata.insert("authorization", MetadataValue::try_from(format!("Bearer {token}")).unwrap());
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
    for weak in ["", "short", &"s".repeat(MIN_SECRET_BYTES - 1)] {
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
