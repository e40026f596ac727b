//! The stop signal: one `watch` flag that the server sets once; every long-lived loop
//! (listener, control socket, connections, will timers) selects on [`stopped`].

use tokio::sync::watch;

/// Resolves once the shutdown flag is set (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}
