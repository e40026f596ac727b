//! PUBLISH (MQTT 3.1.1 section 3.3, MQTT 5 section 3.3).

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::primitives::{binary_len, put_string, Reader};
use super::properties::allowed;
use super::{read_pkid, DecodeError, Properties, Protocol, QoS};
use crate::topic::validate_topic_name;

/// An application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty only on MQTT 5 with a topic alias. Shared, so routing one message to
    /// many subscribers copies no topic bytes.
    pub topic: Arc<str>,
    /// Zero for QoS 0.
    pub pkid: u16,
    pub properties: Properties,
    pub payload: Bytes,
}

impl Publish {
    pub(crate) fn flags(&self) -> u8 {
        (u8::from(self.dup) << 3) | ((self.qos as u8) << 1) | u8::from(self.retain)
    }

    pub(crate) fn decode(flags: u8, r: &mut Reader, protocol: Protocol) -> Result<Publish, DecodeError> {
        let dup = flags & 0x08 != 0;
        let qos = QoS::from_u8((flags >> 1) & 0x03)?;
        let retain = flags & 0x01 != 0;
        if dup && qos == QoS::AtMostOnce {
            return Err(DecodeError::Protocol("DUP set on a QoS 0 PUBLISH (MQTT-3.3.1-2)"));
        }
        let topic: Arc<str> = r.string()?.into();
        let pkid = if qos == QoS::AtMostOnce { 0 } else { read_pkid(r)? };
        let properties = match protocol {
            Protocol::V5 => Properties::decode(r, allowed::PUBLISH)?,
            Protocol::V311 => Properties::default(),
        };
        if !(topic.is_empty() && properties.topic_alias.is_some()) {
            validate_topic_name(&topic).map_err(DecodeError::InvalidTopic)?;
        }
        let payload = r.rest();
        Ok(Publish {
            dup,
            qos,
            retain,
            topic,
            pkid,
            properties,
            payload,
        })
    }

    pub(crate) fn body_len(&self, protocol: Protocol) -> usize {
        binary_len(self.topic.as_bytes())
            + if self.qos == QoS::AtMostOnce { 0 } else { 2 }
            + match protocol {
                Protocol::V5 => self.properties.encoded_len(),
                Protocol::V311 => 0,
            }
            + self.payload.len()
    }

    pub(crate) fn encode_body(&self, buf: &mut BytesMut, protocol: Protocol) {
        put_string(buf, &self.topic);
        if self.qos != QoS::AtMostOnce {
            buf.put_u16(self.pkid);
        }
        if protocol == Protocol::V5 {
            self.properties.encode(buf);
        }
        buf.put_slice(&self.payload);
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use bytes::Bytes;

    fn publish(qos: QoS) -> Publish {
        Publish {
            dup: qos != QoS::AtMostOnce,
            qos,
            retain: true,
            topic: "dm/bob".into(),
            pkid: if qos == QoS::AtMostOnce { 0 } else { 42 },
            properties: Properties::default(),
            payload: Bytes::from_static(b"hi bob"),
        }
    }

    #[test]
    fn round_trips() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for proto in [Protocol::V311, Protocol::V5] {
                let p = Packet::Publish(publish(qos));
                assert_eq!(round_trip(&p, proto), p);
            }
        }
        let mut aliased = publish(QoS::AtLeastOnce);
        aliased.topic = "".into();
        aliased.properties.topic_alias = Some(1);
        let p = Packet::Publish(aliased);
        assert_eq!(round_trip(&p, Protocol::V5), p);
    }

    #[test]
    fn refuses_invalid_publishes() {
        use crate::topic::TopicError;
        let cases: [(&[u8], DecodeError); 6] = [
            (&[0x36, 5, 0, 1, b'a', 0, 1], DecodeError::InvalidQoS),
            (
                &[0x38, 3, 0, 1, b'a'],
                DecodeError::Protocol("DUP set on a QoS 0 PUBLISH (MQTT-3.3.1-2)"),
            ),
            (&[0x32, 5, 0, 1, b'a', 0, 0], DecodeError::ZeroPacketId),
            (
                &[0x30, 3, 0, 1, b'#'],
                DecodeError::InvalidTopic(TopicError::WildcardInName),
            ),
            (&[0x30, 2, 0, 0], DecodeError::InvalidTopic(TopicError::Empty)),
            (&[0x30, 3, 0, 1, 0xff], DecodeError::InvalidUtf8),
        ];
        for (c, expected) in cases {
            let mut buf = BytesMut::from(c);
            assert_eq!(decode(&mut buf, Protocol::V311, 64), Err(expected), "{c:?}");
        }
        // Empty topic without alias on v5.
        let mut buf = BytesMut::from(&[0x30u8, 3, 0, 0, 0][..]);
        assert_eq!(
            decode(&mut buf, Protocol::V5, 64),
            Err(DecodeError::InvalidTopic(TopicError::Empty))
        );
    }
}
