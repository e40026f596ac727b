//! Device tokens: SHA-256 digest of the token to its owner and name. The token itself
//! is never stored.

use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

/// One token as stored (keyed by the digest of the token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub user: String,
    /// Owner-chosen label, unique per user ("sensor-1", "backup-script").
    pub name: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
}

fn decode(bytes: &[u8]) -> Result<TokenRecord, StoreError> {
    bincode::deserialize(bytes).map_err(|e| StoreError::Corrupt {
        tree: "tokens",
        reason: e.to_string(),
    })
}

impl Store {
    /// Every token: (digest, record).
    ///
    /// # Errors
    /// I/O errors and undecodable records.
    pub fn tokens(&self) -> Result<Vec<([u8; 32], TokenRecord)>, StoreError> {
        self.tokens
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let digest = <[u8; 32]>::try_from(k.as_ref()).map_err(|_| StoreError::Corrupt {
                    tree: "tokens",
                    reason: "digest is not 32 bytes".into(),
                })?;
                Ok((digest, decode(&v)?))
            })
            .collect()
    }

    /// Stores a new token. Flushes.
    ///
    /// # Errors
    /// [`StoreError::TokenExists`] when the user already has a token of that name,
    /// [`StoreError::NoSuchUser`], I/O errors.
    pub fn create_token(&self, digest: &[u8; 32], rec: &TokenRecord) -> Result<(), StoreError> {
        if self.user(&rec.user)?.is_none() {
            return Err(StoreError::NoSuchUser(rec.user.clone()));
        }
        // The (user, name) index makes names unique per user without a scan.
        let name_key = name_key(&rec.user, &rec.name);
        if self
            .token_names
            .compare_and_swap(&name_key, None as Option<&[u8]>, Some(&digest[..]))?
            .is_err()
        {
            return Err(StoreError::TokenExists {
                user: rec.user.clone(),
                name: rec.name.clone(),
            });
        }
        let value = bincode::serialize(rec).map_err(|e| StoreError::Corrupt {
            tree: "tokens",
            reason: e.to_string(),
        })?;
        self.tokens.insert(digest, value)?;
        self.flush()
    }

    /// Removes the user's token named `name` (or all the user's tokens when `None`).
    /// Returns the digests removed. Flushes.
    ///
    /// # Errors
    /// I/O errors.
    pub fn revoke_tokens(&self, user: &str, name: Option<&str>) -> Result<Vec<[u8; 32]>, StoreError> {
        let keys: Vec<sled::IVec> = match name {
            Some(n) => vec![name_key(user, n).into()],
            None => self
                .token_names
                .scan_prefix(name_key(user, ""))
                .keys()
                .collect::<Result<_, _>>()?,
        };
        let mut removed = Vec::new();
        for key in keys {
            if let Some(digest) = self.token_names.remove(&key)? {
                self.tokens.remove(&digest)?;
                if let Ok(d) = <[u8; 32]>::try_from(digest.as_ref()) {
                    removed.push(d);
                }
            }
        }
        if !removed.is_empty() {
            self.flush()?;
        }
        Ok(removed)
    }
}

/// `user NUL name`: user names cannot contain NUL, so prefixes never collide.
fn name_key(user: &str, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(user.len() + 1 + name.len());
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k
}
