//! Failed-login throttling per user name and per source address.
//!
//! After `free_failures` failures, each further failure locks the key for
//! `base_delay * 2^(extra failures)`, capped at `max_delay`. A success clears the
//! user name's record.
//!
//! Only a locked *address* refuses an attempt outright. A locked user name does not,
//! or anyone could keep `alice` out by guessing wrong passwords at her name; instead,
//! while a user name is locked, every failure at it locks the address it came from at
//! once (no free failures). Guessing at one name is slowed to one try per address per
//! lockout, and alice, from an address that has not failed at her name under the
//! lockout, still gets in with her password. IPv6 addresses count by /64, the block
//! one subscriber usually holds.
//!
//! The table is bounded: beyond `max_entries` the least recently failed key is evicted.
//!
//! It outlives a restart: changed keys are noted and written behind (see
//! [`super::kept`]), and read back at start, so restarting the broker does not hand a
//! guesser fresh attempts.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::kept::{decode, encode, Wall};
use crate::config::AuthConfig;
use crate::store::GuardChange;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Key {
    User(String),
    Addr(IpAddr),
}

impl Key {
    /// As written: a kind byte (`u` user name, `a` address), then the name or address.
    fn to_bytes(&self) -> Vec<u8> {
        let (kind, text) = match self {
            Key::User(u) => (b'u', u.clone()),
            Key::Addr(a) => (b'a', a.to_string()),
        };
        let mut out = vec![kind];
        out.extend_from_slice(text.as_bytes());
        out
    }

    fn from_bytes(bytes: &[u8]) -> Option<Key> {
        let (&kind, rest) = bytes.split_first()?;
        let text = std::str::from_utf8(rest).ok()?;
        match kind {
            b'u' => Some(Key::User(text.to_owned())),
            b'a' => text.parse().ok().map(Key::Addr),
            _ => None,
        }
    }

    /// Whether a written key is one of the throttle's.
    pub(super) fn is_throttle(bytes: &[u8]) -> bool {
        matches!(bytes.first(), Some(b'u' | b'a'))
    }
}

/// An entry as written: times as Unix milliseconds.
#[derive(serde::Serialize, serde::Deserialize)]
struct Written {
    failures: u32,
    last_failure_ms: u64,
    locked_until_ms: Option<u64>,
}

/// The key of a source address: IPv4 as is, IPv6 by its /64 prefix.
fn addr_key(addr: IpAddr) -> Key {
    match addr {
        IpAddr::V4(_) => Key::Addr(addr),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => Key::Addr(IpAddr::V4(v4)),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Key::Addr(IpAddr::V6(prefix.into()))
            }
        },
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    locked_until: Option<Instant>,
}

/// Shared throttle state.
pub struct Throttle {
    free_failures: u32,
    base: Duration,
    max: Duration,
    max_entries: usize,
    table: Mutex<HashMap<Key, Entry>>,
    /// Keys changed (or removed) since the state was last written; locked after
    /// `table` when both are.
    dirty: Mutex<HashSet<Key>>,
}

impl Throttle {
    pub fn new(cfg: &AuthConfig) -> Throttle {
        Throttle {
            free_failures: cfg.throttle_free_failures,
            base: Duration::from_millis(cfg.throttle_base_delay_ms),
            max: Duration::from_secs(cfg.throttle_max_delay_secs),
            max_entries: cfg.throttle_max_entries.get(),
            table: Mutex::new(HashMap::new()),
            dirty: Mutex::new(HashSet::new()),
        }
    }

    /// How long the address stays locked, if it is: the one lock that refuses an
    /// attempt before its secret is checked.
    pub fn locked(&self, addr: IpAddr, now: Instant) -> Option<Duration> {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        Self::remaining(&table, &addr_key(addr), now)
    }

    /// How long the user name stays locked, if it is (failures at it from any address
    /// then lock their address at once).
    pub fn user_locked(&self, user: &str, now: Instant) -> Option<Duration> {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        Self::remaining(&table, &Key::User(user.to_owned()), now)
    }

    fn remaining(table: &HashMap<Key, Entry>, key: &Key, now: Instant) -> Option<Duration> {
        table
            .get(key)
            .and_then(|e| e.locked_until)
            .filter(|&until| until > now)
            .map(|until| until - now)
    }

