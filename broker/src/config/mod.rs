//! The broker's configuration: one `config.toml`, every bound explicit.
//!
//! Unknown keys and out-of-range values are refused at load with the key and the reason.
//! Zero never means "unlimited": bounds that must be positive are `NonZero*`.

pub mod rule;

use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

/// The embedded default configuration (the repository's `config.toml`).
pub const DEFAULT_CONFIG: &str = include_str!("../../../config.toml");

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config{}: {message}", path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    Parse { path: Option<PathBuf>, message: String },
    #[error("invalid config value for `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// Everything `natterd` reads from `config.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub limits: Limits,
    pub im: ImConfig,
    pub store: StoreConfig,
    pub files: FilesConfig,
    pub acl: AclConfig,
}

/// File transfer (see docs/protocol.md, Files): the limits the broker enforces and
/// announces (`files.limits`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesConfig {
    /// Largest file, in bytes.
    pub max_file_bytes: NonZeroU64,
    /// The size of every chunk but the last; a chunk's PUBLISH must fit
    /// `limits.max_packet_size`.
    pub chunk_bytes: NonZeroU32,
    /// Bytes of files (uploaded or under way) one user may keep.
    pub quota_bytes: NonZeroU64,
    /// An upload not finished within this many seconds is removed.
    pub upload_ttl_secs: NonZeroU32,
    /// A file is removed this many days after it was sent.
    #[serde(rename = "file_ttl_days", deserialize_with = "whole_days")]
    pub file_ttl: Duration,
    /// Chunks sent for one `files.fetch` at most (the rest on the next request).
    pub fetch_window: NonZeroU32,
}

/// When a QoS 1/2 publish is acknowledged, relative to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Once the message and its mailbox entries are flushed to disk (group commit:
    /// one flush covers every message stored meanwhile).
    Sync,
    /// Once it is in the store's memory; a crash loses what was acknowledged within
    /// the last `flush_every_ms`.
    Relaxed,
}

/// The store (sled) under `[server] data_dir`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub durability: Durability,
    /// The store's page cache, in MiB: recently used pages kept in memory (reads of
    /// recent history and mailboxes stay off the disk).
    pub cache_mib: NonZeroU32,
    /// How often the store writes its buffers out on its own, in milliseconds (what
    /// `relaxed` may lose; `sync` flushes before each acknowledgement anyway).
    pub flush_every_ms: NonZeroU32,
    /// The data key's file (relative to the data dir), created (mode 0600) on the
    /// first start; `NATTER_DATA_KEY` instead when set. See [`crate::datakey`].
    pub key_file: PathBuf,
}

/// Whether people can create their own accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Registration {
    Open,
    Closed,
}

/// Who may send a user direct messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DmPolicy {
    /// Anyone not blocked by the recipient.
    Anyone,
    /// Friends only.
    Friends,
}

/// Whose presence a user may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceVisibility {
    Friends,
    All,
}

/// The IM layer: mailboxes, contacts, groups, presence, the API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImConfig {
    /// The IM layer (mailboxes, presence, the API). Off, natterd is a plain
    /// authenticated MQTT broker whose operator rules cover every topic.
    pub enabled: bool,
    pub registration: Registration,
    /// Accounts one source address may register per hour.
    pub registrations_per_hour: NonZeroU32,
    pub dm_policy: DmPolicy,
    pub presence_visibility: PresenceVisibility,
    /// Retention per mailbox: the oldest entries go first when a bound is passed, and
    /// devices that had not received them get a gap event.
    pub mailbox_max_messages: NonZeroU64,
    pub mailbox_max_bytes: NonZeroU64,
    /// Written in whole days (`mailbox_max_age_days`); held as a duration so tests
    /// can use seconds.
    #[serde(rename = "mailbox_max_age_days", deserialize_with = "whole_days")]
    pub mailbox_max_age: Duration,
    /// Lifetime of a password reset token, in seconds.
    pub reset_token_ttl_secs: NonZeroU32,
    pub max_group_members: NonZeroUsize,
    /// Largest `limit` of a history request.
    pub history_max_limit: NonZeroU32,
    /// Most messages the writer stores together...
    pub write_batch_max: NonZeroUsize,
    /// ...and the longest, in microseconds, it keeps routing before storing them
    /// (0: store after one turn of the runtime).
    pub write_batch_max_us: u64,
    /// How often the mailbox and history indexes are written from memory...
    pub index_interval_ms: NonZeroU64,
    /// ...or sooner, when this many index entries wait in memory.
    pub index_max_pending: NonZeroUsize,
    /// API requests (`api/...`) handled at once, each on a blocking thread. Others
    /// wait their turn; a client's waiting requests count against its Receive Maximum,
    /// so one that floods the API is no longer read from until they are answered.
    pub api_workers: NonZeroUsize,
    /// Messages waiting for the writer at most; beyond it (a stalled store) messages
    /// are refused rather than buffered.
    pub writer_queue: NonZeroUsize,
}

