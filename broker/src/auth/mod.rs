//! The first plugin: password and device-token authentication against the account
//! store.
//!
//! argon2id verification runs on blocking threads through the bounded pool of the
//! [`LoginGuard`] (`verify_workers` permits, shared with every other password check),
//! so a login storm queues here and never starves message traffic on the async
//! runtime; the guard's throttle slows guessing per user name and per address. Device tokens (see [`tokens`]) are
//! checked in memory with one SHA-256; they never carry admin rights.

use std::sync::Arc;

use crate::accounts::guard::{Gate, LoginGuard};
use crate::accounts::tokens::{self, TokenIndex};
use crate::accounts::{password, reset};
use crate::config::AuthConfig;
use crate::hooks::{AuthDecision, AuthFailure, Credentials, Hook, HookFuture, Identity};
use crate::model::Restriction;
use crate::store::Store;

/// Authenticates CONNECT credentials against stored argon2id hashes.
pub struct PasswordAuth {
    store: Store,
    tokens: TokenIndex,
    allow_anonymous: bool,
    /// Clients without an account are admitted to register (only).
    registration_open: bool,
    guard: Arc<LoginGuard>,
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
        guard: Arc<LoginGuard>,
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
            guard,
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
        if let Gate::Locked(left) = self.guard.gate(ip) {
            tracing::warn!(user, addr = %creds.addr, retry_in_ms = left.as_millis() as u64, "login throttled");
            return AuthDecision::Deny(AuthFailure::Throttled);
        }
        let Some(password) = creds.password.clone() else {
            self.guard.failure(Some(user), ip);
            tracing::info!(user, addr = %creds.addr, "refused: no password");
            return AuthDecision::Deny(AuthFailure::BadCredentials);
        };
        if tokens::looks_like_token(&password) {
            return match self.tokens.check(&password) {
                Some(rec) if rec.user == user => {
                    self.guard.success(user);
                    AuthDecision::Allow(Identity {
                        token: Some(rec.name.into()),
                        ..Identity::default()
                    })
                }
                _ => {
                    self.guard.failure(Some(user), ip);
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
                    self.guard.failure(Some(user), ip);
                    tracing::info!(user, addr = %creds.addr, "refused: invalid, used or expired reset token");
                    AuthDecision::Deny(AuthFailure::BadCredentials)
                }
                _ => AuthDecision::Deny(AuthFailure::Unavailable),
            };
        }
        let Some(_worker) = self.guard.worker().await else {
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
                self.guard.success(user);
                AuthDecision::Allow(Identity {
                    admin,
                    ..Identity::default()
                })
            }
            Ok(Ok(None)) => {
                self.guard.failure(Some(user), ip);
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::config::Config;
    use crate::store::{TokenRecord, UserRecord};

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        tokens: TokenIndex,
        cfg: AuthConfig,
    }