    /// Records a failed login at `user` (if one was named) from `addr`.
    pub fn failure(&self, user: Option<&str>, addr: IpAddr, now: Instant) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let user_key = user.map(|u| Key::User(u.to_owned()));
        let under_lockout = user_key
            .as_ref()
            .is_some_and(|k| Self::remaining(&table, k, now).is_some());
        if let Some(k) = user_key {
            self.count(&mut table, k, now, false);
        }
        self.count(&mut table, addr_key(addr), now, under_lockout);
    }

    /// Counts one failure at `key`; `at_once`: lock it now, free failures or not.
    fn count(&self, table: &mut HashMap<Key, Entry>, key: Key, now: Instant, at_once: bool) {
        let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        if !table.contains_key(&key) && table.len() >= self.max_entries {
            dirty.extend(evict_oldest(table));
        }
        dirty.insert(key.clone());
        let e = table.entry(key).or_insert(Entry {
            failures: 0,
            last_failure: now,
            locked_until: None,
        });
        // Failures older than the longest lockout are forgotten.
        if now.saturating_duration_since(e.last_failure) > self.max.max(self.base) * 2 {
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        if at_once {
            e.failures = e.failures.max(self.free_failures.saturating_add(1));
        }
        e.last_failure = now;
        if e.failures > self.free_failures {
            let exp = (e.failures - self.free_failures - 1).min(31);
            let delay = self.base.saturating_mul(1u32 << exp).min(self.max);
            e.locked_until = Some(now + delay);
        }
    }

    /// Records a successful login: clears the user name (the address keeps its record,
    /// so one good account does not unlock guessing at others from the same address).
    pub fn success(&self, user: Option<&str>) {
        if let Some(u) = user {
            let key = Key::User(u.to_owned());
            let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
            if table.remove(&key).is_some() {
                self.dirty.lock().unwrap_or_else(|p| p.into_inner()).insert(key);
            }
        }
    }

    /// The changes since the last call, as records to write (`wall`: now, on both
    /// clocks). Taken: a write that fails gives them back with [`Throttle::unsaved`].
    pub(super) fn changes(&self, wall: &Wall) -> Vec<GuardChange> {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let dirty = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|p| p.into_inner()));
        dirty
            .into_iter()
            .map(|key| {
                let value = table.get(&key).and_then(|e| {
                    encode(&Written {
                        failures: e.failures,
                        last_failure_ms: wall.ms(e.last_failure),
                        locked_until_ms: e.locked_until.map(|t| wall.ms(t)),
                    })
                });
                (key.to_bytes(), value)
            })
            .collect()
    }

    /// Changes that could not be written: noted again, for the next write.
    pub(super) fn unsaved(&self, changes: &[GuardChange]) {
        let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        dirty.extend(changes.iter().filter_map(|(k, _)| Key::from_bytes(k)));
    }

    /// Takes back a written entry (at start). Returns false for one that is
    /// unreadable or so old it would be forgotten anyway: the caller removes it.
    /// A lock ends no later than `max_delay` from now, whatever was written.
    pub(super) fn restore(&self, key: &[u8], value: &[u8], wall: &Wall) -> bool {
        let (Some(key), Some(w)) = (Key::from_bytes(key), decode::<Written>(value)) else {
            return false;
        };
        let last_failure = wall.instant(w.last_failure_ms);
        if wall.now.saturating_duration_since(last_failure) > self.max.max(self.base) * 2 {
            return false;
        }
        let latest = wall.now.checked_add(self.max).unwrap_or(wall.now);
        let entry = Entry {
            failures: w.failures,
            last_failure: last_failure.min(wall.now),
            locked_until: w.locked_until_ms.map(|ms| wall.instant(ms).min(latest)),
        };
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if !table.contains_key(&key) && table.len() >= self.max_entries {
            return false;
        }
        table.insert(key, entry);
        true
    }
}

