//! Contacts (friendships and requests), blocks, groups and memberships, and password
//! reset tokens.

use serde::{Deserialize, Serialize};

use super::keys;
use super::{Store, StoreError};

/// The relation of a user to another, from the user's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Contact {
    Friend,
    /// The user asked the other to be friends.
    RequestSent,
    /// The other asked the user.
    RequestReceived,
}

/// A group's members with their roles, shared.
pub type Members = std::sync::Arc<[(String, Role)]>;

/// A member's role in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    Member,
    Admin,
    Owner,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub owner: String,
    /// Anyone may join without an invitation.
    pub open: bool,
    pub created_at: u64,
}

/// A one-time password reset token, stored by digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetRecord {
    pub user: String,
    /// Seconds since the Unix epoch.
    pub expires_at: u64,
}

fn corrupt(tree: &'static str, e: impl ToString) -> StoreError {
    StoreError::Corrupt {
        tree,
        reason: e.to_string(),
    }
}

fn enc<T: Serialize>(tree: &'static str, v: &T) -> Result<Vec<u8>, StoreError> {
    bincode::serialize(v).map_err(|e| corrupt(tree, e))
}

fn dec<T: for<'de> Deserialize<'de>>(tree: &'static str, v: &[u8]) -> Result<T, StoreError> {
    bincode::deserialize(v).map_err(|e| corrupt(tree, e))
}

impl Store {
    /// # Errors
    /// I/O errors and undecodable records.
    pub fn contact(&self, user: &str, other: &str) -> Result<Option<Contact>, StoreError> {
        self.contacts
            .get(keys::pair(user, other))?
            .map(|v| dec("contacts", &v))
            .transpose()
    }

    /// Sets (or with `None` removes) the relation of `user` to `other`.
    ///
    /// # Errors
    /// I/O errors.
    pub fn set_contact(&self, user: &str, other: &str, c: Option<Contact>) -> Result<(), StoreError> {
        let k = keys::pair(user, other);
        self.hot.friends.write(user, || {
            match c {
                Some(c) => self.contacts.insert(k, enc("contacts", &c)?)?,
                None => self.contacts.remove(k)?,
            };
            Ok(())
        })
    }

    /// Every relation of `user`.
    ///
    /// # Errors
    /// I/O errors and undecodable records.
    pub fn contacts_of(&self, user: &str) -> Result<Vec<(String, Contact)>, StoreError> {
        self.contacts
            .scan_prefix(keys::prefix(user))
            .map(|kv| {
                let (k, v) = kv?;
                Ok((
                    keys::second(&k).ok_or_else(|| corrupt("contacts", "bad key"))?,
                    dec("contacts", &v)?,
                ))
            })
            .collect()
    }

    /// True when `a` counts `b` as a friend; answered from memory after the first
    /// question about `a` (a DM under the friends policy and every presence
    /// subscription ask it).
    ///
    /// # Errors
    /// I/O errors and undecodable records.
    pub fn are_friends(&self, a: &str, b: &str) -> Result<bool, StoreError> {
        let friends = self.hot.friends.get_or_load(a, || {
            let list: Vec<String> = self
                .contacts_of(a)?
                .into_iter()
                .filter(|(_, c)| *c == Contact::Friend)
                .map(|(name, _)| name)
                .collect();
            Ok(Some(list.into()))
        })?;
        Ok(friends.is_some_and(|l| l.iter().any(|f| f == b)))
    }

    /// True when `user` blocked `other`.
    ///
    /// # Errors
    /// I/O errors.
    pub fn blocked(&self, user: &str, other: &str) -> Result<bool, StoreError> {
        let list = self
            .hot
            .blocks
            .get_or_load(user, || Ok(Some(self.blocked_by(user)?.into())))?;
        Ok(list.is_some_and(|l| l.iter().any(|b| b == other)))
    }

    /// # Errors
    /// I/O errors.
    pub fn set_blocked(&self, user: &str, other: &str, blocked: bool) -> Result<bool, StoreError> {
        let k = keys::pair(user, other);
        self.hot.blocks.write(user, || {
            Ok(if blocked {
                self.blocks.insert(k, &[])?.is_none()
            } else {
                self.blocks.remove(k)?.is_some()
            })
        })
    }

    /// # Errors
    /// I/O errors.
    pub fn blocked_by(&self, user: &str) -> Result<Vec<String>, StoreError> {
        self.blocks
            .scan_prefix(keys::prefix(user))
            .keys()
            .map(|k| Ok(keys::second(&k?).unwrap_or_default()))
            .collect()
    }

