//! Registrations per source address in the last hour (a sliding window), bounded in
//! addresses. Like the throttle, it outlives a restart: changed addresses are noted
//! and written behind (see [`super::kept`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::kept::{decode, encode, Wall};
use crate::store::GuardChange;

const HOUR: Duration = Duration::from_secs(3600);
/// Addresses tracked at most.
const MAX_TRACKED: usize = 100_000;
/// The kind byte of its written keys.
const KIND: u8 = b'r';

pub struct RegistrationLimiter {
    per_hour: u32,
    seen: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
    /// Addresses changed since the state was last written; locked after `seen`.
    dirty: Mutex<HashSet<IpAddr>>,
}

impl RegistrationLimiter {
    pub fn new(per_hour: u32) -> RegistrationLimiter {
        RegistrationLimiter {
            per_hour,
            seen: Mutex::new(HashMap::new()),
            dirty: Mutex::new(HashSet::new()),
        }
    }

    /// Counts an attempt; false when the address is over its hourly quota.
    pub fn allow(&self, ip: IpAddr) -> bool {
        self.allow_at(ip, Instant::now())
    }

    /// [`RegistrationLimiter::allow`] at a given time: the window is the hour before
    /// `now`, sliding.
    fn allow_at(&self, ip: IpAddr, now: Instant) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_TRACKED {
            seen.retain(|addr, q| {
                let keep = q.back().is_some_and(|t| now.duration_since(*t) < HOUR);
                if !keep {
                    dirty.insert(*addr);
                }
                keep
            });
        }
        let q = seen.entry(ip).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) >= HOUR) {
            q.pop_front();
        }
        if q.len() >= self.per_hour as usize {
            return false;
        }
        q.push_back(now);
        dirty.insert(ip);
        true
    }

    /// Whether a written key is one of the limiter's.
    pub(super) fn is_mine(key: &[u8]) -> bool {
        key.first() == Some(&KIND)
    }

    /// The changes since the last call, as records to write (an address's attempts
    /// in the window, as Unix milliseconds).
    pub(super) fn changes(&self, wall: &Wall) -> Vec<GuardChange> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let dirty = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|p| p.into_inner()));
        dirty
            .into_iter()
            .map(|ip| {
                let value = seen
                    .get(&ip)
                    .filter(|q| !q.is_empty())
                    .and_then(|q| encode(&q.iter().map(|t| wall.ms(*t)).collect::<Vec<u64>>()));
                (key(ip), value)
            })
            .collect()
    }

    /// Changes that could not be written: noted again, for the next write.
    pub(super) fn unsaved(&self, changes: &[GuardChange]) {
        let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        dirty.extend(changes.iter().filter_map(|(k, _)| parse(k)));
    }

    /// Takes back a written address (at start); false for one unreadable or with no
    /// attempt left in the window (the caller removes it).
    pub(super) fn restore(&self, key: &[u8], value: &[u8], wall: &Wall) -> bool {
        let (Some(ip), Some(times)) = (parse(key), decode::<Vec<u64>>(value)) else {
            return false;
        };
        let q: VecDeque<Instant> = times
            .into_iter()
            .map(|ms| wall.instant(ms).min(wall.now))
            .filter(|t| wall.now.duration_since(*t) < HOUR)
            .take(self.per_hour as usize)
            .collect();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if q.is_empty() || seen.len() >= MAX_TRACKED {
            return false;
        }
        seen.insert(ip, q);
        true
    }
}

fn key(ip: IpAddr) -> Vec<u8> {
    let mut out = vec![KIND];
    out.extend_from_slice(ip.to_string().as_bytes());
    out
}

fn parse(key: &[u8]) -> Option<IpAddr> {
    let (&kind, rest) = key.split_first()?;
    (kind == KIND).then_some(())?;
    std::str::from_utf8(rest).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_counts_per_address() {
        let l = RegistrationLimiter::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(l.allow(a));
        assert!(l.allow(a));
        assert!(!l.allow(a));
        assert!(l.allow(b));
    }

    #[test]
    fn a_full_table_forgets_addresses_idle_for_an_hour_and_keeps_the_rest() {
        let l = RegistrationLimiter::new(1);
        let t0 = Instant::now();
        let half = MAX_TRACKED as u32 / 2;
        let ip = |n: u32| IpAddr::from(n.to_be_bytes());
        for n in 0..half {
            assert!(l.allow_at(ip(n), t0));
        }
        let later = t0 + Duration::from_secs(30 * 60);
        for n in half..2 * half {
            assert!(l.allow_at(ip(n), later));
        }
        // Full: the next new address makes room by dropping the first half only,
        // whose last attempt is an hour old to the instant.
        let t1 = t0 + Duration::from_secs(60 * 60);
        assert!(l.allow_at(ip(u32::MAX), t1));
        assert_eq!(l.seen.lock().unwrap().len(), half as usize + 1);
        assert!(!l.allow_at(ip(half), t1), "a recent address keeps its count");
        assert!(l.allow_at(ip(0), t1), "an idle one starts over");
    }

    #[test]
    fn the_registration_window_is_the_last_hour() {
        let l = RegistrationLimiter::new(2);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        let min = |m: u64| t0 + Duration::from_secs(60 * m);
        assert!(l.allow_at(ip, t0));
        assert!(l.allow_at(ip, min(30)));
        assert!(!l.allow_at(ip, min(59)), "two within the hour");
        // The first attempt leaves the window at t0 + 60 min; the second at 90.
        assert!(l.allow_at(ip, min(60)));
        assert!(!l.allow_at(ip, min(89)), "30 and 60 are still inside");
        assert!(l.allow_at(ip, min(90)));
        // A refused attempt does not count against the address.
        assert!(!l.allow_at(ip, min(91)));
        assert!(l.allow_at(ip, min(150)), "60 and 90 have both left the window");
    }
}
