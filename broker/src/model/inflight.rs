//! Outgoing QoS 1/2 messages awaiting acknowledgement, and packet id allocation.

use std::collections::VecDeque;

use super::session::Delivery;

/// Where an outgoing QoS 1/2 delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// PUBREL sent; waiting for PUBCOMP (QoS 2).
    Released,
}

#[derive(Debug, Clone)]
pub struct Outgoing {
    pub pkid: u16,
    pub delivery: Delivery,
    pub stage: Stage,
}

/// In send order, so redelivery after a reconnect keeps the original order.
#[derive(Debug, Default)]
pub struct Inflight {
    entries: VecDeque<Outgoing>,
    last_pkid: u16,
}

impl Inflight {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Outgoing> {
        self.entries.iter()
    }

    /// A packet id not in use. The caller keeps fewer than 65,535 entries in flight
    /// (the inflight window is a `u16` bound), so one is always free.
    pub fn next_pkid(&mut self) -> u16 {
        loop {
            self.last_pkid = self.last_pkid.wrapping_add(1).max(1);
            let id = self.last_pkid;
            if !self.entries.iter().any(|e| e.pkid == id) {
                return id;
            }
        }
    }

    pub fn push(&mut self, pkid: u16, delivery: Delivery) {
        self.entries.push_back(Outgoing {
            pkid,
            delivery,
            stage: Stage::Published,
        });
    }

    fn position(&self, pkid: u16, stage: Stage) -> Option<usize> {
        // Acknowledgements mostly arrive in order: the front is checked first.
        self.entries.iter().position(|e| e.pkid == pkid && e.stage == stage)
    }

    /// Removes and returns the entry at `stage` with this id.
    pub fn complete(&mut self, pkid: u16, stage: Stage) -> Option<Outgoing> {
        self.position(pkid, stage).and_then(|i| self.entries.remove(i))
    }

    /// Moves a QoS 2 entry from Published to Released (on PUBREC). False if unknown.
    pub fn release(&mut self, pkid: u16) -> bool {
        match self.position(pkid, Stage::Published) {
            Some(i) => {
                self.entries[i].stage = Stage::Released;
                true
            }
            None => false,
        }
    }

    /// True when a Released entry with this id exists (a repeated PUBREC).
    pub fn is_released(&self, pkid: u16) -> bool {
        self.position(pkid, Stage::Released).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Message;
    use bytes::Bytes;
    use natter_shared::codec::QoS;
    use std::sync::Arc;

    fn d() -> Delivery {
        Delivery {
            msg: Arc::new(Message::broker("t", Bytes::new(), QoS::ExactlyOnce, false)),
            qos: QoS::ExactlyOnce,
            retain: false,
            sub_ids: vec![],
        }
    }

    #[test]
    fn ids_skip_zero_and_those_in_use() {
        let mut f = Inflight {
            last_pkid: u16::MAX - 1,
            ..Default::default()
        };
        let a = f.next_pkid();
        f.push(a, d());
        assert_eq!(a, u16::MAX);
        let b = f.next_pkid();
        assert_eq!(b, 1);
        f.push(b, d());
        f.last_pkid = u16::MAX - 1;
        assert_eq!(f.next_pkid(), 2, "skips MAX (in use), 0 and 1 (in use)");
    }

    #[test]
    fn qos2_stages() {
        let mut f = Inflight::default();
        let id = f.next_pkid();
        f.push(id, d());
        assert!(f.complete(id, Stage::Released).is_none());
        assert!(f.release(id));
        assert!(f.is_released(id));
        assert!(!f.release(id));
        assert!(f.complete(id, Stage::Released).is_some());
        assert!(f.is_empty());
    }
}
