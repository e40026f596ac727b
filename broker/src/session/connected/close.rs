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

        if let End::ClientDisconnect { with_will: false } = end {
            self.will = None;
        }
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
        if attached {
            self.persist_end(matches!(end, End::Shutdown));
        }
        let will = self.will.take().map(|w| *w);
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

    /// The session on disk as the connection leaves it: forgotten when it ends now,
    /// else disconnected, with the will still to come (one with a delay: one without
    /// is published now, as is every will at shutdown).
    fn persist_end(&mut self, shutting_down: bool) {
        if self.session_expiry == 0 {
            self.ctx.persist.delete(&self.session.key);
            return;
        }
        let delayed = self
            .will
            .as_ref()
            .is_some_and(|w| w.properties.will_delay_interval.unwrap_or(0) > 0);
        let will = if delayed && !shutting_down {
            self.will.clone()
        } else {
            None
        };
        let kept = std::mem::replace(&mut self.will, will);
        self.ctx.persist.save(&self.record(true));
        self.will = kept;
    }
}
