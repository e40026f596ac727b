//! Device cursors: acknowledgements kept in memory at once (read by replays), written
//! by the worker after its next store, one write per device.

use super::*;

impl Writer {
    /// A device acknowledged mailbox id `id`.
    pub fn acked(&self, user: &str, device: &str, id: u64) {
        self.ack(user, device, id, None);
    }

    /// As [`Writer::acked`]; the receipt resolves once the cursor (at `id` or later)
    /// is written and committed.
    pub fn acked_durably(&self, user: &str, device: &str, id: u64) -> Receipt {
        let (done, receipt) = oneshot::channel();
        self.ack(user, device, id, Some(done));
        receipt
    }

    fn ack(&self, user: &str, device: &str, id: u64, waiter: Option<oneshot::Sender<Stored>>) {
        {
            let mut map = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
            // Names are copied only for a device's first acknowledgement since its last
            // write; the writer is told once until it next looks at the map.
            match map.get_mut(user).and_then(|devices| devices.get_mut(device)) {
                Some(cur) => {
                    cur.id = cur.id.max(id);
                    cur.waiters.extend(waiter);
                    if cur.queued {
                        return;
                    }
                    cur.queued = true;
                }
                None => {
                    let acked = Acked {
                        id,
                        queued: true,
                        waiters: waiter.into_iter().collect(),
                    };
                    map.entry(user.to_owned()).or_default().insert(device.to_owned(), acked);
                }
            }
        }
        self.wake.notify_one();
    }

    /// The last id a device acknowledged, written or not.
    ///
    /// # Errors
    /// Store errors.
    pub fn cursor(&self, user: &str, device: &str) -> Result<Option<u64>, StoreError> {
        // The map first: an entry leaves it only after the store has it.
        let pending = self
            .cursors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
            .and_then(|devices| devices.get(device))
            .map(|a| a.id);
        let stored = self.store.cursor(user, device)?;
        Ok(pending.max(stored))
    }
}

/// An acknowledged cursor to write: user, device, id, and who waits for it.
pub(super) type Waiting = (String, String, u64, Vec<oneshot::Sender<Stored>>);

/// The acknowledged cursors not yet written, marked as taken.
pub(super) fn take_waiting(cursors: &Cursors) -> Vec<Waiting> {
    let mut waiting = Vec::new();
    let mut map = cursors.lock().unwrap_or_else(|p| p.into_inner());
    for (user, devices) in map.iter_mut() {
        for (device, acked) in devices.iter_mut().filter(|(_, a)| a.queued) {
            acked.queued = false;
            waiting.push((
                user.clone(),
                device.clone(),
                acked.id,
                std::mem::take(&mut acked.waiters),
            ));
        }
    }
    waiting
}

/// Writes acknowledged cursors (on the blocking pool), not committed: returns who
/// waits for them, told with [`tell`] once the commit is done. An entry leaves the
/// map once written (unless it moved on meanwhile), so a replay reading the map, then
/// the store, always finds it.
pub(super) fn write_cursors(store: &Store, cursors: &Cursors, waiting: Vec<Waiting>) -> Vec<oneshot::Sender<Stored>> {
    let mut told = Vec::new();
    for (user, device, id, waiters) in waiting {
        if let Err(e) = store.advance_cursor(&user, &device, id) {
            tracing::error!(user, device, error = %e, "cannot move the device cursor");
            for w in waiters {
                let _ = w.send(Err(NotStored::Failed));
            }
            continue;
        }
        told.extend(waiters);
        let mut map = cursors.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(devices) = map.get_mut(&user) {
            if devices.get(&device).is_some_and(|a| a.id <= id && !a.queued) {
                devices.remove(&device);
            }
            if devices.is_empty() {
                map.remove(&user);
            }
        }
    }
    told
}

/// Tells who waited for written cursors whether they were committed.
pub(super) fn tell(told: Vec<oneshot::Sender<Stored>>, committed: Stored) {
    for w in told {
        let _ = w.send(committed);
    }
}
