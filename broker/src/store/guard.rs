//! The login guard's state (the failed-login throttle and registrations per
//! address), kept so that a restart does not hand a guesser fresh attempts. Records
//! are opaque here: the accounts layer encodes them; keys start with a kind byte.

use super::{Store, StoreError};

/// A change to the guard's state: a record written, or removed (`None`).
pub type GuardChange = (Vec<u8>, Option<Vec<u8>>);
/// A record of the guard's state: key, value.
pub type GuardRecord = (Vec<u8>, Vec<u8>);

impl Store {
    /// Applies changes in one batch (not flushed: what a crash loses is at most the
    /// last moments of throttling, never a message). Blocking.
    ///
    /// # Errors
    /// Store errors.
    pub fn write_guard(&self, changes: &[GuardChange]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (key, value) in changes {
            match value {
                Some(v) => batch.insert(key.as_slice(), v.as_slice()),
                None => batch.remove(key.as_slice()),
            }
        }
        self.guard.apply_batch(batch)?;
        Ok(())
    }

    /// Every record of the guard's state (read once, at start). Blocking.
    ///
    /// # Errors
    /// Store errors.
    pub fn guard_records(&self) -> Result<Vec<GuardRecord>, StoreError> {
        self.guard
            .iter()
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(StoreError::from))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_records_are_written_removed_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .write_guard(&[
                (b"ua".to_vec(), Some(b"1".to_vec())),
                (b"ub".to_vec(), Some(b"2".to_vec())),
            ])
            .unwrap();
        store.write_guard(&[(b"ua".to_vec(), None)]).unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.guard_records().unwrap(), vec![(b"ub".to_vec(), b"2".to_vec())]);
    }
}