    /// # Errors
    /// I/O errors and undecodable records.
    pub fn group(&self, name: &str) -> Result<Option<GroupRecord>, StoreError> {
        self.groups.get(name)?.map(|v| dec("groups", &v)).transpose()
    }

    /// Creates a group owned by `rec.owner`; never overwrites one.
    ///
    /// # Errors
    /// [`StoreError::GroupExists`], I/O errors.
    pub fn create_group(&self, name: &str, rec: &GroupRecord) -> Result<(), StoreError> {
        if !self.groups.insert_new(name, enc("groups", rec)?)? {
            return Err(StoreError::GroupExists(name.to_owned()));
        }
        self.set_member(name, &rec.owner, Some(Role::Owner))
    }

    /// Deletes a group with its members and invitations. Returns the former members.
    ///
    /// # Errors
    /// I/O errors.
    pub fn delete_group(&self, name: &str) -> Result<Vec<String>, StoreError> {
        let members: Vec<String> = self.members(name)?.into_iter().map(|(u, _)| u).collect();
        for m in &members {
            self.set_member(name, m, None)?;
        }
        for k in self.invites.scan_prefix(keys::prefix(name)).keys() {
            self.invites.remove(k?)?;
        }
        self.groups.remove(name)?;
        Ok(members)
    }

    /// # Errors
    /// I/O errors and undecodable records.
    pub fn role(&self, group: &str, user: &str) -> Result<Option<Role>, StoreError> {
        self.members
            .get(keys::pair(group, user))?
            .map(|v| dec("members", &v))
            .transpose()
    }

    /// Sets (or with `None` removes) a membership, keeping the per-user index in step.
    ///
    /// # Errors
    /// I/O errors.
    pub fn set_member(&self, group: &str, user: &str, role: Option<Role>) -> Result<(), StoreError> {
        self.hot.members.write(group, || {
            match role {
                Some(r) => {
                    self.members.insert(keys::pair(group, user), enc("members", &r)?)?;
                    self.memberships.insert(keys::pair(user, group), &[])?;
                    self.invites.remove(keys::pair(group, user))?;
                }
                None => {
                    self.members.remove(keys::pair(group, user))?;
                    self.memberships.remove(keys::pair(user, group))?;
                }
            }
            Ok(())
        })
    }

    /// Members of a group with their roles, from memory after the first question (what
    /// every group message asks).
    ///
    /// # Errors
    /// I/O errors and undecodable records.
    pub fn members_shared(&self, group: &str) -> Result<Members, StoreError> {
        let list = self
            .hot
            .members
            .get_or_load(group, || Ok(Some(self.members(group)?.into())))?;
        Ok(list.unwrap_or_else(|| Members::from(Vec::new())))
    }

    /// Members of a group with their roles.
    ///
    /// # Errors
    /// I/O errors and undecodable records.
    pub fn members(&self, group: &str) -> Result<Vec<(String, Role)>, StoreError> {
        self.members
            .scan_prefix(keys::prefix(group))
            .map(|kv| {
                let (k, v) = kv?;
                Ok((
                    keys::second(&k).ok_or_else(|| corrupt("members", "bad key"))?,
                    dec("members", &v)?,
                ))
            })
            .collect()
    }

    /// Groups `user` belongs to.
    ///
    /// # Errors
    /// I/O errors.
    pub fn groups_of(&self, user: &str) -> Result<Vec<String>, StoreError> {
        self.memberships
            .scan_prefix(keys::prefix(user))
            .keys()
            .map(|k| Ok(keys::second(&k?).unwrap_or_default()))
            .collect()
    }

    /// # Errors
    /// I/O errors.
    pub fn invite(&self, group: &str, user: &str, by: &str) -> Result<(), StoreError> {
        self.invites.insert(keys::pair(group, user), by.as_bytes())?;
        Ok(())
    }

    /// # Errors
    /// I/O errors.
    pub fn invited(&self, group: &str, user: &str) -> Result<bool, StoreError> {
        Ok(self.invites.contains_key(keys::pair(group, user))?)
    }

    /// Stores a reset token digest. Flushes.
    ///
    /// # Errors
    /// I/O errors.
    pub fn put_reset(&self, digest: &[u8; 32], rec: &ResetRecord) -> Result<(), StoreError> {
        self.resets.insert(digest, enc("resets", rec)?)?;
        self.flush()
    }

