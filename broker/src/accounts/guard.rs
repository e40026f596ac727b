//! What stands between a guesser and a password: the failed-login [`Throttle`] and the
//! bounded pool of argon2 workers. One guard serves every place a password is checked
//! or hashed (CONNECT, `api/account.passwd`, registration, resets, admin changes), so
//! no door is faster than another and a storm of hashing never takes every core.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::throttle::Throttle;
use crate::config::AuthConfig;

pub struct LoginGuard {
    throttle: Throttle,
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
    pub fn new(cfg: &AuthConfig) -> LoginGuard {
        LoginGuard {
            throttle: Throttle::new(cfg),
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

    /// One of the bounded argon2 workers: hold it while hashing or verifying on a
    /// blocking thread. Waits (asynchronously) while all are busy.
    pub async fn worker(&self) -> Option<OwnedSemaphorePermit> {
        self.workers.clone().acquire_owned().await.ok()
    }
}
