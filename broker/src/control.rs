//! The local control socket: how `natterd user ...` administers accounts while a
//! broker runs (sled locks the store, so the CLI cannot open it then).
//!
//! A Unix socket at `{data_dir}/natterd.sock`, mode 0600, that only the broker's own
//! user (or root) may use (checked with the peer's credentials). One JSON request per
//! line, one JSON response per line.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::accounts::{self, AccountInfo, TokenInfo};
use crate::auth::password::PasswordHasherConfig;
use crate::auth::tokens::TokenIndex;
use crate::router::Router;
use crate::session::Kick;
use crate::store::Store;

/// File name of the socket inside the data directory.
pub const SOCKET_NAME: &str = "natterd.sock";
/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;
/// Bound on each exchange, so neither side ever hangs.
pub const TIMEOUT: Duration = Duration::from_secs(10);

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
}

impl Response {
    fn error(e: impl ToString) -> Response {
        Response {
            ok: false,
            error: Some(e.to_string()),
            ..Response::default()
        }
    }
}

#[derive(Debug, Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("control socket {0}: no answer within {TIMEOUT:?}")]
    Timeout(PathBuf),
    #[error("control socket {0}: unreadable answer")]
    BadAnswer(PathBuf),
}

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// What the control server needs.
#[derive(Clone)]
pub struct ControlState {
    pub store: Store,
    pub hasher: PasswordHasherConfig,
    pub router: Router,
    /// The live token index, kept in step with the store.
    pub tokens: TokenIndex,
    /// Lifetime of password reset tokens, in seconds.
    pub reset_ttl_secs: u32,
    /// The broker's user (owner of the socket file): the only one, with root, allowed in.
    pub owner_uid: u32,
}

/// Binds the socket, replacing a stale file (the store lock already proved that no
/// other broker uses this data dir). Returns the listener, its path and its owner.
///
/// # Errors
/// Bind and permission errors.
pub fn bind(data_dir: &Path) -> io::Result<(UnixListener, PathBuf, u32)> {
    let path = socket_path(data_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&path)?);
    Ok((listener, path, owner))
}

