//! The session layer: the CONNECT handshake, the connected-state protocol (QoS flows,
//! subscriptions, keepalive, flow control), and what happens when a connection ends
//! (will, session expiry).

mod aliases;
mod connected;
mod handshake;
mod keepalive;
pub mod persist;
mod will;

use std::net::SocketAddr;
use std::sync::Arc;

use natter_shared::codec::{DecodeError, Packet, QoS};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::Limits;
use crate::connection::{Connection, ConnectionError};
use crate::hooks::Hooks;
use crate::model::{Delivery, Message, SessionKey};
use crate::router::Router;
use keepalive::KeepaliveWheel;
use persist::Persister;

/// What every connection task needs, shared by all of them.
pub struct Context {
    pub router: Router,
    pub hooks: Hooks,
    pub limits: Arc<Limits>,
    /// Becomes `true` when the broker shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Every connection's keepalive deadline.
    keepalive: Arc<KeepaliveWheel>,
    /// Where persistent sessions are written.
    pub persist: Persister,
}

impl Context {
    /// The context, with its keepalive task running until `shutdown`.
    pub fn new(
        router: Router,
        hooks: Hooks,
        limits: Arc<Limits>,
        shutdown: watch::Receiver<bool>,
        persist: Persister,
    ) -> Arc<Context> {
        Arc::new(Context {
            router,
            hooks,
            limits,
            keepalive: KeepaliveWheel::spawn(shutdown.clone()),
            shutdown,
            persist,
        })
    }
}

/// Brings back the persistent sessions read at start (see [`persist`]): each is
/// registered offline with its subscriptions, so messages reach it before its client
/// returns, and its expiry and pending will run on from where they were.
pub fn restore(
    ctx: &Arc<Context>,
    records: Vec<persist::Record>,
    mut outgoing: std::collections::HashMap<SessionKey, Vec<persist::OutgoingRecord>>,
    mut queued: persist::QueuedBySession,
    mut incoming: persist::IncomingBySession,
) -> usize {
    let now = crate::clock::unix_ms();
    let instant = std::time::Instant::now();
    let mut restored = 0;
    for record in records {
        let (left, will_delay) = record.remaining(now);
        let info = record.client_info();
        ctx.persist.restored(&record);
        if left.is_zero() {
            // Expired while the broker was down; its will was due by then.
            if let Some(w) = record.will(0) {
                will::publish_restored_will(ctx, &info, w);
            }
            ctx.persist.delete(&record.key());
            continue;
        }
        let session = ctx.router.restore_session(record.key(), &record.subscriptions());
        session.set_kept(true);
        let generation = {
            let mut st = session.lock();
            // Released QoS 2 flows: their PUBREL is sent again when the client is back,
            // and the stored messages they carry are not sent twice.
            for flow in outgoing.remove(&session.key).unwrap_or_default() {
                let mut msg = Message::broker(flow.topic, bytes::Bytes::new(), QoS::ExactlyOnce, false);
                msg.tag = Some(flow.tag);
                let delivery = Delivery {
                    msg: Arc::new(msg),
                    qos: QoS::ExactlyOnce,
                    retain: false,
                    sub_ids: Vec::new(),
                    kept: None,
                };
                st.inflight.push_released(flow.pkid, delivery);
            }
            // Kept plain deliveries, in the order they were written: released ones
            // (PUBCOMP awaited) in flight, the rest queued.
            for (seq, record) in queued.remove(&session.key).unwrap_or_default() {
                let released = record.released;
                match record.delivery(seq, instant, now) {
                    Some(d) => match released {
                        Some(pkid) => st.inflight.push_released(pkid, d),
                        None => st.queue.push_back(d),
                    },
                    None => ctx.persist.forget_delivery(&session.key, seq),
                }
            }
            // QoS 2 publishes received and not yet released: a resent one is not
            // routed again, and its PUBREL is answered.
            for pkid in incoming.remove(&session.key).unwrap_or_default() {
                st.incoming_qos2.insert(pkid);
            }
            st.generation
        };
        will::after_disconnect(will::Ended {
            ctx: ctx.clone(),
            info,
            session,
            generation,
            attached: true,
            will: record.will(will_delay),
            session_expiry: u32::try_from(left.as_secs().max(1)).unwrap_or(u32::MAX),
            shutting_down: false,
        });
        restored += 1;
    }
    restored
}

