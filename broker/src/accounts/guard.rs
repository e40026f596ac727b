//! What stands between a guesser and a password: the failed-login [`Throttle`] and the
//! bounded pool of argon2 workers. One guard serves every place a password is checked
//! or hashed (CONNECT, `api/account.passwd`, registration, resets, admin changes), so
//! no door is faster than another and a storm of hashing never takes every core. It
//! also counts registrations per address. Its state outlives a restart (see
//! [`super::kept`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::kept::Wall;
use super::registrations::RegistrationLimiter;
use super::throttle::{Key, Throttle};
use crate::config::AuthConfig;
use crate::store::GuardChange;

pub struct LoginGuard {
    throttle: Throttle,
    registrations: RegistrationLimiter,
    workers: Arc<Semaphore>,
}

/// The guard's answer before a secret is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Open,
    /// The source address is locked for this long.
    Locked(Duration),
}

impl LoginGuard {
    /// `registrations_per_hour`: accounts one address may register per hour.
    pub fn new(cfg: &AuthConfig, registrations_per_hour: u32) -> LoginGuard {
        LoginGuard {
            throttle: Throttle::new(cfg),
            registrations: RegistrationLimiter::new(registrations_per_hour),
            workers: Arc::new(Semaphore::new(cfg.verify_workers.get())),
        }
    }

    /// May a secret from `addr` be checked now?
    pub fn gate(&self, addr: IpAddr) -> Gate {
        match self.throttle.locked(addr, Instant::now()) {
            Some(left) => Gate::Locked(left),
            None => Gate::Open,
        }
    }

    pub fn failure(&self, user: Option<&str>, addr: IpAddr) {
        self.throttle.failure(user, addr, Instant::now());
    }

    pub fn success(&self, user: &str) {
        self.throttle.success(Some(user));
    }

    /// Whether the user name is locked now (failures at it lock their address at once).
    pub fn user_locked(&self, user: &str) -> bool {
        self.throttle.user_locked(user, Instant::now()).is_some()
    }

    /// Counts a registration attempt from `addr`; false when it is over its quota.
    pub fn allow_registration(&self, addr: IpAddr) -> bool {
        self.registrations.allow(addr)
    }

    /// Both tables' changes since the last call.
    pub(super) fn changes(&self, wall: &Wall) -> Vec<GuardChange> {
        let mut changes = self.throttle.changes(wall);
        changes.extend(self.registrations.changes(wall));
        changes
    }

    /// Changes that could not be written, noted again.
    pub(super) fn unsaved(&self, changes: &[GuardChange]) {
        self.throttle.unsaved(changes);
        self.registrations.unsaved(changes);
    }

    /// Takes back one written record; false when the caller should remove it.
    pub(super) fn restore_one(&self, key: &[u8], value: &[u8], wall: &Wall) -> bool {
        if Key::is_throttle(key) {
            self.throttle.restore(key, value, wall)
        } else if RegistrationLimiter::is_mine(key) {
            self.registrations.restore(key, value, wall)
        } else {
            false
        }
    }

    /// One of the bounded argon2 workers: hold it while hashing or verifying on a
    /// blocking thread. Waits (asynchronously) while all are busy.
    pub async fn worker(&self) -> Option<OwnedSemaphorePermit> {
        self.workers.clone().acquire_owned().await.ok()
    }
}
