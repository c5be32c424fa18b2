//! Tokens already verified, so a caller presenting the same token again (every call of a session,
//! and order-service's own token on each of its batches) is not verified again: an HS256 check
//! rebuilt the HMAC key schedule on every call (11 % of order-service's instructions under load),
//! and an RS256 one costs far more. A token is remembered until its `exp` by the key set that
//! verified it, so keys read afresh from a JWKS file start with nothing remembered; only tokens
//! that passed every check are, so what others send cannot fill it.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

use super::{Claims, unix_now};

/// How many tokens are remembered: each costs its text and claims (some 300 bytes), so about 3 MiB
/// when full. Past that, expired ones are dropped, then all of them if that freed too little.
const CAPACITY: usize = 10_000;

/// Verified tokens and their claims.
#[derive(Default)]
pub(super) struct VerifiedTokens {
    tokens: Mutex<HashMap<Box<str>, Claims>>,
}

impl VerifiedTokens {
    /// The claims of `token`: remembered ones while it has not expired, or what `verify` makes of it,
    /// remembered when it accepts it.
    pub(super) fn get_or_verify<E>(
        &self,
        token: &str,
        verify: impl FnOnce(&str) -> Result<Claims, E>,
    ) -> Result<Claims, E> {
        self.get_or_verify_at(unix_now(), token, verify)
    }

    /// [`Self::get_or_verify`] at `now`, in seconds since the Unix epoch.
    fn get_or_verify_at<E>(
        &self,
        now: u64,
        token: &str,
        verify: impl FnOnce(&str) -> Result<Claims, E>,
    ) -> Result<Claims, E> {
        if let Some(claims) = self.lock().get(token).filter(|claims| now < claims.exp) {
            return Ok(claims.clone());
        }
        let claims = verify(token)?;
        // Past its exp (within the leeway the check allows) it is not worth remembering.
        if now < claims.exp {
            self.remember(token, &claims, now);
        }
        Ok(claims)
    }

    fn remember(&self, token: &str, claims: &Claims, now: u64) {
        let mut tokens = self.lock();
        if tokens.len() >= CAPACITY {
            tokens.retain(|_, claims| now < claims.exp);
            if tokens.len() >= CAPACITY * 3 / 4 {
                tokens.clear();
            }
        }
        tokens.insert(token.into(), claims.clone());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Claims>> {
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::shared::auth::Role;

    fn claims(exp: u64) -> Claims {
        Claims { sub: "alice".into(), role: Role::Customer, exp, iat: 0, nbf: None, iss: None, aud: None }
    }

    /// `verified` at `now`, counting the verifications it makes in `checks`.
    fn call(
        verified: &VerifiedTokens,
        now: u64,
        token: &str,
        answer: Result<Claims, ()>,
        checks: &Cell<u32>,
    ) -> Result<Claims, ()> {
        verified.get_or_verify_at(now, token, |_| {
            checks.set(checks.get() + 1);
            answer
        })
    }

    #[test]
    fn an_accepted_token_is_verified_once_until_its_exp() {
        let (verified, checks) = (VerifiedTokens::default(), Cell::new(0));
        assert_eq!(call(&verified, 100, "t", Ok(claims(200)), &checks), Ok(claims(200)));
        assert_eq!(call(&verified, 199, "t", Err(()), &checks), Ok(claims(200)), "remembered");
        assert_eq!(checks.get(), 1);
        assert_eq!(call(&verified, 200, "t", Err(()), &checks), Err(()), "at its exp it is checked again");
        assert_eq!(checks.get(), 2);
    }

    #[test]
    fn a_refused_token_is_checked_every_time_and_another_token_is_its_own() {
        let (verified, checks) = (VerifiedTokens::default(), Cell::new(0));
        assert_eq!(call(&verified, 100, "bad", Err(()), &checks), Err(()));
        assert_eq!(call(&verified, 100, "bad", Err(()), &checks), Err(()));
        call(&verified, 100, "good", Ok(claims(200)), &checks).unwrap();
        assert_eq!(call(&verified, 100, "good2", Err(()), &checks), Err(()), "a token is matched whole");
        assert_eq!(checks.get(), 4);
        assert_eq!(verified.lock().len(), 1);
    }

    #[test]
    fn a_full_memory_drops_expired_tokens_first_and_never_grows_past_its_capacity() {
        let (verified, checks) = (VerifiedTokens::default(), Cell::new(0));
        for n in 0..CAPACITY {
            let exp = if n % 2 == 0 { 150 } else { 300 };
            call(&verified, 100, &format!("t{n}"), Ok(claims(exp)), &checks).unwrap();
        }
        assert_eq!(verified.lock().len(), CAPACITY);
        call(&verified, 200, "late", Ok(claims(300)), &checks).unwrap();
        assert_eq!(verified.lock().len(), CAPACITY / 2 + 1, "the expired half went");
        assert_eq!(call(&verified, 200, "t1", Err(()), &checks), Ok(claims(300)), "the rest stayed");

        for n in 0..CAPACITY {
            call(&verified, 200, &format!("u{n}"), Ok(claims(300)), &checks).unwrap();
            assert!(verified.lock().len() <= CAPACITY);
        }
    }
}
