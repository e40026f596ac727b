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

use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::admin::{Admin, Request, Response};

/// File name of the socket inside the data directory.
pub const SOCKET_NAME: &str = "natterd.sock";
/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;
/// Bound on each exchange, so neither side ever hangs.
pub const TIMEOUT: Duration = Duration::from_secs(10);

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
/// Serves the socket until shutdown: `owner_uid` (the socket file's owner) and root
/// may use it.
pub async fn serve(listener: UnixListener, admin: Admin, owner_uid: u32, mut shutdown: watch::Receiver<bool>) {
    let state = Arc::new((admin, owner_uid));
    loop {
        tokio::select! {
            _ = crate::shutdown::stopped(&mut shutdown) => break,
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

async fn handle(stream: UnixStream, state: &(Admin, u32)) -> io::Result<()> {
    let (admin, owner_uid) = state;
    if !peer_allowed(&stream, *owner_uid) {
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
            Ok(req) => apply(req, admin).await,
            Err(e) => Response::error(format!("bad request: {e}")),
        }
    };
    let mut out = serde_json::to_vec(&response).map_err(io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

async fn apply(req: Request, admin: &Admin) -> Response {
    let admin = admin.clone();
    let result = tokio::task::spawn_blocking(move || admin.apply(req)).await;
    match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Response::error(e),
        Err(e) => Response::error(format!("internal error: {e}")),
    }
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
        state: Admin,
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
        let state = Admin {
            store: crate::store::Store::open(&dir.path().join("store")).unwrap(),
            hasher: crate::accounts::password::PasswordHasherConfig::new(&cfg.auth).unwrap(),
            tokens: crate::accounts::tokens::TokenIndex::default(),
            reset_ttl_secs: 120,
            connections: Arc::new(crate::router::Router::new(cfg.limits.clone())),
        };
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(serve(listener, state.clone(), owner_uid, rx));
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
        assert!(crate::accounts::password::verify(b"another password", &hash));

        let reset = r.ask(Request::UserReset { name: "alice".into() }).await;
        let token = reset.token.unwrap();
        assert!(crate::accounts::reset::valid(&r.state.store, "alice", token.as_bytes()).unwrap());
        assert!(reset.expires_at.unwrap() >= crate::clock::unix_secs() + 119);
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
