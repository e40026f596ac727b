//! Keepalive deadlines of every connection in one timer: a connection that hears
//! nothing from its client for one and a half times the keepalive is closed
//! (MQTT-3.1.2-24).
//!
//! A timer per connection (tokio's `Sleep`, 112 bytes, re-armed on every read) costs
//! each idle device more than its socket's registration. Here a connection keeps
//! two numbers (when it last read, and the deadline it asked to be woken at) and the
//! wheel keeps a weak handle of its session in the bucket of that deadline. When
//! the deadline comes, one task wakes the session's connection, which closes if it
//! is still silent, or asks again for its new deadline: a connection is in the wheel
//! at most twice (its current deadline and one about to fire), leaves it when it
//! ends (so short connections with long keepalives leave nothing behind), and reads cost it
//! nothing here. Deadlines are counted in ticks of [`TICK`], rounded up: a silent
//! client is closed between its limit and one tick after.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::model::Session;

/// The wheel's resolution.
pub const TICK: Duration = Duration::from_millis(250);

/// A point in time, in ticks since the wheel started.
pub type Tick = u32;

/// The connections' keepalive deadlines, and the task that wakes them.
pub struct KeepaliveWheel {
    start: Instant,
    buckets: Mutex<Buckets>,
    /// Wakes the task when a deadline earlier than the one it sleeps to is added.
    earlier: Notify,
}

#[derive(Default)]
struct Buckets {
    /// Deadline -> the sessions whose connection asked to be woken then.
    due: BTreeMap<Tick, Vec<Weak<Session>>>,
    /// The deadline the task sleeps to, if any.
    planned: Option<Tick>,
}

