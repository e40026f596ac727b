//! Device cursors: acknowledgements kept in memory at once (read by replays), written
//! by the worker after its next store, one write per device.

use super::*;

impl Writer {
    /// A device acknowledged mailbox id `id`.
    pub fn acked(&self, user: &str, device: &str, id: u64) {
        {
            let mut map = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
            // Names are copied only for a device's first acknowledgement since its last
            // write; the writer is told once until it next looks at the map.
            match map.get_mut(user).and_then(|devices| devices.get_mut(device)) {
                Some(cur) => {
                    cur.id = cur.id.max(id);
                    if cur.queued {
                        return;
                    }
                    cur.queued = true;
                }
                None => {
                    let acked = Acked { id, queued: true };
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

/// The acknowledged cursors not yet written, marked as taken.
pub(super) fn take_waiting(cursors: &Cursors) -> Vec<(String, String, u64)> {
    let mut waiting = Vec::new();
    let mut map = cursors.lock().unwrap_or_else(|p| p.into_inner());
    for (user, devices) in map.iter_mut() {
        for (device, acked) in devices.iter_mut().filter(|(_, a)| a.queued) {
            acked.queued = false;
            waiting.push((user.clone(), device.clone(), acked.id));
        }
    }
    waiting
}

/// Writes acknowledged cursors (on the blocking pool). An entry leaves the map once
/// written (unless it moved on meanwhile), so a replay reading the map, then the
/// store, always finds it.
pub(super) fn write_cursors(store: &Store, cursors: &Cursors, waiting: Vec<(String, String, u64)>) {
    for (user, device, id) in waiting {
        if let Err(e) = store.advance_cursor(&user, &device, id) {
            tracing::error!(user, device, error = %e, "cannot move the device cursor");
            continue;
        }
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
}
