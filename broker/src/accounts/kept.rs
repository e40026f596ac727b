//! The guard's state on disk: the failed-login throttle and the registrations per
//! address are written behind, every [`SAVE_EVERY`] while they change and once more
//! at shutdown, and read back at start. A `kill -9` loses at most the last second of
//! it (a guesser's last few attempts count again), never an account or a message.

use std::time::{Duration, Instant};

use bincode::Options;

use super::guard::LoginGuard;
use crate::store::{GuardChange, Store, StoreError};

/// How often changes are written.
pub const SAVE_EVERY: Duration = Duration::from_secs(1);

/// One moment on both clocks: monotonic times are written as Unix milliseconds.
pub(super) struct Wall {
    pub now: Instant,
    pub unix_ms: u64,
}

impl Wall {
    pub fn now() -> Wall {
        Wall {
            now: Instant::now(),
            unix_ms: crate::clock::unix_ms(),
        }
    }

    /// `t` as Unix milliseconds.
    pub fn ms(&self, t: Instant) -> u64 {
        if t <= self.now {
            let ago = u64::try_from(self.now.duration_since(t).as_millis()).unwrap_or(u64::MAX);
            self.unix_ms.saturating_sub(ago)
        } else {
            let ahead = u64::try_from(t.duration_since(self.now).as_millis()).unwrap_or(u64::MAX);
            self.unix_ms.saturating_add(ahead)
        }
    }

    /// Unix milliseconds `ms` as a monotonic time (clamped where the clock cannot go).
    pub fn instant(&self, ms: u64) -> Instant {
        if ms <= self.unix_ms {
            let ago = Duration::from_millis(self.unix_ms - ms);
            self.now.checked_sub(ago).unwrap_or(self.now)
        } else {
            let ahead = Duration::from_millis(ms - self.unix_ms);
            self.now.checked_add(ahead).unwrap_or(self.now)
        }
    }
}

pub(super) fn encode<T: serde::Serialize>(value: &T) -> Option<Vec<u8>> {
    bincode::DefaultOptions::new().serialize(value).ok()
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    bincode::DefaultOptions::new()
        .with_limit(64 * 1024)
        .deserialize(bytes)
        .ok()
}

impl LoginGuard {
    /// Reads the written state back (at start, before anyone connects); records that
    /// are unreadable or too old to matter are removed. Blocking.
    ///
    /// # Errors
    /// Store errors.
    pub fn restore(&self, store: &Store) -> Result<usize, StoreError> {
        let wall = Wall::now();
        let mut gone: Vec<GuardChange> = Vec::new();
        let mut restored = 0;
        for (key, value) in store.guard_records()? {
            if self.restore_one(&key, &value, &wall) {
                restored += 1;
            } else {
                gone.push((key, None));
            }
        }
        if !gone.is_empty() {
            tracing::debug!(records = gone.len(), "stale login-guard records removed");
            store.write_guard(&gone)?;
        }
        Ok(restored)
    }

    /// Writes what changed since the last call. Blocking. On failure the changes are
    /// kept for the next call.
    ///
    /// # Errors
    /// Store errors.
    pub fn save(&self, store: &Store) -> Result<usize, StoreError> {
        let wall = Wall::now();
        let changes = self.changes(&wall);
        if changes.is_empty() {
            return Ok(0);
        }
        match store.write_guard(&changes) {
            Ok(()) => Ok(changes.len()),
            Err(e) => {
                self.unsaved(&changes);
                Err(e)
            }
        }
    }
}

/// Writes the guard's changes every [`SAVE_EVERY`] (off the runtime), until aborted;
/// the server saves once more at shutdown.
pub async fn keep(guard: std::sync::Arc<LoginGuard>, store: Store) {
    let mut tick = tokio::time::interval(SAVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (g, s) = (guard.clone(), store.clone());
        match tokio::task::spawn_blocking(move || g.save(&s)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "login throttle state not written (kept for the next try)"),
            Err(e) => tracing::error!(error = %e, "login throttle writer failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::net::IpAddr;

    fn guard() -> LoginGuard {
        let mut cfg = Config::default_config().auth;
        cfg.throttle_free_failures = 1;
        cfg.throttle_base_delay_ms = 60_000;
        cfg.throttle_max_delay_secs = 600;
        LoginGuard::new(&cfg, 2)
    }

    #[test]
    fn wall_times_round_trip_and_clamp() {
        let w = Wall::now();
        let ago = w.now - Duration::from_secs(5);
        assert_eq!(w.ms(ago), w.unix_ms - 5000);
        assert_eq!(w.instant(w.unix_ms - 5000), ago);
        assert_eq!(w.instant(w.unix_ms + 7000), w.now + Duration::from_secs(7));
        // A time before the monotonic clock's origin comes back as now, not a panic.
        assert_eq!(
            w.instant(0).max(w.now - Duration::from_secs(1)),
            w.now - Duration::from_secs(1)
        );
        let _ = w.instant(u64::MAX);
    }

    /// A locked address and an address's registrations come back after a restart; a
    /// success clears the user name on disk too; garbage records are removed.
    #[test]
    fn the_guard_state_outlives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let other: IpAddr = "10.0.0.10".parse().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let g = guard();
            g.failure(Some("alice"), ip);
            g.failure(Some("alice"), ip);
            g.failure(Some("bob"), other);
            g.failure(Some("bob"), other);
            g.success("bob");
            assert!(g.allow_registration(ip));
            assert!(g.allow_registration(ip));
            assert!(!g.allow_registration(ip));
            assert!(g.save(&store).unwrap() > 0);
            assert_eq!(g.save(&store).unwrap(), 0, "nothing changed since");
            store
                .write_guard(&[
                    (b"a not an address".to_vec(), Some(b"x".to_vec())),
                    (b"zzz".to_vec(), Some(vec![1])),
                ])
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let g = guard();
        g.restore(&store).unwrap();
        assert!(
            matches!(g.gate(ip), super::super::guard::Gate::Locked(_)),
            "still locked"
        );
        assert!(g.user_locked("alice"));
        assert!(!g.user_locked("bob"), "cleared by the success");
        assert!(!g.allow_registration(ip), "two registrations within the hour already");
        assert!(g.allow_registration(other));
        let keys: Vec<Vec<u8>> = store.guard_records().unwrap().into_iter().map(|(k, _)| k).collect();
        assert!(!keys.contains(&b"zzz".to_vec()) && !keys.contains(&b"a not an address".to_vec()));
        assert!(!keys.contains(&b"ubob".to_vec()));
    }
}
