//! Backups: a copy of the whole store, taken while the broker runs or not, and put
//! back with the broker stopped.
//!
//! A backup is a store of its own (`DEST/store`), its records copied as they are:
//! sealed ones stay sealed, so it opens with the data key only (which it does not
//! contain: keep the key apart). Indexes are copied before the journal, so every
//! message an index names is in the copy; what is stored while the copy runs may or
//! may not be in it, and a message that is in it is whole.

use std::path::Path;

use super::{Store, StoreError};

/// The journal is copied last (see the module).
const LAST: &[u8] = b"journal";

fn io(e: std::io::Error) -> StoreError {
    StoreError::Sled(sled::Error::Io(e))
}

impl Store {
    /// Copies the store into a new store under `dest` (which must not hold one);
    /// returns the number of records copied. Blocking.
    ///
    /// # Errors
    /// [`StoreError::BackupTarget`] when `dest` already holds a store; I/O errors.
    pub fn backup(&self, dest: &Path) -> Result<u64, StoreError> {
        let target = dest.join("store");
        if target.exists() {
            return Err(StoreError::BackupTarget {
                path: target.display().to_string(),
            });
        }
        std::fs::create_dir_all(dest).map_err(io)?;
        self.db.flush()?;
        let copy = sled::Config::new().path(&target).open()?;
        let mut names = self.db.tree_names();
        names.sort_by_key(|n| n.as_ref() == LAST);
        let mut n = 0;
        for name in names {
            let (from, to) = (self.db.open_tree(&name)?, copy.open_tree(&name)?);
            for kv in from.iter() {
                let (k, v) = kv?;
                to.insert(k, v)?;
                n += 1;
            }
        }
        copy.flush()?;
        Ok(n)
    }
}

impl Store {
    /// Every tree with its record count and the bytes of its keys and values: what
    /// the store holds, for benchmarks and diagnostics. A full scan: blocking.
    ///
    /// # Errors
    /// Store I/O errors.
    pub fn tree_sizes(&self) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let mut out = Vec::new();
        for name in self.db.tree_names() {
            let tree = self.db.open_tree(&name)?;
            let (mut records, mut bytes) = (0u64, 0u64);
            for kv in tree.iter() {
                let (k, v) = kv?;
                records += 1;
                bytes += (k.len() + v.len()) as u64;
            }
            out.push((String::from_utf8_lossy(&name).into_owned(), records, bytes));
        }
        Ok(out)
    }
}

/// Puts the backup under `src` in place of the store under `data_dir` (no broker
/// may run on it): the current store, if any, is moved aside to
/// `store.before-restore-UNIXTIME` first. Returns where it went.
///
/// # Errors
/// [`StoreError::BackupTarget`] when `src` holds no store (or one that does not
/// open); [`StoreError::Locked`] while a broker runs; I/O errors.
pub fn restore(src: &Path, data_dir: &Path) -> Result<Option<std::path::PathBuf>, StoreError> {
    let from = src.join("store");
    if !from.join("conf").exists() && !from.join("db").exists() {
        return Err(StoreError::BackupTarget {
            path: from.display().to_string(),
        });
    }
    let target = data_dir.join("store");
    let aside = if target.exists() {
        // Refuses while a broker holds it.
        drop(super::open_db(&sled::Config::new().path(&target), &target)?);
        let aside = data_dir.join(format!("store.before-restore-{}", crate::clock::unix_ms() / 1000));
        std::fs::rename(&target, &aside).map_err(io)?;
        Some(aside)
    } else {
        std::fs::create_dir_all(data_dir).map_err(io)?;
        None
    };
    copy_dir(&from, &target).map_err(io)?;
    Ok(aside)
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dest = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dest)?;
        } else {
            std::fs::copy(e.path(), &dest)?;
        }
    }
    std::fs::File::open(to)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DataKey, StoreOptions};

    #[test]
    fn a_backup_opens_with_the_key_only_and_restores_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let key = DataKey::generate();
        let opts = StoreOptions {
            key: Some(key.clone()),
            ..StoreOptions::default()
        };
        let live = dir.path().join("live");
        let s = Store::open_with(&live, opts.clone()).unwrap();
        s.put_kept(crate::store::Kept::Retained, b"t", b"kept").unwrap();
        let n = s.backup(&dir.path().join("b1")).unwrap();
        assert!(n > 0);
        assert!(
            matches!(s.backup(&dir.path().join("b1")), Err(StoreError::BackupTarget { .. })),
            "never over one"
        );
        s.delete_kept(crate::store::Kept::Retained, b"t").unwrap();
        assert!(
            matches!(restore(&dir.path().join("b1"), &live), Err(StoreError::Locked { .. })),
            "not while open"
        );
        drop(s);
        assert!(
            matches!(Store::open(&dir.path().join("b1")), Err(StoreError::KeyMissing)),
            "sealed"
        );
        let aside = restore(&dir.path().join("b1"), &live).unwrap().expect("moved aside");
        assert!(aside.exists());
        let back = Store::open_with(&live, opts).unwrap();
        assert_eq!(
            back.kept(crate::store::Kept::Retained).unwrap().len(),
            1,
            "as it was at the backup"
        );
        assert!(matches!(
            restore(&dir.path().join("nothing"), &live),
            Err(StoreError::BackupTarget { .. })
        ));
    }
}
