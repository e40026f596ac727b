//! The first plugin: password and device-token authentication against the account
//! store.
//!
//! argon2id verification runs on blocking threads through a bounded pool (a
//! semaphore of `verify_workers` permits), so a login storm queues here and never
//! starves message traffic on the async runtime. Device tokens (see [`tokens`]) are
//! checked in memory with one SHA-256; they never carry admin rights.

pub mod password;
pub mod reset;
pub mod throttle;
pub mod tokens;

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;

use crate::config::AuthConfig;
use crate::hooks::{AuthDecision, AuthFailure, Credentials, Hook, HookFuture, Identity, Restriction};
use crate::store::Store;
use throttle::Throttle;
use tokens::TokenIndex;

/// Authenticates CONNECT credentials against stored argon2id hashes.
pub struct PasswordAuth {
    store: Store,
    tokens: TokenIndex,
    allow_anonymous: bool,
    /// Clients without an account are admitted to register (only).
    registration_open: bool,
    throttle: Throttle,
    workers: Arc<Semaphore>,
    /// A hash of a random password with the configured parameters, verified against
    /// when the user does not exist.
    dummy_hash: Arc<str>,
}

impl PasswordAuth {
    /// # Errors
    /// argon2 parameters it refuses.
    pub fn new(
        store: Store,
        tokens: TokenIndex,
        cfg: &AuthConfig,
        registration_open: bool,
    ) -> Result<PasswordAuth, password::PasswordError> {
        let mut secret = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut secret);
        let dummy_hash = password::PasswordHasherConfig::new(cfg)?.hash(&secret)?.into();
        Ok(PasswordAuth {
            store,
            tokens,
            registration_open,
            allow_anonymous: cfg.allow_anonymous,
            throttle: Throttle::new(cfg),
            workers: Arc::new(Semaphore::new(cfg.verify_workers.get())),
            dummy_hash,
        })
    }

    async fn check(&self, creds: &Credentials) -> AuthDecision {
        let ip = creds.addr.ip();
        let Some(user) = creds.username.as_deref() else {
            if self.allow_anonymous && creds.password.is_none() {
                return AuthDecision::Allow(Identity::default());
            }
            if self.registration_open && creds.password.is_none() {
                return AuthDecision::Allow(Identity {
                    restriction: Some(Restriction::Register),
                    ..Identity::default()
                });
            }
            tracing::info!(addr = %creds.addr, "refused: no credentials");
            return AuthDecision::Deny(AuthFailure::BadCredentials);
        };
        if let Some(left) = self.throttle.locked(Some(user), ip, Instant::now()) {
            tracing::warn!(user, addr = %creds.addr, retry_in_ms = left.as_millis() as u64, "login throttled");
            return AuthDecision::Deny(AuthFailure::Throttled);
        }
        let Some(password) = creds.password.clone() else {
            self.throttle.failure(Some(user), ip, Instant::now());
            tracing::info!(user, addr = %creds.addr, "refused: no password");
            return AuthDecision::Deny(AuthFailure::BadCredentials);
        };
        if tokens::looks_like_token(&password) {
            return match self.tokens.check(&password) {
                Some(rec) if rec.user == user => {
                    self.throttle.success(Some(user));
                    AuthDecision::Allow(Identity {
                        token: Some(rec.name.into()),
                        ..Identity::default()
                    })
                }
                _ => {
                    self.throttle.failure(Some(user), ip, Instant::now());
                    tracing::info!(user, addr = %creds.addr, "refused: unknown or revoked device token");
                    AuthDecision::Deny(AuthFailure::BadCredentials)
                }
            };
        }
        if reset::looks_like_reset(&password) {
            let (store, name, pw) = (self.store.clone(), user.to_owned(), password.clone());
            let ok = tokio::task::spawn_blocking(move || reset::valid(&store, &name, &pw)).await;
            return match ok {
                Ok(Ok(true)) => AuthDecision::Allow(Identity {
                    restriction: Some(Restriction::Reset),
                    ..Identity::default()
                }),
                Ok(Ok(false)) => {
                    self.throttle.failure(Some(user), ip, Instant::now());
                    tracing::info!(user, addr = %creds.addr, "refused: invalid, used or expired reset token");
                    AuthDecision::Deny(AuthFailure::BadCredentials)
                }
                _ => AuthDecision::Deny(AuthFailure::Unavailable),
            };
        }
        let Ok(_permit) = self.workers.acquire().await else {
            return AuthDecision::Deny(AuthFailure::Unavailable);
        };
        let store = self.store.clone();
        let name = user.to_owned();
        let dummy = self.dummy_hash.clone();
        let verdict = tokio::task::spawn_blocking(move || -> Result<Option<bool>, crate::store::StoreError> {
            match store.user(&name)? {
                Some(rec) => Ok(password::verify(&password, &rec.password_hash).then_some(rec.admin)),
                None => {
                    // Spend the same time as for a real account, so timing does not
                    // reveal which user names exist.
                    password::verify(&password, &dummy);
                    Ok(None)
                }
            }
        })
        .await;
        match verdict {
            Ok(Ok(Some(admin))) => {
                self.throttle.success(Some(user));
                AuthDecision::Allow(Identity {
                    admin,
                    ..Identity::default()
                })
            }
            Ok(Ok(None)) => {
                self.throttle.failure(Some(user), ip, Instant::now());
                tracing::info!(user, addr = %creds.addr, "refused: bad user name or password");
                AuthDecision::Deny(AuthFailure::BadCredentials)
            }
            Ok(Err(e)) => {
                tracing::error!(user, error = %e, "account lookup failed");
                AuthDecision::Deny(AuthFailure::Unavailable)
            }
            Err(e) => {
                tracing::error!(user, error = %e, "password verification task failed");
                AuthDecision::Deny(AuthFailure::Unavailable)
            }
        }
    }
}

impl Hook for PasswordAuth {
    fn name(&self) -> &'static str {
        "password-auth"
    }

    fn authenticate<'a>(&'a self, creds: &'a Credentials) -> HookFuture<'a, AuthDecision> {
        Box::pin(self.check(creds))
    }
}