/// Serves one accepted TCP connection until it ends.
///
/// The connect phase runs in this task; the connected state runs in a task of its
/// own, so the long-lived task holds only what a connected client needs (its size is
/// the memory of every idle connection). `guard` (connection permit, shutdown
/// tracker) lives until the connection ends.
pub async fn serve<G: Send + 'static>(stream: TcpStream, addr: SocketAddr, ctx: Arc<Context>, guard: G) {
    if let Some(handler) = connect_phase(stream, addr, ctx).await {
        tokio::spawn(handler.run(guard));
    }
}

/// Reads the CONNECT (within the connect timeout) and runs the handshake.
async fn connect_phase(stream: TcpStream, addr: SocketAddr, ctx: Arc<Context>) -> Option<connected::Handler> {
    let mut conn = Connection::new(stream, ctx.limits.max_packet_size.get() as usize);
    let mut shutdown = ctx.shutdown.clone();
    let first = tokio::select! {
        r = tokio::time::timeout(ctx.limits.connect_timeout(), conn.read_connect()) => r,
        _ = crate::shutdown::stopped(&mut shutdown) => return None,
    };
    let connect = match first {
        Err(_) => {
            tracing::info!(%addr, "closed: no CONNECT within the connect timeout");
            return None;
        }
        Ok(Err(ConnectionError::Decode(DecodeError::UnsupportedProtocolLevel(level)))) => {
            tracing::info!(%addr, level, "refused: unsupported protocol level");
            handshake::refuse_protocol_level(conn, level).await;
            return None;
        }
        Ok(Err(ConnectionError::Closed)) => {
            tracing::debug!(%addr, "closed before CONNECT");
            return None;
        }
        Ok(Err(e)) => {
            tracing::info!(%addr, error = %e, "closed: bad CONNECT");
            return None;
        }
        Ok(Ok(Packet::Connect(c))) => c,
        Ok(Ok(other)) => {
            tracing::info!(%addr, packet = other.name(), "closed: first packet is not CONNECT (MQTT-3.1.0-1)");
            return None;
        }
    };
    handshake::accept(conn, addr, *connect, ctx).await
}

#[cfg(test)]
mod tests {
    /// Every idle connection holds one task whose size is its connected-state future:
    /// keep it small (see docs/benchmarks.md, memory per idle connection).
    #[test]
    fn connected_state_stays_small() {
        // The Handler and little more: no wait holds a future (`poll_wait`, the
        // flushes are polled by hand), and the Handler is stored once (`run` is not
        // an `async fn`). It was 1,152 bytes, inside a spawned block that held the
        // Handler a second time. Tokio allocates a task in 128-byte steps: a future
        // of up to 400 bytes takes 512 (tokio 1.54, 64-bit), one more byte 640.
        // With the guard the listener passes (its connection permit, the shutdown
        // tracker).
        type Guard = (tokio::sync::OwnedSemaphorePermit, tokio::sync::mpsc::Sender<()>);
        let run = super::connected::Handler::run_future_size::<Guard>();
        assert!(run <= 400, "connected-state future is {run} bytes");
        let handler = std::mem::size_of::<super::connected::Handler>();
        assert!(handler <= 296, "Handler is {handler} bytes");
        // What every idle session and every queued or retained message costs.
        let session = std::mem::size_of::<crate::model::Session>();
        // 304: with its reference counts, 320, an allocator size class (the next is 384).
        assert!(session <= 304, "Session is {session} bytes");
        let message = std::mem::size_of::<crate::model::Message>();
        assert!(message <= 128, "Message is {message} bytes (properties are shared)");
    }
}
