//! The wake-up of the one task serving a session: a flag and the waker to call.
//!
//! A `tokio::sync::Notify` would do the same, but its waiting side is a future that
//! the waiting task must hold; here the task only registers its waker when it polls,
//! so an idle connection's task keeps no waiter of its own (its size is the memory
//! of every idle connection).

use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

#[derive(Debug, Default)]
pub struct WakeSlot(Mutex<Slot>);

#[derive(Debug, Default)]
struct Slot {
    /// Set by a wake that the task has not seen yet (like a `Notify` permit).
    woken: bool,
    waker: Option<Waker>,
}

impl WakeSlot {
    /// Wakes the task, or leaves the wake for its next poll if it is not waiting.
    pub fn wake(&self) {
        let waker = {
            let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
            slot.woken = true;
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Ready once per wake since the last Ready; otherwise registers `cx`'s waker.
    pub fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if std::mem::take(&mut slot.woken) {
            return Poll::Ready(());
        }
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Waits for [`WakeSlot::poll_woken`].
    pub async fn woken(&self) {
        std::future::poll_fn(|cx| self.poll_woken(cx)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_wake_before_the_wait_is_kept_and_counts_once() {
        let slot = WakeSlot::default();
        slot.wake();
        slot.wake();
        slot.woken().await;
        let mut cx = Context::from_waker(Waker::noop());
        assert!(slot.poll_woken(&mut cx).is_pending(), "two wakes before a wait are one");
    }

    #[tokio::test]
    async fn a_wake_reaches_a_waiting_task() {
        let slot = Arc::new(WakeSlot::default());
        let waiter = tokio::spawn({
            let slot = slot.clone();
            async move { slot.woken().await }
        });
        // Until the task has registered, the wake is kept for it anyway.
        tokio::task::yield_now().await;
        slot.wake();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