    /// # Errors
    /// I/O errors and undecodable records.
    pub fn reset(&self, digest: &[u8; 32]) -> Result<Option<ResetRecord>, StoreError> {
        self.resets.get(digest)?.map(|v| dec("resets", &v)).transpose()
    }

    /// Consumes a reset token: true when it existed (so it works once). Flushes.
    ///
    /// # Errors
    /// I/O errors.
    pub fn take_reset(&self, digest: &[u8; 32]) -> Result<bool, StoreError> {
        let existed = self.resets.remove(digest)?.is_some();
        self.flush()?;
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contacts_blocks_groups() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.set_contact("alice", "bob", Some(Contact::RequestSent)).unwrap();
        s.set_contact("bob", "alice", Some(Contact::RequestReceived)).unwrap();
        assert!(!s.are_friends("alice", "bob").unwrap());
        s.set_contact("alice", "bob", Some(Contact::Friend)).unwrap();
        assert!(s.are_friends("alice", "bob").unwrap());
        assert_eq!(s.contacts_of("alice").unwrap(), vec![("bob".into(), Contact::Friend)]);
        // Answered from memory: a write behind the cache's back is not seen...
        s.contacts.remove(keys::pair("alice", "bob")).unwrap();
        assert!(s.are_friends("alice", "bob").unwrap());
        // ...and every write through the store is.
        s.set_contact("alice", "bob", None).unwrap();
        assert!(!s.are_friends("alice", "bob").unwrap());
        s.set_contact("alice", "bob", Some(Contact::Friend)).unwrap();
        assert!(s.are_friends("alice", "bob").unwrap());
        assert!(s.set_blocked("bob", "carol", true).unwrap());
        assert!(!s.set_blocked("bob", "carol", true).unwrap());
        assert!(s.blocked("bob", "carol").unwrap());
        assert!(!s.blocked("carol", "bob").unwrap());
        assert_eq!(s.blocked_by("bob").unwrap(), vec!["carol".to_string()]);
        // The in-memory answer follows every change.
        assert!(s.set_blocked("bob", "carol", false).unwrap());
        assert!(!s.blocked("bob", "carol").unwrap());
        s.set_blocked("bob", "dave", true).unwrap();
        assert!(s.blocked("bob", "dave").unwrap());

        let g = GroupRecord {
            owner: "alice".into(),
            open: false,
            created_at: 0,
        };
        s.create_group("g1", &g).unwrap();
        assert!(matches!(s.create_group("g1", &g), Err(StoreError::GroupExists(_))));
        s.invite("g1", "bob", "alice").unwrap();
        assert!(s.invited("g1", "bob").unwrap());
        s.set_member("g1", "bob", Some(Role::Member)).unwrap();
        assert!(!s.invited("g1", "bob").unwrap(), "joining consumes the invitation");
        assert_eq!(s.role("g1", "alice").unwrap(), Some(Role::Owner));
        assert_eq!(s.groups_of("bob").unwrap(), vec!["g1".to_string()]);
        // The in-memory member list follows every change.
        let names =
            |s: &Store| -> Vec<String> { s.members_shared("g1").unwrap().iter().map(|(u, _)| u.clone()).collect() };
        assert_eq!(names(&s), vec!["alice".to_string(), "bob".to_string()]);
        s.set_member("g1", "bob", None).unwrap();
        assert_eq!(names(&s), vec!["alice".to_string()], "a kicked member is gone at once");
        s.set_member("g1", "bob", Some(Role::Member)).unwrap();
        assert_eq!(names(&s).len(), 2);
        let mut gone = s.delete_group("g1").unwrap();
        gone.sort();
        assert_eq!(gone, vec!["alice".to_string(), "bob".to_string()]);
        assert!(s.groups_of("bob").unwrap().is_empty());
        assert!(s.group("g1").unwrap().is_none());
        assert!(s.members_shared("g1").unwrap().is_empty());
    }

    #[test]
    fn reset_tokens_work_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let d = [7u8; 32];
        s.put_reset(
            &d,
            &ResetRecord {
                user: "bob".into(),
                expires_at: 10,
            },
        )
        .unwrap();
        assert_eq!(s.reset(&d).unwrap().unwrap().user, "bob");
        assert!(s.take_reset(&d).unwrap());
        assert!(!s.take_reset(&d).unwrap());
    }
}
