//! Accounts: user name to password hash (a PHC string) and role.

use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

/// One account as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// argon2id PHC string.
    pub password_hash: String,
    pub admin: bool,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
}

fn decode(bytes: &[u8]) -> Result<UserRecord, StoreError> {
    bincode::deserialize(bytes).map_err(|e| StoreError::Corrupt {
        tree: "users",
        reason: e.to_string(),
    })
}

fn encode(rec: &UserRecord) -> Result<Vec<u8>, StoreError> {
    bincode::serialize(rec).map_err(|e| StoreError::Corrupt {
        tree: "users",
        reason: e.to_string(),
    })
}

impl Store {
    /// The account named `name`, if any.
    ///
    /// # Errors
    /// I/O errors and undecodable records.
    pub fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        self.users.get(name)?.map(|v| decode(&v)).transpose()
    }

    /// True when the account exists (without decoding it).
    ///
    /// # Errors
    /// I/O errors.
    pub fn user_exists(&self, name: &str) -> Result<bool, StoreError> {
        let known = self
            .hot
            .users
            .get_or_load(name, || Ok(self.users.contains_key(name)?.then_some(())))?;
        Ok(known.is_some())
    }

    /// Creates an account; never overwrites one. Flushes.
    ///
    /// # Errors
    /// [`StoreError::UserExists`], I/O errors.
    pub fn create_user(&self, name: &str, rec: &UserRecord) -> Result<(), StoreError> {
        let value = encode(rec)?;
        self.users
            .compare_and_swap(name, None as Option<&[u8]>, Some(value))?
            .map_err(|_| StoreError::UserExists(name.to_owned()))?;
        self.flush()
    }

    /// Replaces an existing account's record. Flushes.
    ///
    /// # Errors
    /// [`StoreError::NoSuchUser`], I/O errors.
    pub fn update_user(&self, name: &str, f: impl Fn(&mut UserRecord)) -> Result<(), StoreError> {
        loop {
            let Some(old) = self.users.get(name)? else {
                return Err(StoreError::NoSuchUser(name.to_owned()));
            };
            let mut rec = decode(&old)?;
            f(&mut rec);
            if self
                .users
                .compare_and_swap(name, Some(old), Some(encode(&rec)?))?
                .is_ok()
            {
                return self.flush();
            }
        }
    }

    /// Deletes an account. Flushes.
    ///
    /// # Errors
    /// [`StoreError::NoSuchUser`], I/O errors.
    pub fn delete_user(&self, name: &str) -> Result<(), StoreError> {
        self.hot.users.write(name, || match self.users.remove(name)? {
            Some(_) => Ok(()),
            None => Err(StoreError::NoSuchUser(name.to_owned())),
        })?;
        self.flush()
    }

    /// All accounts, sorted by name.
    ///
    /// # Errors
    /// I/O errors and undecodable records.
    pub fn users(&self) -> Result<Vec<(String, UserRecord)>, StoreError> {
        self.users
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let name = String::from_utf8(k.to_vec()).map_err(|_| StoreError::Corrupt {
                    tree: "users",
                    reason: "user name is not UTF-8".into(),
                })?;
                Ok((name, decode(&v)?))
            })
            .collect()
    }
}

impl Store {
    /// Notes when `user` was last seen online (Unix seconds).
    ///
    /// # Errors
    /// I/O errors.
    pub fn set_last_seen(&self, user: &str, secs: u64) -> Result<(), StoreError> {
        self.last_seen.insert(user, &secs.to_be_bytes())?;
        Ok(())
    }

    /// When `user` was last seen online, if ever noted.
    ///
    /// # Errors
    /// I/O errors; a malformed record is [`StoreError::Corrupt`].
    pub fn last_seen(&self, user: &str) -> Result<Option<u64>, StoreError> {
        self.last_seen
            .get(user)?
            .map(|v| {
                <[u8; 8]>::try_from(v.as_ref())
                    .map(u64::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt {
                        tree: "last_seen",
                        reason: "not 8 bytes".into(),
                    })
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(hash: &str) -> UserRecord {
        UserRecord {
            password_hash: hash.into(),
            admin: false,
            created_at: 1,
        }
    }

    #[test]
    fn create_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.create_user("alice", &rec("h1")).unwrap();
        assert!(matches!(
            s.create_user("alice", &rec("h2")),
            Err(StoreError::UserExists(_))
        ));
        assert_eq!(s.user("alice").unwrap().unwrap().password_hash, "h1");
    }

    #[test]
    fn update_delete_list_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.create_user("bob", &rec("h")).unwrap();
            s.create_user("alice", &rec("h")).unwrap();
            s.update_user("bob", |r| r.admin = true).unwrap();
            assert!(matches!(s.update_user("carol", |_| {}), Err(StoreError::NoSuchUser(_))));
            assert!(s.user_exists("alice").unwrap(), "now remembered in memory");
            s.delete_user("alice").unwrap();
            assert!(!s.user_exists("alice").unwrap(), "forgotten with the account");
            assert!(matches!(s.delete_user("alice"), Err(StoreError::NoSuchUser(_))));
        }
        let s = Store::open(dir.path()).unwrap();
        let all = s.users().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0, "bob");
        assert!(all[0].1.admin);
    }

    #[test]
    fn corrupt_record_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.users.insert("x", &[0xff, 0xff][..]).unwrap();
        assert!(matches!(s.user("x"), Err(StoreError::Corrupt { .. })));
    }
}