    fn fixture(tune: impl FnOnce(&mut AuthConfig)) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut cfg = Config::default_config().auth;
        cfg.argon2_memory_kib = 64;
        cfg.argon2_iterations = 1;
        cfg.argon2_parallelism = 1;
        cfg.throttle_free_failures = 2;
        cfg.throttle_base_delay_ms = 60_000;
        tune(&mut cfg);
        let hasher = password::PasswordHasherConfig::new(&cfg).unwrap();
        for (name, pw, admin) in [("alice", "alice-pw", false), ("root", "root-pw", true)] {
            let rec = UserRecord {
                password_hash: hasher.hash(pw.as_bytes()).unwrap(),
                admin,
                created_at: 0,
            };
            store.create_user(name, &rec).unwrap();
        }
        Fixture {
            _dir: dir,
            store,
            tokens: TokenIndex::default(),
            cfg,
        }
    }

    impl Fixture {
        fn auth(&self, registration_open: bool) -> PasswordAuth {
            let guard = Arc::new(LoginGuard::new(&self.cfg, 10));
            PasswordAuth::new(
                self.store.clone(),
                self.tokens.clone(),
                &self.cfg,
                guard,
                registration_open,
            )
            .unwrap()
        }
    }

    fn creds(user: Option<&str>, password: Option<&str>, addr: &str) -> Credentials {
        Credentials {
            username: user.map(str::to_owned),
            password: password.map(|p| Bytes::copy_from_slice(p.as_bytes())),
            client_id: "c".into(),
            addr: addr.parse().unwrap(),
        }
    }

    const HOME: &str = "10.0.0.1:1000";
    const BAD: AuthDecision = AuthDecision::Deny(AuthFailure::BadCredentials);
    const THROTTLED: AuthDecision = AuthDecision::Deny(AuthFailure::Throttled);

    #[tokio::test]
    async fn passwords_admit_the_right_user_with_their_rights() {
        let f = fixture(|_| ());
        let auth = f.auth(false);
        assert_eq!(
            auth.check(&creds(Some("alice"), Some("alice-pw"), HOME)).await,
            AuthDecision::Allow(Identity::default())
        );
        let root = auth.check(&creds(Some("root"), Some("root-pw"), "10.0.0.2:1")).await;
        assert_eq!(
            root,
            AuthDecision::Allow(Identity {
                admin: true,
                ..Identity::default()
            })
        );
        assert_eq!(
            auth.check(&creds(Some("alice"), Some("root-pw"), "10.0.0.3:1")).await,
            BAD
        );
        assert_eq!(auth.check(&creds(Some("nobody"), Some("x"), "10.0.0.4:1")).await, BAD);
        assert_eq!(auth.check(&creds(Some("alice"), None, "10.0.0.5:1")).await, BAD);
    }

    #[tokio::test]
    async fn clients_without_a_user_name_are_anonymous_registrants_or_refused() {
        let f = fixture(|_| ());
        assert_eq!(f.auth(false).check(&creds(None, None, HOME)).await, BAD);
        let register = AuthDecision::Allow(Identity {
            restriction: Some(Restriction::Register),
            ..Identity::default()
        });
        assert_eq!(f.auth(true).check(&creds(None, None, HOME)).await, register);
        // A password without a user name is never a registrant.
        assert_eq!(f.auth(true).check(&creds(None, Some("x"), HOME)).await, BAD);

        let f = fixture(|c| c.allow_anonymous = true);
        assert_eq!(
            f.auth(true).check(&creds(None, None, HOME)).await,
            AuthDecision::Allow(Identity::default()),
            "anonymous access wins over registration"
        );
        assert_eq!(f.auth(false).check(&creds(None, Some("x"), HOME)).await, BAD);
    }

    #[tokio::test]
    async fn device_tokens_admit_only_their_owner_and_never_as_admin() {
        let f = fixture(|_| ());
        let token = tokens::generate();
        f.tokens.insert(
            tokens::digest(token.as_bytes()),
            TokenRecord {
                user: "root".into(),
                name: "sensor-1".into(),
                created_at: 0,
            },
        );
        let auth = f.auth(false);
        assert_eq!(
            auth.check(&creds(Some("root"), Some(&token), HOME)).await,
            AuthDecision::Allow(Identity {
                token: Some("sensor-1".into()),
                ..Identity::default()
            })
        );
        assert_eq!(auth.check(&creds(Some("alice"), Some(&token), "10.0.0.2:1")).await, BAD);
        assert_eq!(
            auth.check(&creds(Some("root"), Some(&tokens::generate()), "10.0.0.3:1"))
                .await,
            BAD
        );
    }

    #[tokio::test]
    async fn reset_tokens_admit_their_user_restricted() {
        let f = fixture(|_| ());
        let (token, _) = reset::issue(&f.store, "alice", 60).unwrap();
        let auth = f.auth(false);
        assert_eq!(
            auth.check(&creds(Some("alice"), Some(&token), HOME)).await,
            AuthDecision::Allow(Identity {
                restriction: Some(Restriction::Reset),
                ..Identity::default()
            })
        );
        assert_eq!(auth.check(&creds(Some("root"), Some(&token), "10.0.0.2:1")).await, BAD);
    }

    #[tokio::test]
    async fn every_kind_of_failure_counts_towards_the_lockout() {
        // Two free failures, then locked: each kind of wrong secret below is one.
        let wrong = [
            "wrong-password".to_owned(),
            tokens::generate(),
            reset::issue(&fixture(|_| ()).store, "alice", 60).unwrap().0,
        ];
        for (i, secret) in wrong.iter().enumerate() {
            let f = fixture(|_| ());
            let auth = f.auth(false);
            for n in 0..3 {
                let addr = format!("10.0.{i}.{n}:1");
                assert_eq!(
                    auth.check(&creds(Some("alice"), Some(secret), &addr)).await,
                    BAD,
                    "{i}/{n}"
                );
            }
            assert_locked_out(&auth, &format!("kind {i}")).await;
        }
        let f = fixture(|_| ());
        let auth = f.auth(false);
        for n in 0..3 {
            assert_eq!(
                auth.check(&creds(Some("alice"), None, &format!("10.0.0.{n}:1"))).await,
                BAD
            );
        }
        assert_locked_out(&auth, "no password").await;
    }

    /// alice's name is under lockout: one more failure at it locks its address at
    /// once, while her password still admits her from an address that did not fail.
    async fn assert_locked_out(auth: &PasswordAuth, what: &str) {
        let guesser = "10.9.9.8:1";
        assert_eq!(auth.check(&creds(Some("alice"), Some("guess"), guesser)).await, BAD);
        assert_eq!(
            auth.check(&creds(Some("alice"), Some("alice-pw"), guesser)).await,
            THROTTLED,
            "{what}: a failure at a locked name locks its address at once"
        );
        assert_eq!(
            auth.check(&creds(Some("alice"), Some("alice-pw"), "10.9.9.9:1")).await,
            AuthDecision::Allow(Identity::default()),
            "{what}: the right password from a clean address is not refused"
        );
    }

    #[tokio::test]
    async fn a_good_login_clears_the_user_name_record() {
        let f = fixture(|_| ());
        let auth = f.auth(false);
        for n in 0..2 {
            let addr = format!("10.0.0.{n}:1");
            assert_eq!(auth.check(&creds(Some("alice"), Some("no"), &addr)).await, BAD);
        }
        assert!(matches!(
            auth.check(&creds(Some("alice"), Some("alice-pw"), "10.0.1.1:1")).await,
            AuthDecision::Allow(_)
        ));
        // Had the two failures stayed, this third one would lock alice everywhere.
        assert_eq!(auth.check(&creds(Some("alice"), Some("no"), "10.0.2.1:1")).await, BAD);
        assert!(matches!(
            auth.check(&creds(Some("alice"), Some("alice-pw"), "10.0.3.1:1")).await,
            AuthDecision::Allow(_)
        ));
        // The same holds after a token login.
        let token = tokens::generate();
        f.tokens.insert(
            tokens::digest(token.as_bytes()),
            TokenRecord {
                user: "alice".into(),
                name: "t".into(),
                created_at: 0,
            },
        );
        for n in 0..2 {
            assert_eq!(
                auth.check(&creds(Some("alice"), Some("no"), &format!("10.1.0.{n}:1")))
                    .await,
                BAD
            );
        }
        assert!(matches!(
            auth.check(&creds(Some("alice"), Some(&token), "10.1.1.1:1")).await,
            AuthDecision::Allow(_)
        ));
        assert_eq!(auth.check(&creds(Some("alice"), Some("no"), "10.1.2.1:1")).await, BAD);
        assert!(matches!(
            auth.check(&creds(Some("alice"), Some("alice-pw"), "10.1.3.1:1")).await,
            AuthDecision::Allow(_)
        ));
    }
}
