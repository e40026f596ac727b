//! Device tokens: random, high-entropy secrets for devices and scripts, checked with
//! one SHA-256 and a map lookup instead of argon2 (a token has 256 bits of entropy, so
//! a fast hash is enough). Stored as digests; revocable.
//!
//! Format: `nt_` followed by 64 lowercase hex characters. A client presents it as its
//! MQTT password, with its user name as the user name.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rand_core::RngCore;
use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError, TokenRecord};

/// Prefix that marks a password as a device token.
pub const TOKEN_PREFIX: &str = "nt_";

/// True when `password` has the shape of a device token.
pub fn looks_like_token(password: &[u8]) -> bool {
    is_secret(password, TOKEN_PREFIX)
}

/// `prefix` then 64 lowercase hex digits: the shape of the secrets the broker
/// issues (device tokens, reset tokens).
pub(super) fn is_secret(password: &[u8], prefix: &str) -> bool {
    password.len() == prefix.len() + 64
        && password.starts_with(prefix.as_bytes())
        && password[prefix.len()..]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

pub fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// A fresh random token.
pub fn generate() -> String {
    format!("{TOKEN_PREFIX}{}", random_hex(32))
}

/// `n` random bytes from the OS, in lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand_core::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The broker's in-memory index of token digests, loaded from the store at start and
/// kept in step by the control socket. Cheap to clone.
#[derive(Clone, Default)]
pub struct TokenIndex {
    map: Arc<RwLock<HashMap<[u8; 32], TokenRecord>>>,
}

impl TokenIndex {
    /// Loads every token digest. Blocking.
    ///
    /// # Errors
    /// Store errors.
    pub fn load(store: &Store) -> Result<TokenIndex, StoreError> {
        let index = TokenIndex::default();
        index
            .map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .extend(store.tokens()?);
        Ok(index)
    }

    /// The owner and name of `token`, if it is valid.
    pub fn check(&self, token: &[u8]) -> Option<TokenRecord> {
        if !looks_like_token(token) {
            return None;
        }
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&digest(token))
            .cloned()
    }

    pub fn insert(&self, digest: [u8; 32], rec: TokenRecord) {
        self.map.write().unwrap_or_else(|p| p.into_inner()).insert(digest, rec);
    }

    pub fn remove(&self, digests: &[[u8; 32]]) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        for d in digests {
            map.remove(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_expected_shape_and_are_unique() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert!(looks_like_token(a.as_bytes()));
        assert!(!looks_like_token(b"nt_short"));
        assert!(!looks_like_token(a.to_uppercase().as_bytes()));
        assert!(!looks_like_token(
            b"a password that is not a token at all, but is long enough to....."
        ));
    }

    #[test]
    fn the_index_loads_every_stored_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let bob = crate::store::UserRecord {
            password_hash: String::new(),
            admin: false,
            created_at: 0,
        };
        store.create_user("bob", &bob).unwrap();
        let secrets: Vec<String> = ["a", "b"]
            .iter()
            .map(|name| {
                let t = generate();
                let rec = TokenRecord {
                    user: "bob".into(),
                    name: (*name).into(),
                    created_at: 0,
                };
                store.create_token(&digest(t.as_bytes()), &rec).unwrap();
                t
            })
            .collect();
        let index = TokenIndex::load(&store).unwrap();
        for (t, name) in secrets.iter().zip(["a", "b"]) {
            assert_eq!(index.check(t.as_bytes()).unwrap().name, name);
        }
        assert!(index.check(generate().as_bytes()).is_none());
    }

    #[test]
    fn index_checks_and_revokes() {
        let idx = TokenIndex::default();
        let t = generate();
        let rec = TokenRecord {
            user: "alice".into(),
            name: "sensor".into(),
            created_at: 0,
        };
        idx.insert(digest(t.as_bytes()), rec.clone());
        assert_eq!(idx.check(t.as_bytes()), Some(rec));
        assert_eq!(idx.check(generate().as_bytes()), None);
        idx.remove(&[digest(t.as_bytes())]);
        assert_eq!(idx.check(t.as_bytes()), None);
    }
}
