//! Durable state in sled, behind a small interface that knows nothing of MQTT.
//!
//! It holds accounts, device and reset tokens, contacts, groups, and the message
//! journal with its mailbox and history indexes, persistent sessions and retained messages (as
//! records the session layer encodes), so callers never touch sled directly. Every method is synchronous: callers
//! on the async runtime run writes and scans through [`tokio::task::spawn_blocking`];
//! the questions asked per message (account exists, blocked, friends, group members)
//! are answered from [`hot`]'s read-through caches and may stay inline.

mod backup;
mod check;
mod files;
mod guard;
mod hot;
mod journal;
mod kept;
mod keys;
mod messages;
mod migrate;
mod route;
mod sealed;
mod social;
mod tokens;
mod users;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use std::path::Path;

use thiserror::Error;

pub use backup::restore;
pub use files::{Audience, FileRecord};
pub use guard::{GuardChange, GuardRecord};
pub use kept::{Kept, KeptEntry};
pub use messages::{MailboxEntry, MailboxMeta, MailboxPage, NewMessage, Replayed, Retention, StoredMessage};
pub use route::{dm_conversation, group_conversation, Dest, Route, Suffix};
pub use sealed::{BadKey, DataKey};
use sealed::{SealedTree, Sealer};
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
    #[error("the store file {path} is damaged: {reason}")]
    Damaged { path: String, reason: String },
    #[error("cannot open the store {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("{path} is not a place for this: it already holds a store, or holds no backup")]
    BackupTarget { path: String },
    #[error("a record in {tree} cannot be decrypted: the data key is not this store's, or the file was altered")]
    Undecryptable { tree: &'static str },
    #[error("the store is encrypted and no data key was given (key file or NATTER_DATA_KEY)")]
    KeyMissing,
    #[error("the data key does not open this store (another store's key, or a mistyped one)")]
    WrongKey,
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

/// The trees whose values are sealed (see [`sealed`]).
const SEALED_TREES: [&str; 11] = [
    "journal",
    "contacts",
    "groups",
    "members",
    "sessions",
    "retained",
    "outgoing",
    "queued",
    "incoming",
    "files",
    "file_chunks",
];
/// The meta record that tells whether a data key is this store's.
const KEY_CHECK: &str = "key_check";
const KEY_CHECK_TEXT: &[u8] = b"natter data key";

/// How the store is opened (from `[store]` in the configuration).
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The data key user content is sealed under (see [`sealed`]); `None` only for
    /// tests and tools: a store sealed once refuses to open without it, and a plain
    /// one opened with a key is sealed then.
    pub key: Option<DataKey>,
    /// Keys records may still be sealed under (an interrupted `rekey`).
    pub old_keys: Vec<DataKey>,
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
            key: None,
            old_keys: Vec::new(),
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
    /// Set by [`Store::stall_writes`]: message appends wait (and how many do).
    #[cfg(test)]
    stall: Arc<(std::sync::atomic::AtomicBool, AtomicU64)>,
    users: sled::Tree,
    tokens: sled::Tree,
    token_names: sled::Tree,
    messages: SealedTree,
    mailbox: sled::Tree,
    mailbox_meta: sled::Tree,
    history: sled::Tree,
    cursors: sled::Tree,
    /// When each user was last seen online (Unix seconds), for presence after a
    /// restart.
    last_seen: sled::Tree,
    /// The login guard's state (see [`guard`]).
    guard: sled::Tree,
    contacts: SealedTree,
    blocks: sled::Tree,
    groups: SealedTree,
    members: SealedTree,
    memberships: sled::Tree,
    invites: sled::Tree,
    resets: sled::Tree,
    /// Persistent MQTT sessions (see [`kept`]).
    sessions: SealedTree,
    /// Retained messages (see [`kept`]).
    retained: SealedTree,
    /// Released QoS 2 flows of persistent sessions (see [`kept`]).
    outgoing: SealedTree,
    /// Plain QoS 1/2 messages queued or in flight for persistent sessions (see [`kept`]).
    queued: SealedTree,
    /// QoS 2 packet ids received from persistent sessions' clients, PUBREL awaited.
    incoming: SealedTree,
    /// File records and their chunks (see [`files`]).
    files: SealedTree,
    file_chunks: SealedTree,
    /// The next message id (one increasing sequence for every message).
    next_id: Arc<AtomicU64>,
    /// The first id not reserved on disk (see [`messages::ID_BLOCK`]).
    ids_reserved: Arc<AtomicU64>,
    meta: sled::Tree,
    /// Index entries not yet written, and mailbox counters (see [`messages`]).
    index: Arc<std::sync::Mutex<messages::Index>>,
    /// Held for a whole [`Store::index`] write (one at a time; appends and reads only
    /// take `index`, briefly). It holds how many messages had been journaled at the
    /// last write's trim, which paces the trimming (see `messages::index`).
    indexing: Arc<std::sync::Mutex<u64>>,
    /// Messages journaled since the store opened.
    journaled: Arc<AtomicU64>,
    /// Answers every DM asks, kept in memory.
    hot: Arc<Hot>,
    /// The last message known on disk, noted beside the files (see [`check`]).
    check: Arc<check::Check>,
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
        // HighThroughput: measured ~1.5x faster inserts than the default LowSpace.
        let config = sled::Config::new()
            .path(&path)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(options.cache_bytes)
            .flush_every_ms(Some(options.flush_every_ms));
        let db = open_db(&config, &path)?;
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
        let sealer = options.key.as_ref().map(|k| Sealer::with_old(k, &options.old_keys));
        let seal_existing = match (&sealer, meta.get(KEY_CHECK)?) {
            (None, Some(_)) => return Err(StoreError::KeyMissing),
            (Some(s), Some(check)) => {
                s.open("meta", KEY_CHECK.as_bytes(), &check)
                    .map_err(|_| StoreError::WrongKey)?;
                false
            }
            (Some(_), None) => true,
            (None, None) => false,
        };
        let tree = |name: &'static str| -> Result<SealedTree, StoreError> {
            Ok(SealedTree::new(db.open_tree(name)?, name, sealer.clone()))
        };
        let messages = tree("journal")?;
        if seal_existing {
            // A new store, or one written before encryption: what is there is sealed
            // now, before anything reads it.
            if let Some(s) = &sealer {
                let mut sealed = 0;
                for name in SEALED_TREES {
                    // Opened without a sealer, the tree reads its values as plain.
                    sealed += SealedTree::new(db.open_tree(name)?, name, None).reseal(s)?;
                }
                if sealed > 0 {
                    tracing::info!(
                        records = sealed,
                        "store encrypted at rest (it was written in the clear)"
                    );
                }
                meta.insert(KEY_CHECK, s.seal("meta", KEY_CHECK.as_bytes(), KEY_CHECK_TEXT)?)?;
            }
        }
        let last_id = messages::last_message_id(&messages)?;
        let check = check::Check::new(&path);
        check.verify(&path.join("db"), last_id)?;
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
            last_seen: db.open_tree("last_seen")?,
            guard: db.open_tree("guard")?,
            contacts: tree("contacts")?,
            blocks: db.open_tree("blocks")?,
            groups: tree("groups")?,
            members: tree("members")?,
            memberships: db.open_tree("memberships")?,
            invites: db.open_tree("invites")?,
            resets: db.open_tree("resets")?,
            sessions: tree("sessions")?,
            retained: tree("retained")?,
            outgoing: tree("outgoing")?,
            queued: tree("queued")?,
            incoming: tree("incoming")?,
            files: tree("files")?,
            file_chunks: tree("file_chunks")?,
            meta,
            next_id: Arc::new(AtomicU64::new(first_id)),
            ids_reserved: Arc::new(AtomicU64::new(reserve_to)),
            index: Arc::default(),
            indexing: Arc::default(),
            journaled: Arc::default(),
            hot: Arc::default(),
            check: Arc::new(check),
            sync: options.sync,
            failing: Arc::default(),
            #[cfg(test)]
            stall: Arc::default(),
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
        let id = self.check.before_flush();
        self.db.flush()?;
        self.check.flushed(id, true);
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
            let id = self.check.before_flush();
            self.db.flush()?;
            self.check.flushed(id, false);
        }
        Ok(())
    }

    /// Seals every record again under `key` (those sealed under the store's key or
    /// its old ones open), and flushes: `natterd rekey`, with the broker stopped. The
    /// handle still seals under the old key afterwards: drop it and open the store
    /// with `key`. Returns how many records were sealed again. Blocking.
    ///
    /// # Errors
    /// [`StoreError::KeyMissing`] on a store opened without a key; I/O errors and
    /// records that do not open (then nothing is lost: opening with the old keys and
    /// `key` among them finishes the job).
    pub fn rekey(&self, key: &DataKey) -> Result<usize, StoreError> {
        if self.messages.sealer().is_none() {
            return Err(StoreError::KeyMissing);
        }
        let to = Sealer::new(key);
        let mut n = 0;
        for tree in [
            &self.messages,
            &self.contacts,
            &self.groups,
            &self.members,
            &self.sessions,
            &self.retained,
            &self.outgoing,
            &self.queued,
            &self.incoming,
            &self.files,
            &self.file_chunks,
        ] {
            n += tree.reseal(&to)?;
        }
        self.meta
            .insert(KEY_CHECK, to.seal("meta", KEY_CHECK.as_bytes(), KEY_CHECK_TEXT)?)?;
        self.db.flush()?;
        Ok(n)
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

    /// Makes message appends wait until called with `false`, as a slow disk would.
    #[cfg(test)]
    pub(crate) fn stall_writes(&self, stalled: bool) {
        self.stall.0.store(stalled, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many appends wait for [`Store::stall_writes`].
    #[cfg(test)]
    pub(crate) fn stalled_writes(&self) -> u64 {
        self.stall.1.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        #[cfg(test)]
        {
            self.stall.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            while self.stall.0.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            self.stall.1.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Sled(sled::Error::Io(std::io::Error::other(
                "write failure (injected)",
            ))));
        }
        Ok(())
    }
}

/// Opens a sled database. A handle being dropped (a broker or command that just
/// ended) releases the lock from a background thread: a held lock is retried briefly
/// before it is reported.
fn open_db(config: &sled::Config, path: &Path) -> Result<sled::Db, StoreError> {
    let mut attempts = 0;
    loop {
        match config.open() {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(ref io)) if is_lock_error(io) && attempts < 10 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(sled::Error::Io(ref io)) if is_lock_error(io) => {
                return Err(StoreError::Locked {
                    path: path.display().to_string(),
                })
            }
            Err(other) => {
                return Err(StoreError::Open {
                    path: path.display().to_string(),
                    source: other,
                })
            }
        }
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

#[cfg(test)]
mod damaged {
    use super::*;

    /// A store with messages in its journal, flushed (so noted), then damaged by `f`.
    fn damaged_store(f: impl FnOnce(&Path)) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let m = |id| {
                NewMessage::from_mailboxes(
                    id,
                    Arc::new(StoredMessage {
                        from: "alice".into(),
                        ts: 1,
                        payload: bytes::Bytes::from(vec![b'x'; 200]),
                        user_properties: vec![],
                        content_type: None,
                    }),
                    None,
                    vec![],
                )
            };
            for id in 1..=2000 {
                s.append(&[m(id)]).unwrap();
            }
            s.flush().unwrap();
        }
        f(&dir.path().join("store"));
        dir
    }

    fn refused(dir: &Path) -> String {
        match std::panic::catch_unwind(|| Store::open(dir)) {
            Err(_) => panic!("a damaged store panicked"),
            Ok(Ok(_)) => panic!("a damaged store opened"),
            Ok(Err(e)) => e.to_string(),
        }
    }

    #[test]
    fn truncated_garbled_or_unreadable_files_are_an_error_naming_the_file() {
        let truncated = damaged_store(|s| {
            let db = s.join("db");
            let len = std::fs::metadata(&db).unwrap().len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&db)
                .unwrap()
                .set_len(len / 3)
                .unwrap();
        });
        let e = refused(truncated.path());
        assert!(e.contains("store/db") && e.contains("truncated or altered"), "{e}");
        let garbled = damaged_store(|s| {
            let db = s.join("db");
            let mut bytes = std::fs::read(&db).unwrap();
            for b in bytes.iter_mut().skip(64).step_by(7) {
                *b ^= 0x5a;
            }
            std::fs::write(&db, bytes).unwrap();
        });
        let e = refused(garbled.path());
        assert!(e.contains("store/db"), "{e}");
        let conf = damaged_store(|s| std::fs::write(s.join("conf"), b"\xff\x00garbage").unwrap());
        let e = refused(conf.path());
        assert!(e.contains("cannot open the store") && e.contains("/store"), "{e}");
        let check = damaged_store(|s| std::fs::write(s.join("natter.check"), b"twelve").unwrap());
        assert!(refused(check.path()).contains("natter.check"));
        // An undamaged one opens, and a clean reopen keeps the check in step.
        let fine = damaged_store(|_| {});
        drop(Store::open(fine.path()).unwrap());
        assert!(Store::open(fine.path()).is_ok());
    }
}
