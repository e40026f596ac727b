//! CONNECT (MQTT 3.1.1 section 3.1, MQTT 5 section 3.1).

use bytes::{BufMut, Bytes, BytesMut};

use super::primitives::{binary_len, put_binary, put_string, Reader};
use super::properties::allowed;
use super::{DecodeError, Properties, Protocol, QoS};
use crate::topic::validate_topic_name;

/// A client's connection request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: Protocol,
    /// Clean session (3.1.1) / clean start (5).
    pub clean_start: bool,
    /// Seconds; 0 turns keepalive off.
    pub keep_alive: u16,
    /// May be empty.
    pub client_id: String,
    pub will: Option<LastWill>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub properties: Properties,
}

/// The will message of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 will properties (will delay interval, message expiry, ...).
    pub properties: Properties,
}

const PROTOCOL_NAME: &str = "MQTT";

impl Connect {
    pub(crate) fn decode(r: &mut Reader) -> Result<Connect, DecodeError> {
        let name = r.string().map_err(|_| DecodeError::InvalidProtocolName)?;
        let level = r.u8()?;
        if name != PROTOCOL_NAME {
            // "MQIsdp" level 3 is MQTT 3.1, which Natter does not speak: answer it with
            // "unacceptable protocol version" rather than closing silently.
            return Err(if name == "MQIsdp" {
                DecodeError::UnsupportedProtocolLevel(level)
            } else {
                DecodeError::InvalidProtocolName
            });
        }
        let protocol = match level {
            4 => Protocol::V311,
            5 => Protocol::V5,
            other => return Err(DecodeError::UnsupportedProtocolLevel(other)),
        };
        let flags = r.u8()?;
        if flags & 0x01 != 0 {
            return Err(DecodeError::Protocol("CONNECT reserved flag is set (MQTT-3.1.2-3)"));
        }
        let clean_start = flags & 0x02 != 0;
        let will_flag = flags & 0x04 != 0;
        let will_qos = QoS::from_u8((flags >> 3) & 0x03)?;
        let will_retain = flags & 0x20 != 0;
        let password_flag = flags & 0x40 != 0;
        let username_flag = flags & 0x80 != 0;
        if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
            return Err(DecodeError::Protocol(
                "will QoS or retain set without a will (MQTT-3.1.2-11)",
            ));
        }
        if protocol == Protocol::V311 && password_flag && !username_flag {
            return Err(DecodeError::Protocol("password without user name (MQTT-3.1.2-22)"));
        }
        let keep_alive = r.u16()?;
        let properties = match protocol {
            Protocol::V5 => Properties::decode(r, allowed::CONNECT)?,
            Protocol::V311 => Properties::default(),
        };
        if properties.authentication_method.is_none() && properties.authentication_data.is_some() {
            return Err(DecodeError::Protocol(
                "authentication data without method (MQTT-3.1.2-30)",
            ));
        }
        let client_id = r.string()?;
        let will = if will_flag {
            let properties = match protocol {
                Protocol::V5 => Properties::decode(r, allowed::WILL)?,
                Protocol::V311 => Properties::default(),
            };
            let topic = r.string()?;
            validate_topic_name(&topic).map_err(DecodeError::InvalidTopic)?;
            let payload = r.binary()?;
            Some(LastWill {
                topic,
                payload,
                qos: will_qos,
                retain: will_retain,
                properties,
            })
        } else {
            None
        };
        let username = if username_flag { Some(r.string()?) } else { None };
        let password = if password_flag { Some(r.binary()?) } else { None };
        Ok(Connect {
            protocol,
            clean_start,
            keep_alive,
            client_id,
            will,
            username,
            password,
            properties,
        })
    }

    pub(crate) fn body_len(&self) -> usize {
        let v5 = self.protocol == Protocol::V5;
        let mut len = binary_len(PROTOCOL_NAME.as_bytes()) + 1 + 1 + 2;
        if v5 {
            len += self.properties.encoded_len();
        }
        len += binary_len(self.client_id.as_bytes());
        if let Some(w) = &self.will {
            if v5 {
                len += w.properties.encoded_len();
            }
            len += binary_len(w.topic.as_bytes()) + binary_len(&w.payload);
        }
        len += self.username.as_ref().map_or(0, |u| binary_len(u.as_bytes()));
        len += self.password.as_ref().map_or(0, |p| binary_len(p));
        len
    }

    pub(crate) fn encode_body(&self, buf: &mut BytesMut) {
        put_string(buf, PROTOCOL_NAME);
        buf.put_u8(self.protocol.level());
        let mut flags = 0u8;
        if self.clean_start {
            flags |= 0x02;
        }
        if let Some(w) = &self.will {
            flags |= 0x04 | ((w.qos as u8) << 3);
            if w.retain {
                flags |= 0x20;
            }
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        buf.put_u8(flags);
        buf.put_u16(self.keep_alive);
        let v5 = self.protocol == Protocol::V5;
        if v5 {
            self.properties.encode(buf);
        }
        put_string(buf, &self.client_id);
        if let Some(w) = &self.will {
            if v5 {
                w.properties.encode(buf);
            }
            put_string(buf, &w.topic);
            put_binary(buf, &w.payload);
        }
        if let Some(u) = &self.username {
            put_string(buf, u);
        }
        if let Some(p) = &self.password {
            put_binary(buf, p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;

    fn connect(protocol: Protocol) -> Connect {
        Connect {
            protocol,
            clean_start: false,
            keep_alive: 60,
            client_id: "dev-1".into(),
            will: Some(LastWill {
                topic: "status/dev-1".into(),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::ExactlyOnce,
                retain: true,
                properties: if protocol == Protocol::V5 {
                    Properties {
                        will_delay_interval: Some(5),
                        ..Default::default()
                    }
                } else {
                    Properties::default()
                },
            }),
            username: Some("alice".into()),
            password: Some(Bytes::from_static(b"secret")),
            properties: if protocol == Protocol::V5 {
                Properties {
                    session_expiry_interval: Some(100),
                    receive_maximum: Some(10),
                    ..Default::default()
                }
            } else {
                Properties::default()
            },
        }
    }

    #[test]
    fn round_trips_both_versions() {
        for proto in [Protocol::V311, Protocol::V5] {
            let p = Packet::Connect(Box::new(connect(proto)));
            assert_eq!(round_trip(&p, proto), p);
            let mut bare = connect(proto);
            bare.will = None;
            bare.username = None;
            bare.password = None;
            let p = Packet::Connect(Box::new(bare));
            // The connection's version does not matter for CONNECT: it carries its own.
            assert_eq!(round_trip(&p, Protocol::V311), p);
        }
    }

    fn decode_raw(bytes: &[u8]) -> Result<Option<Packet>, DecodeError> {
        let mut buf = BytesMut::from(bytes);
        decode(&mut buf, Protocol::V311, 1024)
    }

    #[test]
    fn refuses_bad_connects() {
        // protocol level 3 with name MQTT
        assert_eq!(
            decode_raw(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 3, 2, 0, 60, 0, 0]),
            Err(DecodeError::UnsupportedProtocolLevel(3))
        );
        // wrong name
        assert_eq!(
            decode_raw(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'X', 4, 2, 0, 60, 0, 0]),
            Err(DecodeError::InvalidProtocolName)
        );
        // reserved flag
        assert!(matches!(
            decode_raw(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 3, 0, 60, 0, 0]),
            Err(DecodeError::Protocol(_))
        ));
        // will qos without will
        assert!(matches!(
            decode_raw(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x0a, 0, 60, 0, 0]),
            Err(DecodeError::Protocol(_))
        ));
        // password without username on 3.1.1
        assert!(matches!(
            decode_raw(&[0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x42, 0, 60, 0, 0, 0, 0]),
            Err(DecodeError::Protocol(_))
        ));
        // flags on the fixed header
        assert_eq!(
            decode_raw(&[0x11, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0]),
            Err(DecodeError::InvalidFlags {
                packet_type: 1,
                flags: 1
            })
        );
        // truncated client id
        assert_eq!(
            decode_raw(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 5]),
            Err(DecodeError::Truncated)
        );
    }
}
