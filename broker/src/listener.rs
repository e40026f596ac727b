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
    pub ctx: Context,
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
                _ = crate::server::stopped(&mut shutdown) => break,
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