/// Operator authorization rules for non-IM topics (see `acl::rules`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclConfig {
    #[serde(default)]
    pub rules: Vec<rule::Rule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// TCP address of the MQTT listener; port 0 picks a free port (logged at start).
    pub listen: SocketAddr,
    /// Directory holding the store and the control socket.
    pub data_dir: PathBuf,
    /// How long graceful shutdown waits for connections to close, in milliseconds.
    pub shutdown_grace_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Let clients without credentials in (they get only what authorization grants).
    pub allow_anonymous: bool,
    /// argon2id memory cost in KiB (OWASP: 19456).
    pub argon2_memory_kib: u32,
    /// argon2id iterations (OWASP: 2).
    pub argon2_iterations: u32,
    /// argon2id lanes.
    pub argon2_parallelism: u32,
    /// Password verifications running at once, off the async runtime. A login storm
    /// queues here instead of starving message traffic.
    pub verify_workers: NonZeroUsize,
    /// Failed logins allowed per user name and per source address before throttling.
    pub throttle_free_failures: u32,
    /// First lockout after the free failures, in milliseconds; doubles with each failure.
    pub throttle_base_delay_ms: u64,
    /// Longest lockout, in seconds.
    pub throttle_max_delay_secs: u64,
    /// Throttle entries kept (user names plus addresses); the oldest are evicted beyond it.
    pub throttle_max_entries: NonZeroUsize,
}

/// What the broker does when a session's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowPolicy {
    /// Drop the new message (logged and counted); the session stays connected.
    DropNew,
    /// Drop the new message and disconnect the slow consumer; its persistent session
    /// keeps what is queued.
    Disconnect,
}

/// Every bound of the broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Open connections at most; more are closed at accept.
    pub max_connections: NonZeroUsize,
    /// Largest MQTT packet accepted, in bytes, fixed header included.
    pub max_packet_size: NonZeroU32,
    /// QoS 1/2 messages sent to a client and not yet acknowledged, per session (lowered
    /// to the client's Receive Maximum on MQTT 5).
    pub max_inflight: NonZeroU16,
    /// QoS 1/2 publishes a client may have unacknowledged towards the broker (our MQTT 5
    /// Receive Maximum); a client exceeding it is disconnected with 0x93.
    pub receive_maximum: NonZeroU16,
    /// Messages waiting in one session's queue (online or offline) at most.
    pub max_queued_messages: NonZeroUsize,
    /// What happens when that queue is full.
    pub queue_overflow: OverflowPolicy,
    /// Longest keepalive a client may ask for, in seconds; longer ones are lowered to
    /// it and announced with Server Keep Alive on MQTT 5 (3.1.1 clients cannot be
    /// told, so their own value is kept). 0, no keepalive, is kept as asked.
    pub max_keepalive_secs: NonZeroU16,
    /// A socket that sends no complete CONNECT within this time is closed, in milliseconds.
    pub connect_timeout_ms: NonZeroU32,
    /// Longest session expiry granted, in seconds (also the lifetime of a 3.1.1
    /// persistent session after its last disconnect).
    pub max_session_expiry_secs: u32,
    /// Topic aliases a MQTT 5 client may use towards the broker.
    pub max_topic_aliases: u16,
    /// Topic aliases the broker uses towards a MQTT 5 client that allows them (at
    /// most the client's Topic Alias Maximum); 0: none.
    pub max_topic_aliases_out: u16,
    /// Longest client identifier, in bytes.
    pub max_client_id_len: NonZeroU16,
    /// Subscriptions per session.
    pub max_subscriptions_per_session: NonZeroUsize,
    /// Retained messages kept broker-wide; new topics beyond it are refused (logged).
    pub max_retained_messages: NonZeroUsize,
}

