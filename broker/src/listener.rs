//! The accept loop: a connection permit per client (over the limit, the socket is
//! closed at once), TCP_NODELAY, retry with doubling backoff on accept errors, and a
//! tracker so shutdown can wait for every connection task to end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::session::{self, Context};

pub struct Listener {
    pub listener: TcpListener,
    /// One permit per open connection (limits.max_connections).
    pub permits: Arc<Semaphore>,
    pub ctx: Arc<Context>,
    /// Each connection task holds a clone; when the last is dropped the receiver
    /// learns that every connection has ended.
    pub tracker: mpsc::Sender<()>,
}

impl Listener {
    /// Accepts until shutdown, then returns (dropping the listening socket).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(5);
        let mut last_limit_warning: Option<Instant> = None;
        loop {
            let accepted = tokio::select! {
                _ = crate::shutdown::stopped(&mut shutdown) => break,
                r = self.listener.accept() => r,
            };
            match accepted {
                Ok((stream, addr)) => {
                    backoff = Duration::from_millis(5);
                    let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                        if last_limit_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                            tracing::warn!(%addr, "connection limit reached: closing new connections");
                            last_limit_warning = Some(Instant::now());
                        }
                        drop(stream);
                        continue;
                    };
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(%addr, error = %e, "cannot set TCP_NODELAY");
                    }
                    let ctx = self.ctx.clone();
                    let done = self.tracker.clone();
                    tokio::spawn(session::serve(stream, addr, ctx, (permit, done)));
                }
                Err(e) => {
                    tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use natter_shared::codec::{decode, reason, Connect, Packet, Properties, Protocol};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::config::Config;
    use crate::hooks::{AuthDecision, Credentials, Hook, HookFuture, Hooks, Identity};
    use crate::router::Router;

    struct Anyone;

    impl Hook for Anyone {
        fn name(&self) -> &'static str {
            "anyone"
        }

        fn authenticate<'a>(&'a self, _: &'a Credentials) -> HookFuture<'a, AuthDecision> {
            Box::pin(async { AuthDecision::Allow(Identity::default()) })
        }
    }

    /// Connects and says CONNECT; the CONNACK's code, or `None` when the broker closed
    /// the socket without one.
    async fn hello(addr: std::net::SocketAddr, id: &str) -> (TcpStream, Option<u8>) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut buf = BytesMut::new();
        Packet::Connect(Box::new(Connect {
            protocol: Protocol::V5,
            clean_start: true,
            keep_alive: 0,
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        }))
        .encode(&mut buf, Protocol::V5);
        // The broker may have closed already: a failed write is a refusal too.
        let _ = s.write_all(&buf).await;
        let mut got = BytesMut::new();
        let code = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Ok(Some(Packet::ConnAck(c))) = decode(&mut got, Protocol::V5, 1 << 20) {
                    return Some(c.code);
                }
                let mut chunk = [0u8; 512];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .expect("an answer or a close");
        (s, code)
    }

    #[tokio::test]
    async fn connections_over_the_limit_are_closed_until_a_permit_frees() {
        let limits = Config::default_config().limits;
        let (stop, shutdown) = watch::channel(false);
        let ctx = Context::new(
            Router::new(limits.clone()),
            Hooks::new(vec![Arc::new(Anyone)]),
            Arc::new(limits),
            shutdown.clone(),
            crate::session::persist::Persister::off(),
        );
        let (tracker, mut all_done) = mpsc::channel(1);
        let router = ctx.router.clone();
        let listener = Listener {
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            permits: Arc::new(Semaphore::new(2)),
            ctx,
            tracker,
        };
        let addr = listener.listener.local_addr().unwrap();
        let task = tokio::spawn(listener.run(shutdown));

        let (first, code) = hello(addr, "one").await;
        assert_eq!(code, Some(reason::SUCCESS));
        let (_second, code) = hello(addr, "two").await;
        assert_eq!(code, Some(reason::SUCCESS));
        let (_, code) = hello(addr, "three").await;
        assert_eq!(code, None, "over the limit: closed without an answer");

        drop(first);
        // The permit comes back when the first connection's task ends.
        let mut served = None;
        for _ in 0..200 {
            if let (s, Some(code)) = hello(addr, "four").await {
                served = Some((s, code));
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(served.as_ref().map(|s| s.1), Some(reason::SUCCESS));

        // Shutdown ends the loop and, once the server has kicked every connection and
        // their tasks are gone, the tracker.
        stop.send(true).unwrap();
        task.await.unwrap();
        router.kick_all(crate::model::Kick::Shutdown);
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listening socket is closed"
        );
        drop(served);
        let ended = tokio::time::timeout(Duration::from_secs(5), all_done.recv()).await;
        assert_eq!(ended.ok(), Some(None), "every connection task ended");
    }
}
