//! argon2id password hashing (PHC strings). Blocking: call from blocking threads.

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use thiserror::Error;

use crate::config::AuthConfig;

#[derive(Debug, Error)]
pub enum PasswordError {
    #[error("invalid argon2 parameters: {0}")]
    Params(String),
    #[error("cannot hash password: {0}")]
    Hash(String),
    #[error("password must be 1 to 1024 bytes")]
    BadLength,
}

/// Longest password accepted, in bytes.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// Hashes passwords with the configured argon2id parameters.
#[derive(Clone)]
pub struct PasswordHasherConfig {
    params: Params,
}

impl PasswordHasherConfig {
    /// # Errors
    /// Parameters argon2 refuses.
    pub fn new(cfg: &AuthConfig) -> Result<Self, PasswordError> {
        let params = Params::new(
            cfg.argon2_memory_kib,
            cfg.argon2_iterations,
            cfg.argon2_parallelism,
            None,
        )
        .map_err(|e| PasswordError::Params(e.to_string()))?;
        Ok(PasswordHasherConfig { params })
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// Hashes `password` with a fresh random salt into a PHC string.
    ///
    /// # Errors
    /// Empty or over-long passwords.
    pub fn hash(&self, password: &[u8]) -> Result<String, PasswordError> {
        if password.is_empty() || password.len() > MAX_PASSWORD_LEN {
            return Err(PasswordError::BadLength);
        }
        let salt = SaltString::generate(&mut OsRng);
        self.argon2()
            .hash_password(password, &salt)
            .map(|h| h.to_string())
            .map_err(|e| PasswordError::Hash(e.to_string()))
    }
}

/// True when `password` matches the PHC string (whatever parameters it was made with).
/// A malformed stored hash never matches.
pub fn verify(password: &[u8], phc: &str) -> bool {
    if password.len() > MAX_PASSWORD_LEN {
        return false;
    }
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default().verify_password(password, &parsed).is_ok(),
        Err(e) => {
            tracing::error!(error = %e, "stored password hash is malformed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn hash_and_verify() {
        let mut cfg = Config::default_config().auth;
        cfg.argon2_memory_kib = 64;
        cfg.argon2_iterations = 1;
        let h = PasswordHasherConfig::new(&cfg).unwrap();
        let phc = h.hash(b"hunter2").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify(b"hunter2", &phc));
        assert!(!verify(b"hunter3", &phc));
        assert!(!verify(b"hunter2", "not a hash"));
        assert!(h.hash(b"").is_err());
        assert_ne!(h.hash(b"hunter2").unwrap(), phc, "salts differ");
    }

    #[test]
    fn hashes_carry_the_configured_parameters() {
        let mut cfg = Config::default_config().auth;
        cfg.argon2_memory_kib = 72;
        cfg.argon2_iterations = 3;
        cfg.argon2_parallelism = 2;
        let phc = PasswordHasherConfig::new(&cfg).unwrap().hash(b"pw").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=72,t=3,p=2$"), "{phc}");
    }

    #[test]
    fn passwords_up_to_1024_bytes_are_hashed_and_verified() {
        let mut cfg = Config::default_config().auth;
        cfg.argon2_memory_kib = 64;
        cfg.argon2_iterations = 1;
        let h = PasswordHasherConfig::new(&cfg).unwrap();
        let longest = vec![b'p'; MAX_PASSWORD_LEN];
        let phc = h.hash(&longest).unwrap();
        assert!(verify(&longest, &phc));
        let one = h.hash(b"x").unwrap();
        assert!(verify(b"x", &one));
        let too_long = vec![b'p'; MAX_PASSWORD_LEN + 1];
        assert!(matches!(h.hash(&too_long), Err(PasswordError::BadLength)));
        // Even a hash made from it does not admit an over-long password: the length
        // check comes before any hashing.
        let phc_long = Argon2::default()
            .hash_password(&too_long, &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string();
        assert!(!verify(&too_long, &phc_long));
    }
}