/// Evicts the least recently failed key; returns it.
fn evict_oldest(table: &mut HashMap<Key, Entry>) -> Option<Key> {
    let k = table
        .iter()
        .min_by_key(|(_, e)| e.last_failure)
        .map(|(k, _)| k.clone())?;
    table.remove(&k);
    Some(k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn throttle(max_entries: usize) -> Throttle {
        let mut cfg = Config::default_config().auth;
        cfg.throttle_free_failures = 2;
        cfg.throttle_base_delay_ms = 100;
        cfg.throttle_max_delay_secs = 1;
        cfg.throttle_max_entries = max_entries.try_into().unwrap();
        Throttle::new(&cfg)
    }

    #[test]
    fn locks_after_free_failures_and_doubles() {
        let t = throttle(100);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let now = Instant::now();
        t.failure(Some("a"), ip, now);
        t.failure(Some("a"), ip, now);
        assert_eq!(t.locked(ip, now), None);
        t.failure(Some("a"), ip, now);
        assert_eq!(t.locked(ip, now), Some(Duration::from_millis(100)));
        assert_eq!(t.user_locked("a", now), Some(Duration::from_millis(100)));
        t.failure(Some("a"), ip, now);
        assert_eq!(t.locked(ip, now), Some(Duration::from_millis(200)));
        for _ in 0..10 {
            t.failure(Some("a"), ip, now);
        }
        assert_eq!(t.locked(ip, now), Some(Duration::from_secs(1)), "capped");
        assert_eq!(t.user_locked("b", now), None, "other names are not locked");
        assert_eq!(t.locked(ip, now + Duration::from_secs(2)), None, "expires");
        assert_eq!(t.user_locked("a", now + Duration::from_secs(2)), None);
    }

    #[test]
    fn a_locked_user_name_locks_each_address_that_fails_at_it_at_once() {
        let t = throttle(100);
        let (attacker, other, third): (IpAddr, IpAddr, IpAddr) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        let now = Instant::now();
        for _ in 0..3 {
            t.failure(Some("a"), attacker, now);
        }
        assert!(t.user_locked("a", now).is_some());
        // Another address is not refused up front: its attempt is checked.
        assert_eq!(t.locked(other, now), None);
        // One failure at the locked name locks that address, with no free failures...
        t.failure(Some("a"), other, now);
        assert_eq!(t.locked(other, now), Some(Duration::from_millis(100)));
        // ...but failures at names that are not locked still get their free ones.
        t.failure(Some("b"), third, now);
        assert_eq!(t.locked(third, now), None);
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_bit_prefix() {
        let t = throttle(100);
        let now = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_block: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let next_block: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        for _ in 0..3 {
            t.failure(None, a, now);
        }
        assert!(t.locked(same_block, now).is_some());
        assert_eq!(t.locked(next_block, now), None);
        // An IPv4-mapped address is the IPv4 address.
        let v4: IpAddr = "10.0.0.7".parse().unwrap();
        for _ in 0..3 {
            t.failure(None, v4, now);
        }
        assert!(t.locked("::ffff:10.0.0.7".parse().unwrap(), now).is_some());
    }

    #[test]
    fn each_failure_doubles_the_lock_up_to_the_cap() {
        let t = throttle(100);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let now = Instant::now();
        let ms = Duration::from_millis;
        for (n, expected) in [
            None,
            None,
            Some(100),
            Some(200),
            Some(400),
            Some(800),
            Some(1000),
            Some(1000),
        ]
        .into_iter()
        .enumerate()
        {
            t.failure(Some("a"), ip, now);
            assert_eq!(t.locked(ip, now), expected.map(ms), "after failure {}", n + 1);
        }
        assert_eq!(t.locked(ip, now + ms(999)), Some(ms(1)));
        assert_eq!(t.locked(ip, now + ms(1000)), None, "over the moment it ends");
    }

    #[test]
    fn failures_are_forgotten_after_twice_the_longest_lock() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let now = Instant::now();
        let ms = Duration::from_millis;
        // Three failures lock for 100 ms; a fourth doubles that unless the first three
        // are forgotten, which happens only more than 2 s (twice max_delay) later.
        for (gap, fourth_locks) in [(ms(1000), true), (ms(2000), true), (ms(2001), false)] {
            let t = throttle(100);
            for _ in 0..3 {
                t.failure(Some("a"), ip, now);
            }
            t.failure(Some("a"), ip, now + gap);
            let locked = t.locked(ip, now + gap);
            assert_eq!(locked.is_some(), fourth_locks, "gap {gap:?}: {locked:?}");
            if fourth_locks {
                assert_eq!(locked, Some(ms(200)));
            }
        }
    }

    #[test]
    fn success_clears_user_and_table_is_bounded() {
        let t = throttle(4);
        let now = Instant::now();
        for i in 0..10u8 {
            t.failure(
                Some(&format!("u{i}")),
                IpAddr::from([10, 0, 0, i]),
                now + Duration::from_millis(i.into()),
            );
        }
        assert!(t.table.lock().unwrap().len() <= 4);
        let ip: IpAddr = "10.1.1.1".parse().unwrap();
        let t = throttle(100);
        for _ in 0..5 {
            t.failure(Some("x"), ip, now);
        }
        t.success(Some("x"));
        assert!(t.user_locked("x", now).is_none());
    }
}
