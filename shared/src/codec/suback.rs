//! SUBACK (MQTT 3.1.1 section 3.9, MQTT 5 section 3.9).

use bytes::{BufMut, BytesMut};

use super::primitives::Reader;
use super::properties::allowed;
use super::{read_pkid, reason, DecodeError, Properties, Protocol};

/// One return/reason code per filter of the SUBSCRIBE, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub pkid: u16,
    pub properties: Properties,
    pub codes: Vec<u8>,
}

impl SubAck {
    pub(crate) fn decode(r: &mut Reader, protocol: Protocol) -> Result<SubAck, DecodeError> {
        let pkid = read_pkid(r)?;
        let properties = match protocol {
            Protocol::V5 => Properties::decode(r, allowed::ACK)?,
            Protocol::V311 => Properties::default(),
        };
        let mut codes = Vec::with_capacity(r.remaining());
        while r.remaining() > 0 {
            let code = r.u8()?;
            let valid = match protocol {
                Protocol::V311 => matches!(code, 0 | 1 | 2 | 0x80),
                Protocol::V5 => reason::SUBACK_CODES.contains(&code),
            };
            if !valid {
                return Err(DecodeError::InvalidReasonCode(code));
            }
            codes.push(code);
        }
        if codes.is_empty() {
            return Err(DecodeError::Protocol("SUBACK without a return code"));
        }
        Ok(SubAck {
            pkid,
            properties,
            codes,
        })
    }

    pub(crate) fn body_len(&self, protocol: Protocol) -> usize {
        2 + match protocol {
            Protocol::V5 => self.properties.encoded_len(),
            Protocol::V311 => 0,
        } + self.codes.len()
    }

    pub(crate) fn encode_body(&self, buf: &mut BytesMut, protocol: Protocol) {
        buf.put_u16(self.pkid);
        if protocol == Protocol::V5 {
            self.properties.encode(buf);
        }
        buf.put_slice(&self.codes);
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;

    #[test]
    fn round_trips() {
        let p = Packet::SubAck(SubAck {
            pkid: 3,
            properties: Properties::default(),
            codes: vec![0, 1, 2, 0x80],
        });
        assert_eq!(round_trip(&p, Protocol::V311), p);
        let p = Packet::SubAck(SubAck {
            pkid: 3,
            properties: Properties {
                reason_string: Some("no".into()),
                ..Default::default()
            },
            codes: vec![0x87, 0x8F, 0x02],
        });
        assert_eq!(round_trip(&p, Protocol::V5), p);
    }
}