impl Limits {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.connect_timeout_ms.get()))
    }
}

impl Config {
    /// The embedded defaults.
    pub fn default_config() -> Config {
        // The embedded file is checked by a unit test; failing here would be a build defect.
        Config::from_toml(DEFAULT_CONFIG, None).unwrap_or_else(|e| panic!("embedded config.toml is invalid: {e}"))
    }

    /// Parses and validates a config document.
    ///
    /// # Errors
    /// Unknown keys, wrong types, missing keys and values out of range.
    pub fn from_toml(text: &str, path: Option<&Path>) -> Result<Config, ConfigError> {
        // Layer the document over the defaults so a file only needs the keys it changes.
        let mut base: toml::Table = DEFAULT_CONFIG
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: None,
                message: e.to_string(),
            })?;
        let overlay: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Parse {
            path: path.map(Path::to_path_buf),
            message: e.to_string(),
        })?;
        merge(&mut base, overlay);
        let config: Config = toml::Value::Table(base)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: path.map(Path::to_path_buf),
                message: e.to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads `path`.
    ///
    /// # Errors
    /// I/O errors and everything [`Config::from_toml`] refuses.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text, Some(path))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let a = &self.auth;
        if !(8..=4 * 1024 * 1024).contains(&a.argon2_memory_kib) {
            return Err(invalid("auth.argon2_memory_kib", "must be between 8 and 4194304"));
        }
        if !(1..=100).contains(&a.argon2_iterations) {
            return Err(invalid("auth.argon2_iterations", "must be between 1 and 100"));
        }
        if !(1..=64).contains(&a.argon2_parallelism) {
            return Err(invalid("auth.argon2_parallelism", "must be between 1 and 64"));
        }
        if a.argon2_memory_kib < 8 * a.argon2_parallelism {
            return Err(invalid(
                "auth.argon2_memory_kib",
                "must be at least 8 x argon2_parallelism",
            ));
        }
        if a.throttle_base_delay_ms == 0 {
            return Err(invalid("auth.throttle_base_delay_ms", "must be positive"));
        }
        for (i, rule) in self.acl.rules.iter().enumerate() {
            rule.validate(self.im.enabled).map_err(|reason| ConfigError::Invalid {
                key: "acl.rules",
                reason: format!("rule {}: {reason}", i + 1),
            })?;
        }
        let f = &self.files;
        if u64::from(f.chunk_bytes.get()) + 1024 > u64::from(self.limits.max_packet_size.get()) {
            return Err(invalid(
                "files.chunk_bytes",
                "must leave 1024 bytes of limits.max_packet_size for the chunk's topic and properties",
            ));
        }
        let l = &self.limits;
        if l.max_packet_size.get() < 64 || l.max_packet_size.get() as usize > natter_shared::codec::MAX_PACKET_SIZE {
            return Err(invalid("limits.max_packet_size", "must be between 64 and 268435460"));
        }
        Ok(())
    }
}

/// A positive number of days.
fn whole_days<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let days = NonZeroU32::deserialize(d)?;
    Ok(Duration::from_secs(u64::from(days.get()) * 86_400))
}

fn invalid(key: &'static str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.to_owned(),
    }
}

