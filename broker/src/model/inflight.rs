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

    /// The packet id of a QoS 2 delivery of the stored message `tag`: one derived from
    /// the tag, so a broker restarted before the flow completed sends the message
    /// again under the id the client still holds (which it then does not deliver
    /// twice). `None` while that id is in a released flow (PUBCOMP awaited, soon):
    /// the delivery waits for it. If a flow just published holds it (rare: tags
    /// 65,535 apart), any free one.
    pub fn pkid_for(&mut self, tag: u64) -> Option<u16> {
        let id = u16::try_from(tag % 65_535).unwrap_or(0) + 1;
        match self.entries.iter().find(|e| e.pkid == id) {
            None => Some(id),
            Some(e) if e.stage == Stage::Released => None,
            Some(_) => Some(self.next_pkid()),
        }
    }

    /// Whether the stored message `tag` is already released to the client (PUBREL
    /// sent, PUBCOMP awaited): it reached the client and is not sent again.
    pub fn has_released(&self, tag: u64) -> bool {
        self.entries
            .iter()
            .any(|e| e.stage == Stage::Released && e.delivery.msg.tag == Some(tag))
    }

    /// Puts back a QoS 2 flow that was released before a restart.
    pub fn push_released(&mut self, pkid: u16, delivery: Delivery) {
        self.entries.retain(|e| e.pkid != pkid);
        self.entries.push_back(Outgoing {
            pkid,
            delivery,
            stage: Stage::Released,
        });
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

    /// Moves a QoS 2 entry from Published to Released (on PUBREC); returns it, `None`
    /// if unknown.
    pub fn release(&mut self, pkid: u16) -> Option<&Outgoing> {
        let i = self.position(pkid, Stage::Published)?;
        self.entries[i].stage = Stage::Released;
        Some(&self.entries[i])
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
            kept: None,
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
    fn a_stored_message_gets_the_same_id_again_unless_it_is_taken() {
        let mut f = Inflight::default();
        assert_eq!(f.pkid_for(7), Some(8));
        assert_eq!(
            f.pkid_for(65_535 + 7),
            Some(8),
            "the same after a restart, and modulo the id space"
        );
        f.push(8, d());
        assert_ne!(f.pkid_for(7), Some(8), "taken: another free one");
        let mut tagged = d();
        let mut msg = (*tagged.msg).clone();
        msg.tag = Some(7);
        tagged.msg = Arc::new(msg);
        f.push_released(8, tagged);
        assert_eq!(f.len(), 1, "replaces the entry with that id");
        assert!(f.has_released(7) && !f.has_released(8));
        assert_eq!(f.pkid_for(65_535 + 7), None, "waits for the released flow to complete");
    }

    #[test]
    fn qos2_stages() {
        let mut f = Inflight::default();
        let id = f.next_pkid();
        f.push(id, d());
        assert!(f.complete(id, Stage::Released).is_none());
        assert!(f.release(id).is_some());
        assert!(f.is_released(id));
        assert!(f.release(id).is_none());
        assert!(f.complete(id, Stage::Released).is_some());
        assert!(f.is_empty());
    }
}
