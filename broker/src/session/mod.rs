//! The session layer: the CONNECT handshake, the connected-state protocol (QoS flows,
//! subscriptions, keepalive, flow control), and what happens when a connection ends
//! (will, session expiry).

mod handler;
mod handshake;
pub mod inflight;
mod state;
mod will;

use std::net::SocketAddr;
use std::sync::Arc;

use natter_shared::codec::{DecodeError, Packet};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::Limits;
use crate::connection::{Connection, ConnectionError};
use crate::hooks::Hooks;
use crate::router::Router;
pub use state::{Delivery, Enqueued, Kick, Session, SessionKey, SessionState, Subscription};

/// What every connection task needs; cheap to clone.
#[derive(Clone)]
pub struct Context {
    pub router: Router,
    pub hooks: Hooks,
    pub limits: Arc<Limits>,
    /// Becomes `true` when the broker shuts down.
    pub shutdown: watch::Receiver<bool>,
}

/// Serves one accepted TCP connection until it ends.
pub async fn serve(stream: TcpStream, addr: SocketAddr, ctx: Context) {
    let mut conn = Connection::new(stream, ctx.limits.max_packet_size.get() as usize);
    let mut shutdown = ctx.shutdown.clone();
    let first = tokio::select! {
        r = tokio::time::timeout(ctx.limits.connect_timeout(), conn.read_connect()) => r,
        _ = crate::server::stopped(&mut shutdown) => return,
    };
    let connect = match first {
        Err(_) => {
            tracing::info!(%addr, "closed: no CONNECT within the connect timeout");
            return;
        }
        Ok(Err(ConnectionError::Decode(DecodeError::UnsupportedProtocolLevel(level)))) => {
            tracing::info!(%addr, level, "refused: unsupported protocol level");
            handshake::refuse_protocol_level(conn, level).await;
            return;
        }
        Ok(Err(ConnectionError::Closed)) => {
            tracing::debug!(%addr, "closed before CONNECT");
            return;
        }
        Ok(Err(e)) => {
            tracing::info!(%addr, error = %e, "closed: bad CONNECT");
            return;
        }
        Ok(Ok(Packet::Connect(c))) => c,
        Ok(Ok(other)) => {
            tracing::info!(%addr, packet = other.name(), "closed: first packet is not CONNECT (MQTT-3.1.0-1)");
            return;
        }
    };
    if let Some(handler) = handshake::accept(conn, addr, *connect, ctx).await {
        handler.run().await;
    }
}
