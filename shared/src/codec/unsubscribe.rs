//! UNSUBSCRIBE (MQTT 3.1.1 section 3.10, MQTT 5 section 3.10).

use bytes::{BufMut, BytesMut};

use super::primitives::{binary_len, put_string, Reader};
use super::properties::allowed;
use super::{read_pkid, DecodeError, Properties, Protocol};
use crate::topic::validate_filter;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub pkid: u16,
    pub properties: Properties,
    pub filters: Vec<String>,
}

impl Unsubscribe {
    pub(crate) fn decode(r: &mut Reader, protocol: Protocol) -> Result<Unsubscribe, DecodeError> {
        let pkid = read_pkid(r)?;
        let properties = match protocol {
            Protocol::V5 => Properties::decode(r, allowed::UNSUBSCRIBE)?,
            Protocol::V311 => Properties::default(),
        };
        let mut filters = Vec::new();
        while r.remaining() > 0 {
            let filter = r.string()?;
            validate_filter(&filter).map_err(DecodeError::InvalidFilter)?;
            filters.push(filter);
        }
        if filters.is_empty() {
            return Err(DecodeError::Protocol(
                "UNSUBSCRIBE without a topic filter (MQTT-3.10.3-2)",
            ));
        }
        Ok(Unsubscribe {
            pkid,
            properties,
            filters,
        })
    }

    pub(crate) fn body_len(&self, protocol: Protocol) -> usize {
        2 + match protocol {
            Protocol::V5 => self.properties.encoded_len(),
            Protocol::V311 => 0,
        } + self.filters.iter().map(|f| binary_len(f.as_bytes())).sum::<usize>()
    }

    pub(crate) fn encode_body(&self, buf: &mut BytesMut, protocol: Protocol) {
        buf.put_u16(self.pkid);
        if protocol == Protocol::V5 {
            self.properties.encode(buf);
        }
        for f in &self.filters {
            put_string(buf, f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;

    #[test]
    fn round_trips() {
        for proto in [Protocol::V311, Protocol::V5] {
            let p = Packet::Unsubscribe(Unsubscribe {
                pkid: 4,
                properties: Properties::default(),
                filters: vec!["a/#".into(), "b".into()],
            });
            assert_eq!(round_trip(&p, proto), p);
        }
        let mut buf = BytesMut::from(&[0xA2u8, 2, 0, 1][..]);
        assert_eq!(
            decode(&mut buf, Protocol::V311, 64),
            Err(DecodeError::Protocol(
                "UNSUBSCRIBE without a topic filter (MQTT-3.10.3-2)"
            ))
        );
    }
}
