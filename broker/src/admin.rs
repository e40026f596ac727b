//! Account administration as requests and responses: one implementation behind the
//! local control socket (`natterd user ...`, `natterd token ...`) and the admin API
//! (`api/admin.*`). It changes the store, then the live state: the token index, and
//! the connections of a deleted user or a revoked token, through [`Connections`].

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::accounts::password::PasswordHasherConfig;
use crate::accounts::tokens::TokenIndex;
use crate::accounts::{self, AccountError, AccountInfo, TokenInfo};
use crate::model::Kick;
use crate::router::Router;
use crate::store::Store;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    UserAdd {
        name: String,
        password: String,
        admin: bool,
    },
    UserPasswd {
        name: String,
        password: String,
    },
    UserDel {
        name: String,
    },
    UserList,
    TokenAdd {
        user: String,
        name: String,
    },
    /// Issue a one-time password reset token.
    UserReset {
        name: String,
    },
    TokenList {
        user: Option<String>,
    },
    TokenRevoke {
        user: String,
        name: String,
    },
    /// Copy the store into a new one under `dest` (an absolute path), while the
    /// broker runs or not (see `store::backup`).
    Backup {
        dest: std::path::PathBuf,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<AccountInfo>>,
    /// A new token's secret (shown once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Vec<TokenInfo>>,
    /// Expiry of a reset token (seconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Records a backup copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
}

impl Response {
    /// A refusal, with its cause for people.
    pub fn error(e: impl ToString) -> Response {
        Response {
            ok: false,
            error: Some(e.to_string()),
            ..Response::default()
        }
    }
}

/// What administration needs of the live connections: closing those of a user, or of
/// one of their device tokens. The router implements it; with no broker running,
/// [`NoConnections`] does.
pub trait Connections: Send + Sync {
    /// Closes `user`'s connections (only those logged in with the token `token` when
    /// given); returns how many.
    fn close(&self, user: &str, token: Option<&str>) -> usize;
}

impl Connections for Router {
    fn close(&self, user: &str, token: Option<&str>) -> usize {
        self.kick_user(user, token, Kick::Administrative)
    }
}

/// For `natterd user ...` with no broker running: nobody is connected.
pub struct NoConnections;

impl Connections for NoConnections {
    fn close(&self, _user: &str, _token: Option<&str>) -> usize {
        0
    }
}

/// What administration works on; cheap to clone.
#[derive(Clone)]
pub struct Admin {
    pub store: Store,
    pub hasher: PasswordHasherConfig,
    /// The live token index, kept in step with the store.
    pub tokens: TokenIndex,
    /// Lifetime of password reset tokens, in seconds.
    pub reset_ttl_secs: u32,
    pub connections: Arc<dyn Connections>,
}

impl Admin {
    /// Applies a request to the store, then to the live state (token index,
    /// connections). Blocking. `natterd user ...` also calls it directly, with no
    /// connections and an idle index, when no broker runs.
    ///
    /// # Errors
    /// What the account operations refuse.
    pub fn apply(&self, req: Request) -> Result<Response, AccountError> {
        let response = self.change(req)?;
        // Durable (when `sync`) before the caller hears it is done.
        self.store.commit()?;
        Ok(response)
    }

    fn change(&self, req: Request) -> Result<Response, AccountError> {
        let st = self;
        let ok = Response {
            ok: true,
            ..Response::default()
        };
        Ok(match req {
            Request::Backup { dest } => {
                tracing::info!(dest = %dest.display(), "admin: backup");
                let records = st.store.backup(&dest)?;
                tracing::info!(dest = %dest.display(), records, "backup written");
                Response {
                    records: Some(records),
                    ..ok
                }
            }
            Request::UserAdd { name, password, admin } => {
                tracing::info!(user = %name, admin, "admin: add user");
                accounts::add(&st.store, &st.hasher, &name, password.as_bytes(), admin)?;
                ok
            }
            Request::UserPasswd { name, password } => {
                tracing::info!(user = %name, "admin: change password");
                accounts::passwd(&st.store, &st.hasher, &name, password.as_bytes())?;
                ok
            }
            Request::UserDel { name } => {
                tracing::info!(user = %name, "admin: delete user");
                let revoked = accounts::delete(&st.store, &name)?;
                st.tokens.remove(&revoked);
                let n = st.connections.close(&name, None);
                tracing::info!(user = %name, connections = n, "closed the deleted user's connections");
                ok
            }
            Request::UserList => Response {
                users: Some(accounts::list(&st.store)?),
                ..ok
            },
            Request::TokenAdd { user, name } => {
                tracing::info!(%user, token = %name, "admin: add device token");
                let new = accounts::token_add(&st.store, &user, &name)?;
                st.tokens.insert(new.digest, new.record);
                Response {
                    token: Some(new.token),
                    ..ok
                }
            }
            Request::UserReset { name } => {
                tracing::info!(user = %name, "admin: issue a password reset token");
                if st.store.user(&name)?.is_none() {
                    return Err(AccountError::Store(crate::store::StoreError::NoSuchUser(name)));
                }
                let (token, expires_at) = crate::accounts::reset::issue(&st.store, &name, st.reset_ttl_secs)?;
                Response {
                    token: Some(token),
                    expires_at: Some(expires_at),
                    ..ok
                }
            }
            Request::TokenList { user } => Response {
                tokens: Some(accounts::token_list(&st.store, user.as_deref())?),
                ..ok
            },
            Request::TokenRevoke { user, name } => {
                tracing::info!(%user, token = %name, "admin: revoke device token");
                let revoked = accounts::token_revoke(&st.store, &user, &name)?;
                st.tokens.remove(&revoked);
                let n = st.connections.close(&user, Some(&name));
                tracing::info!(%user, token = %name, connections = n, "closed the revoked token's connections");
                ok
            }
        })
    }
}
