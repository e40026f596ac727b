//! The end of a connection: its reason sent, the session detached, the will on its
//! way, and the socket lingering so the client reads why.

use super::*;

impl Handler {
    pub(super) async fn finish(&mut self, end: End) {
        let code = match &end {
            End::Kicked(Kick::TakenOver) => Some(reason::SESSION_TAKEN_OVER),
            End::Kicked(Kick::SlowConsumer) => Some(reason::QUOTA_EXCEEDED),
            End::Kicked(Kick::Administrative) => Some(reason::ADMINISTRATIVE_ACTION),
            End::Kicked(Kick::Shutdown) | End::Shutdown => Some(reason::SERVER_SHUTTING_DOWN),
            End::KeepAliveTimeout => Some(reason::KEEP_ALIVE_TIMEOUT),
            End::Malformed(e) => Some(e.reason_code()),
            End::Protocol(code, _) => Some(*code),
            End::ClientDisconnect { .. } | End::Abrupt(_) => None,
        };
        match &end {
            End::ClientDisconnect { .. } => tracing::info!(client_id = %self.info.client_id, "client disconnected"),
            End::Malformed(e) => {
                tracing::warn!(client_id = %self.info.client_id, addr = %self.info.addr, error = %e, "closed: malformed packet")
            }
            End::Protocol(_, what) => {
                tracing::warn!(client_id = %self.info.client_id, addr = %self.info.addr, violation = what, "closed: protocol error")
            }
            End::Abrupt(why) => tracing::info!(client_id = %self.info.client_id, reason = %why, "connection lost"),
            other => tracing::info!(client_id = %self.info.client_id, reason = ?other, "connection closed"),
        }
        if let (Some(code), Protocol::V5) = (code, self.protocol) {
            // After whatever is still queued: a flush leaves whole packets behind it.
            self.conn
                .queue(&Packet::Disconnect(Disconnect::with_reason(code)), self.protocol);
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.conn.half_close()).await;
        self.ctx.hooks.on_disconnected(&self.info);
        if self.keep_alive != 0 {
            self.ctx.keepalive.disarm(self.armed, &self.session);
        }

        let will = match end {
            End::ClientDisconnect { with_will: false } => None,
            _ => self.will.take().map(|w| *w),
        };
        let attached = {
            let mut st = self.session.lock();
            if st.generation == self.generation {
                st.kick = None;
                self.session.set_online(false);
                true
            } else {
                false
            }
        };
        will::after_disconnect(will::Ended {
            ctx: self.ctx.clone(),
            info: self.info.clone(),
            session: self.session.clone(),
            generation: self.generation,
            attached,
            will,
            session_expiry: self.session_expiry,
            shutting_down: matches!(end, End::Shutdown),
        });
        // Last: the session is detached and the will is on its way; the socket stays
        // open a moment so the client reads why it closed (see `Connection::linger`).
        // Not while the broker stops: that waits for every connection.
        if !matches!(end, End::Shutdown) {
            self.conn.linger().await;
        }
    }
}
