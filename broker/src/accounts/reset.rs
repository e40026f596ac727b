//! One-time password reset tokens: an admin issues one (`natterd user reset NAME`),
//! the user logs in with it as their password (admitted only to set a new password)
//! and calls `api/account.reset` with it. Stored as SHA-256 digests; expiring; used
//! once.

use rand_core::RngCore;

use super::tokens::digest;
use crate::clock::unix_secs as now_secs;
use crate::store::{ResetRecord, Store, StoreError};

pub const RESET_PREFIX: &str = "nr_";

pub fn looks_like_reset(password: &[u8]) -> bool {
    super::tokens::is_secret(password, RESET_PREFIX)
}

/// Issues a token for `user`, valid `ttl_secs`. Returns it and its expiry.
///
/// # Errors
/// Store errors.
pub fn issue(store: &Store, user: &str, ttl_secs: u32) -> Result<(String, u64), StoreError> {
    let mut bytes = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut bytes);
    let token = format!(
        "{RESET_PREFIX}{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let expires_at = now_secs() + u64::from(ttl_secs);
    store.put_reset(
        &digest(token.as_bytes()),
        &ResetRecord {
            user: user.to_owned(),
            expires_at,
        },
    )?;
    Ok((token, expires_at))
}

/// True when `token` is a live reset token of `user`.
///
/// # Errors
/// Store errors.
pub fn valid(store: &Store, user: &str, token: &[u8]) -> Result<bool, StoreError> {
    if !looks_like_reset(token) {
        return Ok(false);
    }
    Ok(store
        .reset(&digest(token))?
        .is_some_and(|r| r.user == user && r.expires_at > now_secs()))
}

/// Uses the token up: true when it was a live token of `user` (it is gone after).
///
/// # Errors
/// Store errors.
pub fn consume(store: &Store, user: &str, token: &[u8]) -> Result<bool, StoreError> {
    if !valid(store, user, token)? {
        return Ok(false);
    }
    store.take_reset(&digest(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_per_user_expire_and_work_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let (t, _) = issue(&s, "bob", 60).unwrap();
        assert!(looks_like_reset(t.as_bytes()));
        assert!(!valid(&s, "alice", t.as_bytes()).unwrap());
        assert!(valid(&s, "bob", t.as_bytes()).unwrap());
        assert!(consume(&s, "bob", t.as_bytes()).unwrap());
        assert!(!consume(&s, "bob", t.as_bytes()).unwrap(), "once");
        let (expired, _) = issue(&s, "bob", 0).unwrap();
        assert!(!valid(&s, "bob", expired.as_bytes()).unwrap());
    }

    #[test]
    fn a_token_lives_its_ttl_from_now() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let before = now_secs();
        assert!(before > 1_700_000_000, "the clock is the real one");
        let (t, expires_at) = issue(&s, "bob", 600).unwrap();
        assert!((before + 600..=now_secs() + 600).contains(&expires_at), "{expires_at}");
        // A record that ran out a minute ago is refused though it is still stored.
        let stale = ResetRecord {
            user: "bob".into(),
            expires_at: before - 60,
        };
        s.put_reset(&digest(t.as_bytes()), &stale).unwrap();
        assert!(!valid(&s, "bob", t.as_bytes()).unwrap());
    }

    #[test]
    fn reset_tokens_have_their_own_shape() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let (t, _) = issue(&s, "bob", 60).unwrap();
        assert!(t.starts_with(RESET_PREFIX) && t.len() == RESET_PREFIX.len() + 64);
        let hex = &t[RESET_PREFIX.len()..];
        for not_reset in [
            format!("nt_{hex}"),         // a device token's prefix
            format!("{t}0"),             // one character too many
            t[..t.len() - 1].to_owned(), // one too few
            format!("{RESET_PREFIX}{}", hex.to_uppercase()),
            format!("{RESET_PREFIX}{}g", &hex[1..]),
        ] {
            assert!(!looks_like_reset(not_reset.as_bytes()), "{not_reset}");
            assert!(!valid(&s, "bob", not_reset.as_bytes()).unwrap());
        }
    }
}
