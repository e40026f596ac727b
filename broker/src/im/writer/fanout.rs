//! Fan-out: one stored message to the sessions subscribed to each of its mailboxes.

use super::*;

impl Worker {
    /// Routes a message to the sessions subscribed to its mailboxes now (`topic`: a
    /// buffer the batch's messages share).
    pub(super) fn deliver(&self, record: &NewMessage, origin: Option<u64>, sender: Option<&str>, topic: &mut String) {
        let id = record.id;
        for dest in record.dests() {
            // The sender's copy skips the session the message came from. Whether that is
            // the sender's only connection is checked now, at routing: a device of the
            // sender's that connects later subscribes later too, and is replayed this
            // message (in flight or stored).
            let (origin, exclude) = if dest.copy { (origin, true) } else { (None, false) };
            if exclude && sender.is_some_and(|c| self.presence.only_connection(dest.user, c)) {
                continue;
            }
            topic.clear();
            topic.push_str(im::INBOX);
            topic.push('/');
            topic.push_str(dest.user);
            topic.push('/');
            dest.suffix.push_to(topic);
            // Built only for a session to receive it.
            let head = Head {
                topic,
                origin,
                exclude_origin: exclude,
                retain: false,
            };
            // Built only for a session to receive it; never retained, so never full.
            let _ = self.router.route(head, || {
                // Each mailbox entry keeps the QoS the message was sent with.
                let qos = QoS::from_u8(dest.qos).unwrap_or(QoS::AtLeastOnce);
                let m = &record.message;
                Arc::new(Message {
                    origin,
                    exclude_origin: exclude,
                    ..Message::stored(topic.as_str().into(), m.payload.clone(), qos, m.clone(), id)
                })
            });
        }
    }
}
