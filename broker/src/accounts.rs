//! Account administration (add, change password, delete, list), used both by the
//! running broker's control socket and by `natterd user ...` when no broker runs.
//! Blocking (argon2 hashing, store flushes): call from blocking threads.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::auth::password::{PasswordError, PasswordHasherConfig};
use crate::store::{Store, StoreError, UserRecord};
use natter_shared::names::is_valid_name;

#[derive(Debug, Error)]
pub enum AccountError {
    #[error("invalid user name {0:?}: use 1-32 characters a-z 0-9 _ . - starting with a letter or digit")]
    InvalidName(String),
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

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

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

/// Deletes an account.
///
/// # Errors
/// Unknown user, store errors.
pub fn delete(store: &Store, name: &str) -> Result<(), AccountError> {
    check_name(name)?;
    store.delete_user(name)?;
    Ok(())
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
        assert!(crate::auth::password::verify(b"new", &rec.password_hash));
        assert_eq!(list(&store).unwrap()[0].name, "alice");
        delete(&store, "alice").unwrap();
        assert!(list(&store).unwrap().is_empty());
    }
}
