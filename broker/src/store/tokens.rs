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
        if self
            .tokens()?
            .iter()
            .any(|(_, t)| t.user == rec.user && t.name == rec.name)
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
        let mut removed = Vec::new();
        for (digest, rec) in self.tokens()? {
            if rec.user == user && name.is_none_or(|n| n == rec.name) {
                self.tokens.remove(digest)?;
                removed.push(digest);
            }
        }
        self.flush()?;
        Ok(removed)
    }
}
