//! Durable state in sled, behind a small interface that knows nothing of MQTT.
//!
//! It holds accounts, device and reset tokens, contacts, groups, and the message
//! journal with its mailbox and history indexes, persistent sessions and retained messages (as
//! records the session layer encodes), so callers never touch sled directly. Every method is synchronous: callers
//! on the async runtime run writes and scans through [`tokio::task::spawn_blocking`];
//! the questions asked per message (account exists, blocked, friends, group members)
//! are answered from [`hot`]'s read-through caches and may stay inline.

mod hot;
mod journal;
mod kept;
mod keys;
mod messages;
mod migrate;
mod route;
mod social;
mod tokens;
mod users;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use std::path::Path;

use thiserror::Error;

pub use kept::{Kept, KeptEntry};
pub use messages::{MailboxEntry, MailboxMeta, MailboxPage, NewMessage, Replayed, Retention, StoredMessage};
pub use route::{dm_conversation, group_conversation, Dest, Route, Suffix};
pub use social::{Contact, GroupRecord, Members, ResetRecord, Role};
pub use tokens::TokenRecord;
pub use users::UserRecord;

/// Schema version written at creation; a later version migrates from it on open.
/// 3: journal chunks written in format 3, DMs and group messages by their shape
/// (see [`journal`]); format 2 chunks are still read, so 2 -> 3 rewrites nothing.
/// 2: messages in a chunked journal with lazily written id indexes (1: one record
/// per message and per mailbox entry; migrated on open, see [`migrate`]).
const SCHEMA_VERSION: u32 = 3;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("the store at {path} is in use by another process (a running natterd?)")]
    Locked { path: String },
    #[error("store I/O error: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record in {tree}: {reason}")]
    Corrupt { tree: &'static str, reason: String },
    #[error("store schema version {found} is newer than this natterd supports ({supported})")]
    UnsupportedSchema { found: u32, supported: u32 },
    #[error("user {0} already exists")]
    UserExists(String),
    #[error("no such user: {0}")]
    NoSuchUser(String),
    #[error("group {0} already exists")]
    GroupExists(String),
    #[error("user {user} already has a token named {name}")]
    TokenExists { user: String, name: String },
    /// A store call on the blocking pool did not finish (the task panicked or the
    /// runtime is shutting down).
    #[error("store task did not finish: {0}")]
    Task(String),
}

/// Runs store calls on the blocking pool (sled may wait for its disk), for callers on
/// the async runtime.
///
/// # Errors
/// The call's own, or [`StoreError::Task`] when the task did not finish.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StoreError::Task(e.to_string())))
}

/// How the store is opened (from `[store]` in the configuration).
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// [`Store::commit`] flushes to disk (else it leaves that to the background flush).
    pub sync: bool,
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
    /// sled's background flush interval, in milliseconds.
    pub flush_every_ms: u64,
}

impl Default for StoreOptions {
    /// As the embedded configuration: sync, 64 MiB of cache, a flush every 500 ms.
    fn default() -> StoreOptions {
        StoreOptions {
            sync: true,
            cache_bytes: 64 << 20,
            flush_every_ms: 500,
        }
    }
}

/// A cheap-to-clone handle on the database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    /// Whether [`Store::commit`] flushes.
    sync: bool,
    /// Set by [`Store::fail_writes`]: message appends fail.
    failing: Arc<std::sync::atomic::AtomicBool>,
    users: sled::Tree,
    tokens: sled::Tree,
    token_names: sled::Tree,
    messages: sled::Tree,
    mailbox: sled::Tree,
    mailbox_meta: sled::Tree,
    history: sled::Tree,
    cursors: sled::Tree,
    contacts: sled::Tree,
    blocks: sled::Tree,
    groups: sled::Tree,
    members: sled::Tree,
    memberships: sled::Tree,
    invites: sled::Tree,
    resets: sled::Tree,
    /// Persistent MQTT sessions (see [`kept`]).
    sessions: sled::Tree,
    /// Retained messages (see [`kept`]).
    retained: sled::Tree,
    /// Released QoS 2 flows of persistent sessions (see [`kept`]).
    outgoing: sled::Tree,
    /// The next message id (one increasing sequence for every message).
    next_id: Arc<AtomicU64>,
    /// The first id not reserved on disk (see [`messages::ID_BLOCK`]).
    ids_reserved: Arc<AtomicU64>,
    meta: sled::Tree,
    /// Index entries not yet written, and mailbox counters (see [`messages`]).
    index: Arc<std::sync::Mutex<messages::Index>>,
    /// Held for a whole [`Store::index`] write (one at a time; appends and reads only
    /// take `index`, briefly).
    indexing: Arc<std::sync::Mutex<()>>,
    /// Answers every DM asks, kept in memory.
    hot: Arc<Hot>,
}

/// The in-memory answers of [`hot`].
#[derive(Default)]
struct Hot {
    /// Accounts known to exist (misses are read from the store each time).
    users: hot::Cache<()>,
    /// Whom each user blocked.
    blocks: hot::Cache<Arc<[String]>>,
    /// Each group's members.
    members: hot::Cache<Members>,
    /// Each user's friends.
    friends: hot::Cache<Arc<[String]>>,
}