/// Overlays `top` on `base`, table by table.
fn merge(base: &mut toml::Table, top: toml::Table) {
    for (k, v) in top {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => merge(b, t),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::default_config();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:1883");
        assert!(!c.auth.allow_anonymous);
    }

    #[test]
    fn partial_file_overrides_defaults() {
        let c = Config::from_toml("[limits]\nmax_connections = 7\n", None).unwrap();
        assert_eq!(c.limits.max_connections.get(), 7);
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:1883");
    }

    #[test]
    fn mailbox_age_is_written_in_whole_days() {
        let c = Config::from_toml("[im]\nmailbox_max_age_days = 3\n", None).unwrap();
        assert_eq!(c.im.mailbox_max_age, Duration::from_secs(3 * 86_400));
        assert_eq!(
            Config::default_config().im.mailbox_max_age,
            Duration::from_secs(30 * 86_400)
        );
        for bad in ["0", "-1", "1.5", "\"30d\""] {
            let e = Config::from_toml(&format!("[im]\nmailbox_max_age_days = {bad}\n"), None);
            assert!(e.unwrap_err().to_string().contains("mailbox_max_age_days"), "{bad}");
        }
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let e = Config::from_toml("[limits]\nmax_conections = 7\n", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_conections"), "{e}");
        let e = Config::from_toml("[nope]\n", None).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn acl_rules_are_validated() {
        let ok = "[[acl.rules]]\nfilter = \"devices/%u/#\"\n";
        assert_eq!(Config::from_toml(ok, None).unwrap().acl.rules.len(), 1);
        let e = Config::from_toml("[[acl.rules]]\nfilter = \"inbox/#\"\n", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("acl.rules") && e.contains("IM namespaces"), "{e}");
        // With the IM layer off, no namespace is reserved: `#` and `inbox/#` are rules.
        let plain = "[im]\nenabled = false\n[[acl.rules]]\nfilter = \"#\"\n[[acl.rules]]\nfilter = \"inbox/#\"\n";
        assert_eq!(Config::from_toml(plain, None).unwrap().acl.rules.len(), 2);
        let e = Config::from_toml("[im]\nenabled = false\n[[acl.rules]]\nfilter = \"a/#/b\"\n", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("acl.rules"), "filters are still checked: {e}");
        let e = Config::from_toml("[[acl.rules]]\nfilter = \"x\"\naccess = \"all\"\n", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("all"), "{e}");
    }

    #[test]
    fn writer_bounds_are_configurable_and_nonzero() {
        let c = Config::from_toml("[im]\nwrite_batch_max = 8\nindex_interval_ms = 5\n", None).unwrap();
        assert_eq!((c.im.write_batch_max.get(), c.im.index_interval_ms.get()), (8, 5));
        assert_eq!((c.im.index_max_pending.get(), c.im.write_batch_max_us), (16_384, 1_000));
        let c = Config::from_toml("[im]\nwrite_batch_max_us = 0\n", None).unwrap();
        assert_eq!(c.im.write_batch_max_us, 0, "zero: no wait");
        for key in ["write_batch_max", "index_interval_ms", "index_max_pending"] {
            let e = Config::from_toml(&format!("[im]\n{key} = 0\n"), None)
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn store_durability_defaults_to_sync_and_is_checked() {
        let c = Config::default_config();
        assert_eq!(c.store.durability, Durability::Sync);
        assert_eq!(c.store.cache_mib.get(), 64);
        let c = Config::from_toml("[store]\ndurability = \"relaxed\"\ncache_mib = 8\n", None).unwrap();
        assert_eq!((c.store.durability, c.store.cache_mib.get()), (Durability::Relaxed, 8));
        let e = Config::from_toml("[store]\ndurability = \"sometimes\"\n", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sometimes") && e.contains("sync"), "{e}");
        for key in ["cache_mib", "flush_every_ms"] {
            let e = Config::from_toml(&format!("[store]\n{key} = 0\n"), None)
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn bad_values_are_refused_with_their_key() {
        let e = Config::from_toml("[limits]\nmax_connections = 0\n", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_connections"), "{e}");
        let e = Config::from_toml("[limits]\nmax_packet_size = 10\n", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_packet_size"), "{e}");
        let e = Config::from_toml("[server]\nlisten = \"nowhere\"\n", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen"), "{e}");
        let e = Config::from_toml("[limits]\nqueue_overflow = \"explode\"\n", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("explode"), "{e}");
        assert!(Config::from_toml("not toml at all [", None).is_err());
    }
}
