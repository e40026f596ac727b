//! Account administration (add, change password, delete, list), used both by the
//! running broker's control socket and by `natterd user ...` when no broker runs.
//! Blocking (argon2 hashing, store flushes): call from blocking threads.

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub mod guard;
pub mod kept;
pub mod password;
pub mod registrations;
pub mod reset;
pub mod throttle;
pub mod tokens;

use crate::store::{Store, StoreError, TokenRecord, UserRecord};
use natter_shared::names::is_valid_name;
use password::{PasswordError, PasswordHasherConfig};

#[derive(Debug, Error)]
pub enum AccountError {
    #[error("invalid name {0:?}: use 1-32 characters a-z 0-9 _ . - starting with a letter or digit")]
    InvalidName(String),
    #[error("user {user} has no token named {name}")]
    NoSuchToken { user: String, name: String },
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An account as listed (no hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountInfo {
    pub name: String,
    pub admin: bool,
    pub created_at: u64,
}

fn check_name(name: &str) -> Result<(), AccountError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(AccountError::InvalidName(name.to_owned()))
    }
}

use crate::clock::unix_secs as now_secs;

/// Creates an account; an existing one is never overwritten.
///
/// # Errors
/// Invalid name or password, existing user, store errors.
pub fn add(
    store: &Store,
    hasher: &PasswordHasherConfig,
    name: &str,
    password: &[u8],
    admin: bool,
) -> Result<(), AccountError> {
    check_name(name)?;
    let password_hash = hasher.hash(password)?;
    store.create_user(
        name,
        &UserRecord {
            password_hash,
            admin,
            created_at: now_secs(),
        },
    )?;
    Ok(())
}

/// Sets a new password.
///
/// # Errors
/// Unknown user, invalid password, store errors.
pub fn passwd(store: &Store, hasher: &PasswordHasherConfig, name: &str, password: &[u8]) -> Result<(), AccountError> {
    check_name(name)?;
    let password_hash = hasher.hash(password)?;
    store.update_user(name, |r| r.password_hash.clone_from(&password_hash))?;
    Ok(())
}

/// Deletes an account and revokes its device tokens; returns the revoked digests.
///
/// # Errors
/// Unknown user, store errors.
pub fn delete(store: &Store, name: &str) -> Result<Vec<[u8; 32]>, AccountError> {
    check_name(name)?;
    store.delete_user(name)?;
    Ok(store.revoke_tokens(name, None)?)
}

/// A device token as listed (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub user: String,
    pub name: String,
    pub created_at: u64,
}

/// A token just created: the secret (shown once) and what the index needs.
pub struct NewToken {
    pub token: String,
    pub digest: [u8; 32],
    pub record: TokenRecord,
}

/// Creates a device token named `name` for `user`.
///
/// # Errors
/// Invalid names, unknown user, a token of that name already, store errors.
pub fn token_add(store: &Store, user: &str, name: &str) -> Result<NewToken, AccountError> {
    check_name(user)?;
    check_name(name)?;
    let token = tokens::generate();
    let digest = tokens::digest(token.as_bytes());
    let record = TokenRecord {
        user: user.to_owned(),
        name: name.to_owned(),
        created_at: now_secs(),
    };
    store.create_token(&digest, &record)?;
    Ok(NewToken { token, digest, record })
}

/// Tokens of `user`, or of everyone.
///
/// # Errors
/// Store errors.
pub fn token_list(store: &Store, user: Option<&str>) -> Result<Vec<TokenInfo>, AccountError> {
    let mut list: Vec<TokenInfo> = store
        .tokens()?
        .into_iter()
        .filter(|(_, r)| user.is_none_or(|u| u == r.user))
        .map(|(_, r)| TokenInfo {
            user: r.user,
            name: r.name,
            created_at: r.created_at,
        })
        .collect();
    list.sort_by(|a, b| (&a.user, &a.name).cmp(&(&b.user, &b.name)));
    Ok(list)
}

/// Revokes `user`'s token `name`; returns its digest.
///
/// # Errors
/// Unknown token, store errors.
pub fn token_revoke(store: &Store, user: &str, name: &str) -> Result<Vec<[u8; 32]>, AccountError> {
    let removed = store.revoke_tokens(user, Some(name))?;
    if removed.is_empty() {
        return Err(AccountError::NoSuchToken {
            user: user.to_owned(),
            name: name.to_owned(),
        });
    }
    Ok(removed)
}

/// Every account, by name.
///
/// # Errors
/// Store errors.
pub fn list(store: &Store) -> Result<Vec<AccountInfo>, AccountError> {
    Ok(store
        .users()?
        .into_iter()
        .map(|(name, r)| AccountInfo {
            name,
            admin: r.admin,
            created_at: r.created_at,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn account_lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut cfg = Config::default_config().auth;
        cfg.argon2_memory_kib = 64;
        cfg.argon2_iterations = 1;
        let h = PasswordHasherConfig::new(&cfg).unwrap();
        assert!(matches!(
            add(&store, &h, "Bad Name", b"pw", false),
            Err(AccountError::InvalidName(_))
        ));
        add(&store, &h, "alice", b"pw", true).unwrap();
        assert!(matches!(
            add(&store, &h, "alice", b"pw2", false),
            Err(AccountError::Store(StoreError::UserExists(_)))
        ));
        passwd(&store, &h, "alice", b"new").unwrap();
        let rec = store.user("alice").unwrap().unwrap();
        assert!(password::verify(b"new", &rec.password_hash));
        assert_eq!(list(&store).unwrap()[0].name, "alice");
        let t = token_add(&store, "alice", "sensor").unwrap();
        assert!(tokens::looks_like_token(t.token.as_bytes()));
        assert!(matches!(
            token_add(&store, "alice", "sensor"),
            Err(AccountError::Store(StoreError::TokenExists { .. }))
        ));
        assert!(matches!(
            token_add(&store, "nobody", "x"),
            Err(AccountError::Store(StoreError::NoSuchUser(_)))
        ));
        token_add(&store, "alice", "script").unwrap();
        assert_eq!(token_list(&store, Some("alice")).unwrap().len(), 2);
        assert_eq!(token_revoke(&store, "alice", "script").unwrap().len(), 1);
        assert!(matches!(
            token_revoke(&store, "alice", "script"),
            Err(AccountError::NoSuchToken { .. })
        ));
        assert_eq!(
            delete(&store, "alice").unwrap(),
            vec![t.digest],
            "tokens go with the account"
        );
        assert!(list(&store).unwrap().is_empty());
        assert!(token_list(&store, None).unwrap().is_empty());
    }
}
