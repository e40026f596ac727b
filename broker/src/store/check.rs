//! Damage the store engine would not report. sled recovers a truncated or garbled
//! file by keeping what reads back whole, silently: a store cut to a third opens with
//! a third of its records. So the store notes, beside its files, the last message it
//! knows is on disk (after a flush; at most once a second), and an open that finds
//! the journal ending before it refuses to start, naming the file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::StoreError;

const FILE: &str = "natter.check";
/// A check is written at most this often.
const EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct Check {
    path: PathBuf,
    /// The last message appended.
    appended: AtomicU64,
    last_written: Mutex<Option<Instant>>,
}

impl Check {
    pub fn new(store_dir: &Path) -> Check {
        Check {
            path: store_dir.join(FILE),
            appended: AtomicU64::new(0),
            last_written: Mutex::new(None),
        }
    }

    /// Refuses a journal that ends before the last message noted on disk.
    pub fn verify(&self, db_file: &Path, journal_last: u64) -> Result<(), StoreError> {
        self.appended.store(journal_last, Ordering::Relaxed);
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return Ok(());
        };
        let noted: u64 = text.trim().parse().map_err(|_| StoreError::Damaged {
            path: self.path.display().to_string(),
            reason: "unreadable (expected a message id)".into(),
        })?;
        if journal_last < noted {
            return Err(StoreError::Damaged {
                path: db_file.display().to_string(),
                reason: format!(
                    "truncated or altered: its journal ends at message {journal_last}, but message {noted} was on disk before; restore a backup (natterd restore)"
                ),
            });
        }
        Ok(())
    }

    pub fn appended(&self, id: u64) {
        self.appended.fetch_max(id, Ordering::Relaxed);
    }

    /// The last message appended now: read before a flush, then given to
    /// [`Check::flushed`] (a message appended during the flush may not be covered).
    pub fn before_flush(&self) -> u64 {
        self.appended.load(Ordering::Relaxed)
    }

    /// After a flush: notes `id` (from [`Check::before_flush`]) as on disk (`force`:
    /// now, else at most once a second). A failure to write it is logged, never an
    /// error.
    pub fn flushed(&self, id: u64, force: bool) {
        {
            let mut last = self.last_written.lock().unwrap_or_else(|p| p.into_inner());
            if !force && last.is_some_and(|t| t.elapsed() < EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let tmp = self.path.with_extension("check.tmp");
        let written = std::fs::write(&tmp, format!("{id}\n")).and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot note the store's last message");
        }
    }
}
