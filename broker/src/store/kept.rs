//! What the session layer keeps across restarts, as opaque records it encodes:
//! persistent MQTT sessions, their released QoS 2 flows, the plain messages queued
//! for them, and retained messages. The store keeps them by key and
//! hands them all back at start.

use super::{Store, StoreError};

/// A record as stored: (key, record).
pub type KeptEntry = (Vec<u8>, Vec<u8>);

/// Which kind of record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// Persistent sessions, by session key.
    Session,
    /// Retained messages, by topic.
    Retained,
    /// QoS 2 flows released to a session's client (PUBREL sent), by session key and
    /// packet id.
    Outgoing,
    /// Plain (untagged) QoS 1/2 messages queued or in flight for a persistent session,
    /// by session key and record number.
    Queued,
    /// QoS 2 packet ids received from a persistent session's client and not yet
    /// released (PUBREC sent, PUBREL awaited), by session key and packet id.
    Incoming,
}

impl Store {
    fn kept_tree(&self, kind: Kept) -> &super::SealedTree {
        match kind {
            Kept::Session => &self.sessions,
            Kept::Retained => &self.retained,
            Kept::Outgoing => &self.outgoing,
            Kept::Queued => &self.queued,
            Kept::Incoming => &self.incoming,
        }
    }

    /// Writes (or replaces) the record under `key`.
    ///
    /// # Errors
    /// I/O errors.
    pub fn put_kept(&self, kind: Kept, key: &[u8], record: &[u8]) -> Result<(), StoreError> {
        self.kept_tree(kind).insert(key, record)?;
        Ok(())
    }

    /// The record under `key`, if any.
    ///
    /// # Errors
    /// I/O errors.
    pub fn get_kept(&self, kind: Kept, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.kept_tree(kind).get(key)?.map(|v| v.to_vec()))
    }

    /// Forgets the record under `key`, if any.
    ///
    /// # Errors
    /// I/O errors.
    pub fn delete_kept(&self, kind: Kept, key: &[u8]) -> Result<(), StoreError> {
        self.kept_tree(kind).remove(key)
    }

    /// Forgets every record whose key starts with `prefix`.
    ///
    /// # Errors
    /// I/O errors.
    pub fn delete_kept_prefix(&self, kind: Kept, prefix: &[u8]) -> Result<(), StoreError> {
        let tree = self.kept_tree(kind);
        for k in tree.keys_with_prefix(prefix) {
            tree.remove(k?)?;
        }
        Ok(())
    }

    /// Every record of `kind`, as (key, record). A scan: call it at start, off the
    /// runtime.
    ///
    /// # Errors
    /// I/O errors.
    pub fn kept(&self, kind: Kept) -> Result<Vec<KeptEntry>, StoreError> {
        self.kept_tree(kind)
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_kept_replaced_and_forgotten_across_a_reopen_each_kind_apart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.put_kept(Kept::Session, b"a", b"one").unwrap();
            s.put_kept(Kept::Session, b"b", b"two").unwrap();
            s.put_kept(Kept::Session, b"a", b"three").unwrap();
            s.delete_kept(Kept::Session, b"b").unwrap();
            s.put_kept(Kept::Retained, b"a", b"topic a").unwrap();
            s.put_kept(Kept::Outgoing, b"a\x00\x01", b"1").unwrap();
            s.put_kept(Kept::Outgoing, b"a\x00\x02", b"2").unwrap();
            s.put_kept(Kept::Outgoing, b"b\x00\x01", b"3").unwrap();
            s.delete_kept_prefix(Kept::Outgoing, b"a").unwrap();
            s.flush().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.kept(Kept::Session).unwrap(), vec![(b"a".to_vec(), b"three".to_vec())]);
        assert_eq!(
            s.kept(Kept::Retained).unwrap(),
            vec![(b"a".to_vec(), b"topic a".to_vec())]
        );
    }
}
