//! Persistent MQTT sessions, as opaque records the session layer encodes: the store
//! keeps them by key and hands them all back at start.

use super::{Store, StoreError};

/// A session record as stored: (key, record).
pub type SessionEntry = (Vec<u8>, Vec<u8>);

impl Store {
    /// Writes (or replaces) the session record under `key`.
    ///
    /// # Errors
    /// I/O errors.
    pub fn put_session(&self, key: &[u8], record: &[u8]) -> Result<(), StoreError> {
        self.sessions.insert(key, record)?;
        Ok(())
    }

    /// Forgets the session record under `key`, if any.
    ///
    /// # Errors
    /// I/O errors.
    pub fn delete_session(&self, key: &[u8]) -> Result<(), StoreError> {
        self.sessions.remove(key)?;
        Ok(())
    }

    /// Every session record, as (key, record). A scan: call it at start, off the
    /// runtime.
    ///
    /// # Errors
    /// I/O errors.
    pub fn session_records(&self) -> Result<Vec<SessionEntry>, StoreError> {
        self.sessions
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
    fn session_records_are_kept_replaced_and_forgotten_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.put_session(b"a", b"one").unwrap();
            s.put_session(b"b", b"two").unwrap();
            s.put_session(b"a", b"three").unwrap();
            s.delete_session(b"b").unwrap();
            s.flush().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.session_records().unwrap(), vec![(b"a".to_vec(), b"three".to_vec())]);
    }
}
