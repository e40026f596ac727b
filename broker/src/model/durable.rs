//! How far stored messages are on disk: the highest [`Message::tag`] whose message,
//! and every one before it, is stored, and the sessions waiting for it to move.
//!
//! A QoS 2 delivery of a stored message is sent only once the message is on disk:
//! the client keeps its packet id until the flow completes, and a message lost with
//! a crash before it was stored would leave that id held for good (the next message
//! sent under it would be taken for a duplicate), and a publisher sending it again
//! would have it delivered twice.
//!
//! [`Message::tag`]: super::Message::tag

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::Session;

#[derive(Default)]
pub struct Durable {
    up_to: AtomicU64,
    waiting: Mutex<Vec<Arc<Session>>>,
}

impl Durable {
    /// Whether the stored message `tag` is on disk.
    pub fn covers(&self, tag: u64) -> bool {
        tag <= self.up_to.load(Ordering::Acquire)
    }

    /// Wakes `session` once the mark next moves; false (nothing registered) when it
    /// already covers `tag` (checked after registering, so no move is missed).
    pub fn wait(&self, tag: u64, session: &Arc<Session>) -> bool {
        {
            let mut waiting = self.lock();
            if !waiting.iter().any(|s| Arc::ptr_eq(s, session)) {
                waiting.push(session.clone());
            }
        }
        !self.covers(tag)
    }

    /// Every stored message up to `id` is on disk: wakes who waits.
    pub fn stored_up_to(&self, id: u64) {
        if self.up_to.fetch_max(id, Ordering::AcqRel) >= id {
            return;
        }
        let waiting = std::mem::take(&mut *self.lock());
        for s in waiting {
            s.wake();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Session>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OverflowPolicy;
    use crate::model::SessionKey;

    #[test]
    fn a_waiting_session_is_woken_when_the_mark_passes_its_message() {
        let d = Durable::default();
        let key = SessionKey {
            username: None,
            client_id: Arc::from("c"),
        };
        let s = Arc::new(Session::new(1, key, 10, OverflowPolicy::Disconnect));
        d.stored_up_to(5);
        assert!(d.covers(5) && !d.covers(6));
        assert!(d.wait(6, &s), "not covered: registered");
        assert!(d.wait(6, &s), "once");
        assert_eq!(d.lock().len(), 1);
        let waker = futures_noop();
        let mut cx = std::task::Context::from_waker(&waker);
        let _ = s.poll_woken(&mut cx);
        d.stored_up_to(4);
        assert!(s.poll_woken(&mut cx).is_pending(), "the mark never goes back");
        d.stored_up_to(6);
        assert!(s.poll_woken(&mut cx).is_ready(), "woken");
        assert!(!d.wait(6, &s), "covered now");
    }

    fn futures_noop() -> std::task::Waker {
        std::task::Waker::noop().clone()
    }
}