impl KeepaliveWheel {
    /// A wheel, and its task until `shutdown`.
    pub fn spawn(mut shutdown: watch::Receiver<bool>) -> Arc<KeepaliveWheel> {
        let wheel = Arc::new(KeepaliveWheel {
            start: Instant::now(),
            buckets: Mutex::default(),
            earlier: Notify::new(),
        });
        let task = wheel.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = task.run() => {}
                () = crate::shutdown::stopped(&mut shutdown) => {}
            }
        });
        wheel
    }

    /// Now, in ticks (rounded down).
    pub fn now(&self) -> Tick {
        ticks_in(self.start.elapsed())
    }

    /// The deadline of a client last heard from at `last_input` with a keepalive of
    /// `keep_alive` seconds: one and a half times it, rounded up to the next tick.
    pub fn deadline(last_input: Tick, keep_alive: u16) -> Tick {
        let period = ticks_in(Duration::from_millis(u64::from(keep_alive) * 1500));
        last_input.saturating_add(period).saturating_add(1)
    }

    /// Wakes `session`'s connection at `at` (or soon after).
    pub fn arm(&self, at: Tick, session: &Arc<Session>) {
        let mut b = self.lock();
        b.due.entry(at).or_default().push(Arc::downgrade(session));
        if b.planned.is_none_or(|p| at < p) {
            b.planned = Some(at);
            drop(b);
            self.earlier.notify_one();
        }
    }

    /// Forgets the wake-up `session`'s connection asked for at `at`, when it ends: the
    /// wheel then holds only live connections (a weak handle keeps its session's
    /// memory until dropped).
    pub fn disarm(&self, at: Tick, session: &Arc<Session>) {
        let mut b = self.lock();
        let Some(bucket) = b.due.get_mut(&at) else {
            return;
        };
        if let Some(i) = bucket
            .iter()
            .position(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(session)))
        {
            bucket.swap_remove(i);
        }
        if bucket.is_empty() {
            b.due.remove(&at);
        }
    }

    /// Entries waiting (for tests and the size of the wheel).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().due.values().map(Vec::len).sum()
    }

    async fn run(&self) {
        loop {
            let (due, next) = self.take_due();
            for session in due.iter().filter_map(Weak::upgrade) {
                session.wake();
            }
            drop(due);
            match next {
                Some(at) => {
                    let when = self.start + TICK * at;
                    tokio::select! {
                        () = tokio::time::sleep_until(when) => {}
                        () = self.earlier.notified() => {}
                    }
                }
                None => self.earlier.notified().await,
            }
        }
    }

    /// Takes the buckets whose deadline has come; the next deadline becomes planned.
    fn take_due(&self) -> (Vec<Weak<Session>>, Option<Tick>) {
        let now = self.now();
        let mut b = self.lock();
        let later = b.due.split_off(&now.saturating_add(1));
        let due = std::mem::replace(&mut b.due, later);
        b.planned = b.due.first_key_value().map(|(at, _)| *at);
        (due.into_values().flatten().collect(), b.planned)
    }

    /// A poisoned lock (a panic elsewhere while holding it) still holds whole
    /// buckets: go on with it.
    fn lock(&self) -> MutexGuard<'_, Buckets> {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn ticks_in(d: Duration) -> Tick {
    Tick::try_from(d.as_millis() / TICK.as_millis()).unwrap_or(Tick::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OverflowPolicy;
    use crate::model::SessionKey;

    fn session() -> Arc<Session> {
        let key = SessionKey {
            username: Some("alice".into()),
            client_id: "phone".into(),
        };
        Arc::new(Session::new(1, key, 10, OverflowPolicy::DropNew))
    }

    #[test]
    fn a_deadline_is_one_and_a_half_keepalives_rounded_up_to_a_tick() {
        // 1.5 s is 6 ticks; one more so that rounding the start down never shortens it.
        assert_eq!(KeepaliveWheel::deadline(10, 1), 17);
        assert_eq!(KeepaliveWheel::deadline(0, 60), 361);
        assert_eq!(KeepaliveWheel::deadline(Tick::MAX - 2, 60), Tick::MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn the_connection_is_woken_at_its_deadline_and_not_before() {
        let (_stop, shutdown) = watch::channel(false);
        let wheel = KeepaliveWheel::spawn(shutdown);
        let s = session();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(s.poll_woken(&mut cx).is_pending());
        wheel.arm(wheel.now() + 4, &s);
        tokio::time::sleep(TICK * 3).await;
        assert!(s.poll_woken(&mut cx).is_pending(), "not before its deadline");
        tokio::time::sleep(TICK * 2).await;
        assert!(s.poll_woken(&mut cx).is_ready(), "woken at its deadline");
        assert_eq!(wheel.len(), 0, "a fired deadline leaves the wheel");
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_is_not_kept_waiting_by_a_later_one() {
        let (_stop, shutdown) = watch::channel(false);
        let wheel = KeepaliveWheel::spawn(shutdown);
        let (late, early) = (session(), session());
        wheel.arm(wheel.now() + 400, &late);
        tokio::task::yield_now().await;
        wheel.arm(wheel.now() + 2, &early);
        tokio::time::sleep(TICK * 3).await;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(early.poll_woken(&mut cx).is_ready());
        assert!(late.poll_woken(&mut cx).is_pending());
        assert_eq!(wheel.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ended_connection_leaves_the_wheel_at_once() {
        let (_stop, shutdown) = watch::channel(false);
        let wheel = KeepaliveWheel::spawn(shutdown);
        let (ended, other) = (session(), session());
        let at = wheel.now() + 400;
        wheel.arm(at, &ended);
        wheel.arm(at, &other);
        wheel.disarm(at, &ended);
        assert_eq!(wheel.len(), 1, "only the live connection is left");
        wheel.disarm(at + 1, &other);
        assert_eq!(wheel.len(), 1, "another deadline's entry is kept");
        wheel.disarm(at, &other);
        assert_eq!(wheel.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ended_session_is_dropped_from_the_wheel_unwoken() {
        let (_stop, shutdown) = watch::channel(false);
        let wheel = KeepaliveWheel::spawn(shutdown);
        let s = session();
        wheel.arm(wheel.now() + 1, &s);
        drop(s);
        tokio::time::sleep(TICK * 3).await;
        assert_eq!(wheel.len(), 0, "the wheel holds no session alive");
    }
}
