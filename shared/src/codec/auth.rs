//! AUTH (MQTT 5 section 3.15): extended authentication exchanges.

use bytes::{BufMut, BytesMut};

use super::primitives::Reader;
use super::properties::allowed;
use super::{reason, DecodeError, Properties};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    pub reason: u8,
    pub properties: Properties,
}

impl Auth {
    pub(crate) fn decode(r: &mut Reader) -> Result<Auth, DecodeError> {
        if r.remaining() == 0 {
            return Ok(Auth::default());
        }
        let code = r.u8()?;
        if !reason::AUTH_CODES.contains(&code) {
            return Err(DecodeError::InvalidReasonCode(code));
        }
        let properties = if r.remaining() == 0 {
            Properties::default()
        } else {
            Properties::decode(r, allowed::AUTH)?
        };
        Ok(Auth {
            reason: code,
            properties,
        })
    }

    pub(crate) fn body_len(&self) -> usize {
        if self.reason == 0 && self.properties.is_empty() {
            0
        } else {
            1 + self.properties.encoded_len()
        }
    }

    pub(crate) fn encode_body(&self, buf: &mut BytesMut) {
        if self.reason != 0 || !self.properties.is_empty() {
            buf.put_u8(self.reason);
            self.properties.encode(buf);
        }
    }
}
