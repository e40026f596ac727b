//! UNSUBACK (MQTT 3.1.1 section 3.11, MQTT 5 section 3.11).

use bytes::{BufMut, BytesMut};

use super::primitives::Reader;
use super::properties::allowed;
use super::{read_pkid, reason, DecodeError, Properties, Protocol};

/// On MQTT 5, one reason code per filter; none on 3.1.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub pkid: u16,
    pub properties: Properties,
    pub codes: Vec<u8>,
}

impl UnsubAck {
    pub(crate) fn decode(r: &mut Reader, protocol: Protocol) -> Result<UnsubAck, DecodeError> {
        let pkid = read_pkid(r)?;
        if protocol == Protocol::V311 {
            return Ok(UnsubAck {
                pkid,
                properties: Properties::default(),
                codes: Vec::new(),
            });
        }
        let properties = Properties::decode(r, allowed::ACK)?;
        let mut codes = Vec::with_capacity(r.remaining());
        while r.remaining() > 0 {
            let code = r.u8()?;
            if !reason::UNSUBACK_CODES.contains(&code) {
                return Err(DecodeError::InvalidReasonCode(code));
            }
            codes.push(code);
        }
        Ok(UnsubAck {
            pkid,
            properties,
            codes,
        })
    }

    pub(crate) fn body_len(&self, protocol: Protocol) -> usize {
        2 + match protocol {
            Protocol::V5 => self.properties.encoded_len() + self.codes.len(),
            Protocol::V311 => 0,
        }
    }

    pub(crate) fn encode_body(&self, buf: &mut BytesMut, protocol: Protocol) {
        buf.put_u16(self.pkid);
        if protocol == Protocol::V5 {
            self.properties.encode(buf);
            buf.put_slice(&self.codes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;

    #[test]
    fn round_trips() {
        let p = Packet::UnsubAck(UnsubAck {
            pkid: 8,
            properties: Properties::default(),
            codes: vec![],
        });
        assert_eq!(round_trip(&p, Protocol::V311), p);
        let p = Packet::UnsubAck(UnsubAck {
            pkid: 8,
            properties: Properties::default(),
            codes: vec![0, 0x11],
        });
        assert_eq!(round_trip(&p, Protocol::V5), p);
    }
}