impl Store {
    /// Opens (creating if needed) the store under `dir`, with the default options.
    ///
    /// # Errors
    /// As [`Store::open_with`].
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(dir, StoreOptions::default())
    }

    /// Opens (creating if needed) the store under `dir`.
    ///
    /// # Errors
    /// [`StoreError::Locked`] when another process holds it, corruption and I/O errors.
    pub fn open_with(dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        let path = dir.join("store");
        // A handle being dropped (a broker or command that just ended) releases the lock
        // from a background thread: retry briefly before reporting it as held.
        let mut attempts = 0;
        let db = loop {
            // HighThroughput: measured ~1.5x faster inserts than the default LowSpace.
            let config = sled::Config::new()
                .path(&path)
                .mode(sled::Mode::HighThroughput)
                .cache_capacity(options.cache_bytes)
                .flush_every_ms(Some(options.flush_every_ms));
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(ref io)) if is_lock_error(io) => {
                    attempts += 1;
                    if attempts >= 10 {
                        return Err(StoreError::Locked {
                            path: path.display().to_string(),
                        });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(other) => return Err(StoreError::Sled(other)),
            }
        };
        let meta = db.open_tree("meta")?;
        let found = match meta.get("schema_version")? {
            None => None,
            Some(v) => {
                Some(
                    <[u8; 4]>::try_from(v.as_ref())
                        .map(u32::from_be_bytes)
                        .map_err(|_| StoreError::Corrupt {
                            tree: "meta",
                            reason: "schema_version is not 4 bytes".into(),
                        })?,
                )
            }
        };
        if let Some(found) = found.filter(|&f| f > SCHEMA_VERSION) {
            return Err(StoreError::UnsupportedSchema {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        let messages = db.open_tree("journal")?;
        let last_id = messages::last_message_id(&messages)?;
        let reserved = match meta.get(messages::IDS_RESERVED)? {
            None => 0,
            Some(v) => <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt {
                    tree: "meta",
                    reason: "ids_reserved is not 8 bytes".into(),
                })?,
        };
        let (first_id, reserve_to) = messages::first_id(last_id, reserved);
        meta.insert(messages::IDS_RESERVED, &reserve_to.to_be_bytes())?;
        let store = Store {
            users: db.open_tree("users")?,
            tokens: db.open_tree("tokens")?,
            token_names: db.open_tree("token_names")?,
            messages,
            mailbox: db.open_tree("mailbox_index")?,
            mailbox_meta: db.open_tree("mailbox_meta")?,
            history: db.open_tree("history_index")?,
            cursors: db.open_tree("cursors")?,
            contacts: db.open_tree("contacts")?,
            blocks: db.open_tree("blocks")?,
            groups: db.open_tree("groups")?,
            members: db.open_tree("members")?,
            memberships: db.open_tree("memberships")?,
            invites: db.open_tree("invites")?,
            resets: db.open_tree("resets")?,
            sessions: db.open_tree("sessions")?,
            retained: db.open_tree("retained")?,
            outgoing: db.open_tree("outgoing")?,
            meta,
            next_id: Arc::new(AtomicU64::new(first_id)),
            ids_reserved: Arc::new(AtomicU64::new(reserve_to)),
            index: Arc::default(),
            indexing: Arc::default(),
            hot: Arc::default(),
            sync: options.sync,
            failing: Arc::default(),
            db,
        };
        if found == Some(1) {
            migrate::v1_to_v2(&store)?;
        }
        if found != Some(SCHEMA_VERSION) {
            store.meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
        }
        // The reservation is on disk before any id of it is handed out.
        store.db.flush()?;
        let recovered = store.recover_index()?;
        if recovered > 0 {
            tracing::info!(messages = recovered, "journal read back into the index");
        }
        Ok(store)
    }

    /// Writes everything to disk. Blocking.
    ///
    /// # Errors
    /// I/O errors.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Makes what was written so far durable when the store is opened `sync`: one
    /// flush (an fsync) covers every write before it, from any thread. Blocking.
    ///
    /// # Errors
    /// I/O errors (then nothing written since the last successful flush is known to
    /// be on disk).
    pub fn commit(&self) -> Result<(), StoreError> {
        if self.sync {
            self.db.flush()?;
        }
        Ok(())
    }

    /// Whether [`Store::commit`] flushes.
    pub fn is_sync(&self) -> bool {
        self.sync
    }

    /// Makes message appends fail with an I/O error until called with
    /// `false`, as a full or failing disk would: how tests check that a write failure
    /// reaches the publisher and that the broker recovers. Reads keep working.
    pub fn fail_writes(&self, failing: bool) {
        self.failing.store(failing, std::sync::atomic::Ordering::SeqCst);
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Sled(sled::Error::Io(std::io::Error::other(
                "write failure (injected)",
            ))));
        }
        Ok(())
    }
}

fn is_lock_error(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.raw_os_error() == Some(11) || e.to_string().contains("lock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_reports_lock() {
        let dir = tempfile::tempdir().unwrap();
        let _a = Store::open(dir.path()).unwrap();
        match Store::open(dir.path()) {
            Err(StoreError::Locked { .. }) => {}
            Err(other) => panic!("expected Locked, got {other}"),
            Ok(_) => panic!("second open succeeded"),
        }
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.db.open_tree("meta")
                .unwrap()
                .insert("schema_version", &99u32.to_be_bytes())
                .unwrap();
            s.flush().unwrap();
        }
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::UnsupportedSchema { found: 99, .. })
        ));
    }
}
