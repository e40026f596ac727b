//! PUBACK, PUBREC, PUBREL and PUBCOMP: a packet identifier, and on MQTT 5 a reason
//! code and properties (MQTT 5 sections 3.4 to 3.7).

use bytes::{BufMut, BytesMut};

use super::primitives::Reader;
use super::properties::allowed;
use super::{read_pkid, DecodeError, Properties, Protocol};

/// The body shared by the four publish acknowledgements.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ack {
    pub pkid: u16,
    /// MQTT 5 reason code; always success on 3.1.1.
    pub reason: u8,
    pub properties: Properties,
}

impl Ack {
    pub fn new(pkid: u16) -> Ack {
        Ack {
            pkid,
            reason: 0,
            properties: Properties::default(),
        }
    }

    pub fn with_reason(pkid: u16, reason: u8) -> Ack {
        Ack {
            pkid,
            reason,
            properties: Properties::default(),
        }
    }

    pub(crate) fn decode(r: &mut Reader, protocol: Protocol, codes: &[u8]) -> Result<Ack, DecodeError> {
        let pkid = read_pkid(r)?;
        if protocol == Protocol::V311 || r.remaining() == 0 {
            return Ok(Ack::new(pkid));
        }
        let reason = r.u8()?;
        if !codes.contains(&reason) {
            return Err(DecodeError::InvalidReasonCode(reason));
        }
        let properties = if r.remaining() == 0 {
            Properties::default()
        } else {
            Properties::decode(r, allowed::ACK)?
        };
        Ok(Ack {
            pkid,
            reason,
            properties,
        })
    }

    pub(crate) fn body_len(&self, protocol: Protocol) -> usize {
        match protocol {
            Protocol::V311 => 2,
            Protocol::V5 if self.properties.is_empty() => {
                if self.reason == 0 {
                    2
                } else {
                    3
                }
            }
            Protocol::V5 => 3 + self.properties.encoded_len(),
        }
    }

    pub(crate) fn encode_body(&self, buf: &mut BytesMut, protocol: Protocol) {
        buf.put_u16(self.pkid);
        if protocol == Protocol::V5 && (self.reason != 0 || !self.properties.is_empty()) {
            buf.put_u8(self.reason);
            if !self.properties.is_empty() {
                self.properties.encode(buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;

    #[test]
    fn round_trips() {
        for proto in [Protocol::V311, Protocol::V5] {
            for p in [
                Packet::PubAck(Ack::new(1)),
                Packet::PubRec(Ack::new(2)),
                Packet::PubRel(Ack::new(3)),
                Packet::PubComp(Ack::new(65535)),
            ] {
                assert_eq!(round_trip(&p, proto), p);
            }
        }
        let p = Packet::PubAck(Ack::with_reason(9, reason::NOT_AUTHORIZED));
        assert_eq!(round_trip(&p, Protocol::V5), p);
        let p = Packet::PubRec(Ack {
            pkid: 9,
            reason: reason::QUOTA_EXCEEDED,
            properties: Properties {
                reason_string: Some("full".into()),
                ..Default::default()
            },
        });
        assert_eq!(round_trip(&p, Protocol::V5), p);
    }

    #[test]
    fn refuses_bad_acks() {
        let mut buf = BytesMut::from(&[0x40u8, 2, 0, 0][..]);
        assert_eq!(decode(&mut buf, Protocol::V311, 64), Err(DecodeError::ZeroPacketId));
        let mut buf = BytesMut::from(&[0x40u8, 3, 0, 1, 0x92][..]);
        assert_eq!(
            decode(&mut buf, Protocol::V5, 64),
            Err(DecodeError::InvalidReasonCode(0x92))
        );
        let mut buf = BytesMut::from(&[0x40u8, 3, 0, 1, 0][..]);
        assert_eq!(decode(&mut buf, Protocol::V311, 64), Err(DecodeError::TrailingBytes));
    }
}
