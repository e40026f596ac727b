//! The thread that writes the mailbox and history indexes from memory (see the
//! store's messages module), one write at a time, when the writer asks.
//!
//! A thread of its own rather than the blocking pool, because it runs at the lowest
//! CPU priority: an index write is background work, and on a busy core it must not
//! delay the runtime's threads delivering messages (with the broker on one core, a
//! write of 0.5-3 ms at normal priority showed up as the slowest deliveries).
//! Nothing waits on it but the writer, and that only when index entries pile up.

use tokio::sync::oneshot;

use crate::store::{Retention, Store};

/// A handle on the index thread; the thread ends when the handle is dropped.
pub struct Indexer {
    requests: std::sync::mpsc::Sender<oneshot::Sender<()>>,
}

/// An index write asked for.
pub struct IndexWrite {
    /// `None` once it has ended.
    rx: Option<oneshot::Receiver<()>>,
}

impl IndexWrite {
    /// Whether it has ended (written, or failed and logged).
    pub fn is_done(&mut self) -> bool {
        let Some(rx) = &mut self.rx else {
            return true;
        };
        if matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
            return false;
        }
        self.rx = None;
        true
    }

    /// Waits for it to end.
    pub async fn wait(self) {
        if let Some(rx) = self.rx {
            // An error means the thread is gone (its failure was logged).
            let _ = rx.await;
        }
    }
}

impl Indexer {
    /// Starts the thread.
    ///
    /// # Errors
    /// The thread could not be created.
    pub fn start(store: Store, retention: Retention) -> std::io::Result<Indexer> {
        let (requests, rx) = std::sync::mpsc::channel::<oneshot::Sender<()>>();
        std::thread::Builder::new()
            .name("natterd-index".into())
            .spawn(move || {
                lower_priority();
                while let Ok(done) = rx.recv() {
                    if let Err(e) = store.index(retention) {
                        tracing::error!(error = %e, "mailbox index not written (kept in memory, retried)");
                    }
                    let _ = done.send(());
                }
            })?;
        Ok(Indexer { requests })
    }

    /// Asks for an index write of what waits in memory now.
    pub fn request(&self) -> IndexWrite {
        let (done, rx) = oneshot::channel();
        if self.requests.send(done).is_err() {
            tracing::error!("the index thread has stopped: index entries stay in memory");
        }
        IndexWrite { rx: Some(rx) }
    }
}

/// Gives the calling thread the lowest CPU priority (nice 19). On Linux the nice
/// value belongs to the thread, not the process.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority takes plain integers and touches no memory of ours;
        // `who` 0 is the calling thread.
        let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
        if r != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "index thread keeps its priority");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::store::{NewMessage, Route, StoredMessage};

    #[tokio::test]
    async fn writes_the_index_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let message = Arc::new(StoredMessage {
            from: "alice".into(),
            ts: 1,
            payload: bytes::Bytes::from_static(b"hi"),
            user_properties: Vec::new(),
            content_type: None,
        });
        let m = NewMessage {
            id: store.next_message_id(),
            message,
            route: Route::Direct {
                to: "bob".into(),
                qos: 1,
            },
        };
        store.append([&m]).unwrap();
        assert_eq!(store.unindexed(), 3, "two mailboxes and the conversation");
        let retention = Retention {
            max_messages: 10,
            max_bytes: 1 << 20,
            max_age: u64::MAX,
        };
        let indexer = Indexer::start(store.clone(), retention).unwrap();
        let mut write = indexer.request();
        let second = indexer.request();
        second.wait().await;
        assert!(write.is_done());
        assert!(write.is_done(), "asking again is harmless");
        write.wait().await;
        assert_eq!(store.unindexed(), 0);
        drop(indexer);
    }
}
