//! DISCONNECT (MQTT 3.1.1 section 3.14, MQTT 5 section 3.14).

use bytes::{BufMut, BytesMut};

use super::primitives::Reader;
use super::properties::allowed;
use super::{reason, DecodeError, Properties, Protocol};

/// On 3.1.1 it carries nothing; on 5 a reason code and properties, both optional.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    pub reason: u8,
    pub properties: Properties,
}

impl Disconnect {
    pub fn with_reason(reason: u8) -> Disconnect {
        Disconnect {
            reason,
            properties: Properties::default(),
        }
    }

    pub(crate) fn decode(r: &mut Reader, protocol: Protocol) -> Result<Disconnect, DecodeError> {
        if protocol == Protocol::V311 || r.remaining() == 0 {
            return Ok(Disconnect::default());
        }
        let code = r.u8()?;
        if !reason::DISCONNECT_CODES.contains(&code) {
            return Err(DecodeError::InvalidReasonCode(code));
        }
        let properties = if r.remaining() == 0 {
            Properties::default()
        } else {
            Properties::decode(r, allowed::DISCONNECT)?
        };
        Ok(Disconnect {
            reason: code,
            properties,
        })
    }

    pub(crate) fn body_len(&self, protocol: Protocol) -> usize {
        match protocol {
            Protocol::V311 => 0,
            Protocol::V5 if self.reason == 0 && self.properties.is_empty() => 0,
            Protocol::V5 if self.properties.is_empty() => 1,
            Protocol::V5 => 1 + self.properties.encoded_len(),
        }
    }

    pub(crate) fn encode_body(&self, buf: &mut BytesMut, protocol: Protocol) {
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
        let p = Packet::Disconnect(Disconnect::default());
        assert_eq!(round_trip(&p, Protocol::V311), p);
        assert_eq!(round_trip(&p, Protocol::V5), p);
        let p = Packet::Disconnect(Disconnect::with_reason(reason::SESSION_TAKEN_OVER));
        assert_eq!(round_trip(&p, Protocol::V5), p);
        let p = Packet::Disconnect(Disconnect {
            reason: reason::DISCONNECT_WITH_WILL,
            properties: Properties {
                session_expiry_interval: Some(0),
                ..Default::default()
            },
        });
        assert_eq!(round_trip(&p, Protocol::V5), p);
    }
}
