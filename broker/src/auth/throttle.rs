//! Failed-login throttling per user name and per source address.
//!
//! After `free_failures` failures, each further failure locks the key for
//! `base_delay * 2^(extra failures)`, capped at `max_delay`. A success clears the key.
//! The table is bounded: beyond `max_entries` the least recently failed key is evicted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::AuthConfig;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    User(String),
    Addr(IpAddr),
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
}

impl Throttle {
    pub fn new(cfg: &AuthConfig) -> Throttle {
        Throttle {
            free_failures: cfg.throttle_free_failures,
            base: Duration::from_millis(cfg.throttle_base_delay_ms),
            max: Duration::from_secs(cfg.throttle_max_delay_secs),
            max_entries: cfg.throttle_max_entries.get(),
            table: Mutex::new(HashMap::new()),
        }
    }

    fn keys(user: Option<&str>, addr: IpAddr) -> impl Iterator<Item = Key> {
        user.map(|u| Key::User(u.to_owned()))
            .into_iter()
            .chain(std::iter::once(Key::Addr(addr)))
    }

    /// When the user name or the address is locked, how long remains.
    pub fn locked(&self, user: Option<&str>, addr: IpAddr, now: Instant) -> Option<Duration> {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        Self::keys(user, addr)
            .filter_map(|k| table.get(&k).and_then(|e| e.locked_until))
            .filter(|&until| until > now)
            .map(|until| until - now)
            .max()
    }

    /// Records a failed login.
    pub fn failure(&self, user: Option<&str>, addr: IpAddr, now: Instant) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        for key in Self::keys(user, addr) {
            if !table.contains_key(&key) && table.len() >= self.max_entries {
                evict_oldest(&mut table);
            }
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
            e.last_failure = now;
            if e.failures > self.free_failures {
                let exp = (e.failures - self.free_failures - 1).min(31);
                let delay = self.base.saturating_mul(1u32 << exp).min(self.max);
                e.locked_until = Some(now + delay);
            }
        }
    }

    /// Records a successful login: clears the user name (the address keeps its record,
    /// so one good account does not unlock guessing at others from the same address).
    pub fn success(&self, user: Option<&str>) {
        if let Some(u) = user {
            self.table
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&Key::User(u.to_owned()));
        }
    }
}

fn evict_oldest(table: &mut HashMap<Key, Entry>) {
    if let Some(k) = table.iter().min_by_key(|(_, e)| e.last_failure).map(|(k, _)| k.clone()) {
        table.remove(&k);
    }
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
        assert_eq!(t.locked(Some("a"), ip, now), None);
        t.failure(Some("a"), ip, now);
        assert_eq!(t.locked(Some("a"), ip, now), Some(Duration::from_millis(100)));
        t.failure(Some("a"), ip, now);
        assert_eq!(t.locked(Some("a"), ip, now), Some(Duration::from_millis(200)));
        for _ in 0..10 {
            t.failure(Some("a"), ip, now);
        }
        assert_eq!(t.locked(Some("a"), ip, now), Some(Duration::from_secs(1)), "capped");
        // Another user from the same address is locked too (per-address throttle).
        assert!(t.locked(Some("b"), ip, now).is_some());
        // The same user from another address is locked (per-user throttle).
        assert!(t.locked(Some("a"), "10.0.0.2".parse().unwrap(), now).is_some());
        assert_eq!(t.locked(Some("a"), ip, now + Duration::from_secs(2)), None, "expires");
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
            assert_eq!(
                t.locked(Some("a"), ip, now),
                expected.map(ms),
                "after failure {}",
                n + 1
            );
        }
        assert_eq!(t.locked(Some("a"), ip, now + ms(999)), Some(ms(1)));
        assert_eq!(t.locked(Some("a"), ip, now + ms(1000)), None, "over the moment it ends");
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
            let locked = t.locked(Some("a"), ip, now + gap);
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
        assert!(t.locked(Some("x"), "10.9.9.9".parse().unwrap(), now).is_none());
    }
}
