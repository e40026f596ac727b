//! What can go wrong, as one line for people and an exit code for scripts.

use std::time::Duration;

use natter_shared::api::ErrorCode;
use natter_shared::codec::reason;

/// Exit codes (also in `natter --help`).
pub mod exit {
    /// Anything else: a local problem (a file, the config), an unexpected answer.
    pub const OTHER: i32 = 1;
    /// Bad usage (clap's own code).
    pub const USAGE: i32 = 2;
    /// The broker is unreachable or the connection was lost.
    pub const UNREACHABLE: i32 = 3;
    /// Not logged in, wrong password or token, revoked login.
    pub const AUTH: i32 = 4;
    /// No answer within `--timeout`.
    pub const TIMEOUT: i32 = 5;
    /// The broker refused: unknown user or group, not a member, not allowed, conflict.
    pub const REFUSED: i32 = 6;
    /// Too many attempts: try later.
    pub const RATE_LIMITED: i32 = 7;
}

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("cannot reach {server}: {why}")]
    Unreachable { server: String, why: String },
    #[error("{0}")]
    Lost(String),
    #[error("login refused: {0}")]
    Login(String),
    #[error("too many attempts: {0}")]
    Throttled(String),
    #[error("timed out after {secs} s {what}", secs = .0.as_secs_f32(), what = .1)]
    Timeout(Duration, String),
    /// The API said no.
    #[error("{message}")]
    Api { code: ErrorCode, message: String },
    /// A publish was refused (its Reason String, or what its code means).
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    NotLoggedIn(String),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Local(String),
}

impl Failure {
    pub fn lost(why: impl Into<String>) -> Failure {
        Failure::Lost(why.into())
    }

    /// A refused CONNECT.
    pub fn login(code: u8, why: Option<String>) -> Failure {
        let text = why.unwrap_or_else(|| crate::link::reason_text(code).to_owned());
        match code {
            reason::CONNECTION_RATE_EXCEEDED => Failure::Throttled(text),
            _ => Failure::Login(text),
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Unreachable { .. } | Failure::Lost(_) => exit::UNREACHABLE,
            Failure::Login(_) | Failure::NotLoggedIn(_) => exit::AUTH,
            Failure::Throttled(_) => exit::RATE_LIMITED,
            Failure::Timeout(..) => exit::TIMEOUT,
            Failure::Api { code, .. } => match code {
                ErrorCode::BadCredentials => exit::AUTH,
                ErrorCode::RateLimited => exit::RATE_LIMITED,
                ErrorCode::BadRequest | ErrorCode::UnknownCommand | ErrorCode::Internal => exit::OTHER,
                _ => exit::REFUSED,
            },
            Failure::Refused(_) => exit::REFUSED,
            Failure::Usage(_) => exit::USAGE,
            Failure::Local(_) => exit::OTHER,
        }
    }

    /// A stable word for `--json` error output.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Unreachable { .. } => "unreachable",
            Failure::Lost(_) => "connection_lost",
            Failure::Login(_) => "login_refused",
            Failure::NotLoggedIn(_) => "not_logged_in",
            Failure::Throttled(_) => "rate_limited",
            Failure::Timeout(..) => "timeout",
            Failure::Api { .. } => "api_error",
            Failure::Refused(_) => "refused",
            Failure::Usage(_) => "usage",
            Failure::Local(_) => "local",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_has_its_exit_code() {
        assert_eq!(
            Failure::login(reason::BAD_USERNAME_OR_PASSWORD, None).exit_code(),
            exit::AUTH
        );
        assert_eq!(
            Failure::login(reason::CONNECTION_RATE_EXCEEDED, None).exit_code(),
            exit::RATE_LIMITED
        );
        let api = |code| Failure::Api {
            code,
            message: String::new(),
        };
        assert_eq!(api(ErrorCode::NotFound).exit_code(), exit::REFUSED);
        assert_eq!(api(ErrorCode::NotMember).exit_code(), exit::REFUSED);
        assert_eq!(api(ErrorCode::BadCredentials).exit_code(), exit::AUTH);
        assert_eq!(
            Failure::Timeout(Duration::from_secs(1), "x".into()).exit_code(),
            exit::TIMEOUT
        );
        assert_eq!(
            Failure::Unreachable {
                server: "s".into(),
                why: "w".into()
            }
            .exit_code(),
            exit::UNREACHABLE
        );
    }
}
