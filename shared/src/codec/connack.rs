//! CONNACK (MQTT 3.1.1 section 3.2, MQTT 5 section 3.2).

use bytes::{BufMut, BytesMut};

use super::primitives::Reader;
use super::properties::allowed;
use super::{reason, DecodeError, Properties, Protocol};

/// The server's answer to CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAck {
    pub session_present: bool,
    /// A 3.1.1 return code or a 5.0 reason code, per the connection's version.
    pub code: u8,
    pub properties: Properties,
}

impl ConnAck {
    pub(crate) fn decode(r: &mut Reader, protocol: Protocol) -> Result<ConnAck, DecodeError> {
        let flags = r.u8()?;
        if flags & 0xfe != 0 {
            return Err(DecodeError::Protocol("CONNACK reserved flags set (MQTT-3.2.2-1)"));
        }
        let code = r.u8()?;
        let valid = match protocol {
            Protocol::V311 => code <= 5,
            Protocol::V5 => reason::CONNACK_CODES.contains(&code),
        };
        if !valid {
            return Err(DecodeError::InvalidReasonCode(code));
        }
        let properties = match protocol {
            Protocol::V5 => Properties::decode(r, allowed::CONNACK)?,
            Protocol::V311 => Properties::default(),
        };
        Ok(ConnAck {
            session_present: flags & 1 == 1,
            code,
            properties,
        })
    }

    pub(crate) fn body_len(&self, protocol: Protocol) -> usize {
        2 + match protocol {
            Protocol::V5 => self.properties.encoded_len(),
            Protocol::V311 => 0,
        }
    }

    pub(crate) fn encode_body(&self, buf: &mut BytesMut, protocol: Protocol) {
        buf.put_u8(u8::from(self.session_present));
        buf.put_u8(self.code);
        if protocol == Protocol::V5 {
            self.properties.encode(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;

    #[test]
    fn round_trips() {
        let v3 = Packet::ConnAck(ConnAck {
            session_present: true,
            code: 0,
            properties: Properties::default(),
        });
        assert_eq!(round_trip(&v3, Protocol::V311), v3);
        let v5 = Packet::ConnAck(ConnAck {
            session_present: false,
            code: reason::BAD_USERNAME_OR_PASSWORD,
            properties: Properties {
                assigned_client_identifier: Some("x".into()),
                server_keep_alive: Some(30),
                receive_maximum: Some(100),
                maximum_qos: Some(1),
                ..Default::default()
            },
        });
        assert_eq!(round_trip(&v5, Protocol::V5), v5);
    }

    #[test]
    fn refuses_bad_codes() {
        let mut buf = BytesMut::from(&[0x20u8, 2, 0, 6][..]);
        assert_eq!(
            decode(&mut buf, Protocol::V311, 64),
            Err(DecodeError::InvalidReasonCode(6))
        );
        let mut buf = BytesMut::from(&[0x20u8, 2, 2, 0][..]);
        assert_eq!(
            decode(&mut buf, Protocol::V311, 64),
            Err(DecodeError::Protocol("CONNACK reserved flags set (MQTT-3.2.2-1)"))
        );
    }
}