/// Serves the control socket until shutdown.
pub async fn serve(listener: UnixListener, state: ControlState, mut shutdown: watch::Receiver<bool>) {
    let state = Arc::new(state);
    loop {
        tokio::select! {
            _ = crate::server::stopped(&mut shutdown) => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let state = state.clone();
                    tokio::spawn(async move {
                        if let Err(e) = tokio::time::timeout(TIMEOUT, handle(stream, &state)).await.unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())) {
                            tracing::warn!(error = %e, "control connection failed");
                        }
                    });
                }
                Err(e) => {
                    tracing::error!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

fn peer_allowed(stream: &UnixStream, owner_uid: u32) -> bool {
    match stream.peer_cred() {
        Ok(cred) => cred.uid() == owner_uid || cred.uid() == 0,
        Err(_) => false,
    }
}

async fn handle(stream: UnixStream, state: &ControlState) -> io::Result<()> {
    if !peer_allowed(&stream, state.owner_uid) {
        tracing::warn!("control socket: refused a peer of another user");
        return Ok(());
    }
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let n = BufReader::new(read.take(MAX_REQUEST as u64))
        .read_line(&mut line)
        .await?;
    let response = if n == 0 {
        return Ok(());
    } else {
        match serde_json::from_str::<Request>(&line) {
            Ok(req) => apply(req, state).await,
            Err(e) => Response::error(format!("bad request: {e}")),
        }
    };
    let mut out = serde_json::to_vec(&response).map_err(io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

async fn apply(req: Request, state: &ControlState) -> Response {
    let st = state.clone();
    let result = tokio::task::spawn_blocking(move || apply_blocking(req, &st)).await;
    match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Response::error(e),
        Err(e) => Response::error(format!("internal error: {e}")),
    }
}

/// Applies a request to the store, then to the live state (token index, connections).
/// Blocking. `natterd user ...` also calls it directly, with an idle router and index,
/// when no broker runs.
///
/// # Errors
/// What the account operations refuse.
pub fn apply_blocking(req: Request, st: &ControlState) -> Result<Response, accounts::AccountError> {
    let ok = Response {
        ok: true,
        ..Response::default()
    };
    Ok(match req {
        Request::UserAdd { name, password, admin } => {
            tracing::info!(user = %name, admin, "control: add user");
            accounts::add(&st.store, &st.hasher, &name, password.as_bytes(), admin)?;
            ok
        }
        Request::UserPasswd { name, password } => {
            tracing::info!(user = %name, "control: change password");
            accounts::passwd(&st.store, &st.hasher, &name, password.as_bytes())?;
            ok
        }
        Request::UserDel { name } => {
            tracing::info!(user = %name, "control: delete user");
            let revoked = accounts::delete(&st.store, &name)?;
            st.tokens.remove(&revoked);
            let n = st.router.kick_user(&name, None, Kick::Administrative);
            tracing::info!(user = %name, connections = n, "closed the deleted user's connections");
            ok
        }
        Request::UserList => Response {
            users: Some(accounts::list(&st.store)?),
            ..ok
        },
        Request::TokenAdd { user, name } => {
            tracing::info!(%user, token = %name, "control: add device token");
            let new = accounts::token_add(&st.store, &user, &name)?;
            st.tokens.insert(new.digest, new.record);
            Response {
                token: Some(new.token),
                ..ok
            }
        }
        Request::UserReset { name } => {
            tracing::info!(user = %name, "control: issue a password reset token");
            if st.store.user(&name)?.is_none() {
                return Err(accounts::AccountError::Store(crate::store::StoreError::NoSuchUser(
                    name,
                )));
            }
            let (token, expires_at) = crate::auth::reset::issue(&st.store, &name, st.reset_ttl_secs)?;
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
            tracing::info!(%user, token = %name, "control: revoke device token");
            let revoked = accounts::token_revoke(&st.store, &user, &name)?;
            st.tokens.remove(&revoked);
            let n = st.router.kick_user(&user, Some(&name), Kick::Administrative);
            tracing::info!(%user, token = %name, connections = n, "closed the revoked token's connections");
            ok
        }
    })
}

/// Sends one request to a running broker.
///
/// # Errors
/// Connection failures (no broker: `NotFound` / `ConnectionRefused`), timeouts and
/// unreadable answers.
pub async fn request(data_dir: &Path, req: &Request) -> Result<Response, ControlError> {
    let path = socket_path(data_dir);
    let io_err = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    let exchange = async {
        let mut stream = UnixStream::connect(&path).await.map_err(io_err)?;
        let mut line = serde_json::to_vec(req).map_err(|e| io_err(io::Error::other(e)))?;
        line.push(b'\n');
        stream.write_all(&line).await.map_err(io_err)?;
        let mut answer = String::new();
        BufReader::new(stream.take(16 * 1024 * 1024))
            .read_line(&mut answer)
            .await
            .map_err(io_err)?;
        serde_json::from_str(&answer).map_err(|_| ControlError::BadAnswer(path.clone()))
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(ControlError::Timeout(path.clone())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    struct Running {
        dir: tempfile::TempDir,
        state: ControlState,
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
    }

    async fn running() -> Running {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default_config();
        cfg.auth.argon2_memory_kib = 64;
        cfg.auth.argon2_iterations = 1;
        cfg.auth.argon2_parallelism = 1;
        let (listener, path, owner_uid) = bind(dir.path()).unwrap();
        assert_eq!(path, socket_path(dir.path()));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let state = ControlState {
            store: Store::open(&dir.path().join("store")).unwrap(),
            hasher: PasswordHasherConfig::new(&cfg.auth).unwrap(),
            router: Router::new(cfg.limits.clone()),
            tokens: TokenIndex::default(),
            reset_ttl_secs: 120,
            owner_uid,
        };
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(serve(listener, state.clone(), rx));
        Running { dir, state, stop, task }
    }

    impl Running {
        async fn ask(&self, req: Request) -> Response {
            request(self.dir.path(), &req).await.unwrap()
        }

        async fn refused(&self, req: Request) -> String {
            let r = self.ask(req).await;
            assert!(!r.ok, "{r:?}");
            r.error.unwrap()
        }
    }

    fn add(name: &str, admin: bool) -> Request {
        Request::UserAdd {
            name: name.into(),
            password: "a long password".into(),
            admin,
        }
    }

    #[tokio::test]
    async fn accounts_are_administered_through_the_socket() {
        let r = running().await;
        assert!(r.ask(add("alice", false)).await.ok);
        assert!(r.ask(add("root", true)).await.ok);
        assert!(r.refused(add("alice", false)).await.contains("alice"));
        let users = r.ask(Request::UserList).await.users.unwrap();
        let names: Vec<(&str, bool)> = users.iter().map(|u| (u.name.as_str(), u.admin)).collect();
        assert_eq!(names, [("alice", false), ("root", true)]);

        let passwd = Request::UserPasswd {
            name: "alice".into(),
            password: "another password".into(),
        };
        assert!(r.ask(passwd).await.ok);
        let hash = r.state.store.user("alice").unwrap().unwrap().password_hash;
        assert!(crate::auth::password::verify(b"another password", &hash));

        let reset = r.ask(Request::UserReset { name: "alice".into() }).await;
        let token = reset.token.unwrap();
        assert!(crate::auth::reset::valid(&r.state.store, "alice", token.as_bytes()).unwrap());
        assert!(reset.expires_at.unwrap() >= crate::im::mailbox::now_ms() / 1000 + 119);
        assert!(r
            .refused(Request::UserReset { name: "nobody".into() })
            .await
            .contains("nobody"));

        assert!(r.ask(Request::UserDel { name: "alice".into() }).await.ok);
        assert!(r.state.store.user("alice").unwrap().is_none());
        assert!(r
            .refused(Request::UserDel { name: "alice".into() })
            .await
            .contains("alice"));
        assert!(r.refused(add("bad/name", false)).await.contains("bad/name"));
        r.stop.send(true).unwrap();
        r.task.await.unwrap();
    }

    #[tokio::test]
    async fn tokens_are_kept_in_step_with_the_live_index() {
        let r = running().await;
        assert!(r.ask(add("bob", false)).await.ok);
        let token = |name: &str| Request::TokenAdd {
            user: "bob".into(),
            name: name.into(),
        };
        let t1 = r.ask(token("sensor-1")).await.token.unwrap();
        let t2 = r.ask(token("sensor-2")).await.token.unwrap();
        assert_eq!(r.state.tokens.check(t1.as_bytes()).unwrap().name, "sensor-1");
        assert!(!r.ask(token("sensor-1")).await.ok, "names are unique per user");
        let listed = r
            .ask(Request::TokenList {
                user: Some("bob".into()),
            })
            .await
            .tokens
            .unwrap();
        assert_eq!(
            listed.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["sensor-1", "sensor-2"]
        );

        let revoke = Request::TokenRevoke {
            user: "bob".into(),
            name: "sensor-1".into(),
        };
        assert!(r.ask(revoke.clone()).await.ok);
        assert!(r.state.tokens.check(t1.as_bytes()).is_none(), "revoked at once");
        assert!(r.state.tokens.check(t2.as_bytes()).is_some(), "and only that one");
        assert!(!r.ask(revoke).await.ok, "already gone");

        // Deleting the account takes its tokens out of the index too.
        assert!(r.ask(Request::UserDel { name: "bob".into() }).await.ok);
        assert!(r.state.tokens.check(t2.as_bytes()).is_none());
        assert!(r
            .ask(Request::TokenList { user: None })
            .await
            .tokens
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn malformed_and_oversized_requests_get_an_error_answer() {
        let r = running().await;
        let exchange = |bytes: Vec<u8>| {
            let path = socket_path(r.dir.path());
            async move {
                let mut s = UnixStream::connect(path).await.unwrap();
                s.write_all(&bytes).await.unwrap();
                let mut answer = String::new();
                BufReader::new(s).read_line(&mut answer).await.unwrap();
                serde_json::from_str::<Response>(&answer).unwrap()
            }
        };
        let bad = exchange(b"{\"op\":\"user_explode\"}\n".to_vec()).await;
        assert!(!bad.ok && bad.error.unwrap().starts_with("bad request"));
        // A line longer than the limit is cut there, so it is not valid JSON.
        let mut huge = b"{\"op\":\"user_del\",\"name\":\"".to_vec();
        huge.resize(MAX_REQUEST + 10, b'a');
        huge.extend_from_slice(b"\"}\n");
        let big = exchange(huge).await;
        assert!(!big.ok && big.error.unwrap().starts_with("bad request"));
        // The socket still serves.
        assert!(r.ask(Request::UserList).await.ok);
    }

    #[tokio::test]
    async fn a_request_without_a_broker_says_so() {
        let dir = tempfile::tempdir().unwrap();
        match request(dir.path(), &Request::UserList).await {
            Err(ControlError::Io { source, .. }) => assert_eq!(source.kind(), io::ErrorKind::NotFound),
            other => panic!("{other:?}"),
        }
    }
}
