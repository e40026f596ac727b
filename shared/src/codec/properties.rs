//! MQTT 5 properties (section 2.2.2): one struct for every packet type, with the set
//! of identifiers each packet may carry checked on decode.

use bytes::{BufMut, Bytes, BytesMut};

use super::primitives::{binary_len, put_binary, put_string, put_varint, varint_len, Reader, MAX_VARINT};
use super::DecodeError;

pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
pub const CONTENT_TYPE: u8 = 0x03;
pub const RESPONSE_TOPIC: u8 = 0x08;
pub const CORRELATION_DATA: u8 = 0x09;
pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
pub const SERVER_KEEP_ALIVE: u8 = 0x13;
pub const AUTHENTICATION_METHOD: u8 = 0x15;
pub const AUTHENTICATION_DATA: u8 = 0x16;
pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
pub const WILL_DELAY_INTERVAL: u8 = 0x18;
pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
pub const RESPONSE_INFORMATION: u8 = 0x1A;
pub const SERVER_REFERENCE: u8 = 0x1C;
pub const REASON_STRING: u8 = 0x1F;
pub const RECEIVE_MAXIMUM: u8 = 0x21;
pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub const TOPIC_ALIAS: u8 = 0x23;
pub const MAXIMUM_QOS: u8 = 0x24;
pub const RETAIN_AVAILABLE: u8 = 0x25;
pub const USER_PROPERTY: u8 = 0x26;
pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

const fn mask(ids: &[u8]) -> u64 {
    let mut m = 0u64;
    let mut i = 0;
    while i < ids.len() {
        m |= 1 << ids[i];
        i += 1;
    }
    m
}

/// Which properties each packet may carry (MQTT 5 table 2-4).
pub mod allowed {
    use super::*;
    pub const CONNECT: u64 = mask(&[
        SESSION_EXPIRY_INTERVAL,
        AUTHENTICATION_METHOD,
        AUTHENTICATION_DATA,
        REQUEST_PROBLEM_INFORMATION,
        REQUEST_RESPONSE_INFORMATION,
        RECEIVE_MAXIMUM,
        TOPIC_ALIAS_MAXIMUM,
        USER_PROPERTY,
        MAXIMUM_PACKET_SIZE,
    ]);
    pub const WILL: u64 = mask(&[
        PAYLOAD_FORMAT_INDICATOR,
        MESSAGE_EXPIRY_INTERVAL,
        CONTENT_TYPE,
        RESPONSE_TOPIC,
        CORRELATION_DATA,
        WILL_DELAY_INTERVAL,
        USER_PROPERTY,
    ]);
    pub const CONNACK: u64 = mask(&[
        SESSION_EXPIRY_INTERVAL,
        ASSIGNED_CLIENT_IDENTIFIER,
        SERVER_KEEP_ALIVE,
        AUTHENTICATION_METHOD,
        AUTHENTICATION_DATA,
        RESPONSE_INFORMATION,
        SERVER_REFERENCE,
        REASON_STRING,
        RECEIVE_MAXIMUM,
        TOPIC_ALIAS_MAXIMUM,
        MAXIMUM_QOS,
        RETAIN_AVAILABLE,
        USER_PROPERTY,
        MAXIMUM_PACKET_SIZE,
        WILDCARD_SUBSCRIPTION_AVAILABLE,
        SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        SHARED_SUBSCRIPTION_AVAILABLE,
    ]);
    pub const PUBLISH: u64 = mask(&[
        PAYLOAD_FORMAT_INDICATOR,
        MESSAGE_EXPIRY_INTERVAL,
        CONTENT_TYPE,
        RESPONSE_TOPIC,
        CORRELATION_DATA,
        SUBSCRIPTION_IDENTIFIER,
        TOPIC_ALIAS,
        USER_PROPERTY,
    ]);
    /// PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK.
    pub const ACK: u64 = mask(&[REASON_STRING, USER_PROPERTY]);
    pub const SUBSCRIBE: u64 = mask(&[SUBSCRIPTION_IDENTIFIER, USER_PROPERTY]);
    pub const UNSUBSCRIBE: u64 = mask(&[USER_PROPERTY]);
    pub const DISCONNECT: u64 = mask(&[SESSION_EXPIRY_INTERVAL, SERVER_REFERENCE, REASON_STRING, USER_PROPERTY]);
    pub const AUTH: u64 = mask(&[AUTHENTICATION_METHOD, AUTHENTICATION_DATA, REASON_STRING, USER_PROPERTY]);
}

/// The properties of one packet. Fields absent on the wire are `None` or empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    /// Several on PUBLISH from server to client; at most one on SUBSCRIBE.
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub user_properties: Vec<(String, String)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

fn set_once<T>(slot: &mut Option<T>, id: u8, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty(id));
    }
    *slot = Some(value);
    Ok(())
}

fn flag(r: &mut Reader, id: u8) -> Result<u8, DecodeError> {
    let v = r.u8()?;
    if v > 1 {
        return Err(DecodeError::InvalidPropertyValue(id));
    }
    Ok(v)
}

fn nonzero_u16(r: &mut Reader, id: u8) -> Result<u16, DecodeError> {
    let v = r.u16()?;
    if v == 0 {
        return Err(DecodeError::InvalidPropertyValue(id));
    }
    Ok(v)
}

impl Properties {
    /// True when no property is set.
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }

    /// Reads the property length and the properties, refusing any not in `allowed`.
    pub fn decode(r: &mut Reader, allowed: u64) -> Result<Properties, DecodeError> {
        let len = r.varint()? as usize;
        let mut r = Reader::new(r.bytes(len)?);
        let mut p = Properties::default();
        while r.remaining() > 0 {
            let id = r.varint()?;
            let id = u8::try_from(id).map_err(|_| DecodeError::UnknownProperty(0xff))?;
            if id >= 64 || allowed & (1 << id) == 0 {
                return Err(if is_known(id) {
                    DecodeError::PropertyNotAllowed(id)
                } else {
                    DecodeError::UnknownProperty(id)
                });
            }
            match id {
                PAYLOAD_FORMAT_INDICATOR => set_once(&mut p.payload_format_indicator, id, flag(&mut r, id)?)?,
                MESSAGE_EXPIRY_INTERVAL => set_once(&mut p.message_expiry_interval, id, r.u32()?)?,
                CONTENT_TYPE => set_once(&mut p.content_type, id, r.string()?)?,
                RESPONSE_TOPIC => {
                    let t = r.string()?;
                    crate::topic::validate_topic_name(&t).map_err(DecodeError::InvalidTopic)?;
                    set_once(&mut p.response_topic, id, t)?
                }
                CORRELATION_DATA => set_once(&mut p.correlation_data, id, r.binary()?)?,
                SUBSCRIPTION_IDENTIFIER => {
                    let v = r.varint()?;
                    if v == 0 {
                        return Err(DecodeError::InvalidPropertyValue(id));
                    }
                    p.subscription_identifiers.push(v);
                }
                SESSION_EXPIRY_INTERVAL => set_once(&mut p.session_expiry_interval, id, r.u32()?)?,
                ASSIGNED_CLIENT_IDENTIFIER => set_once(&mut p.assigned_client_identifier, id, r.string()?)?,
                SERVER_KEEP_ALIVE => set_once(&mut p.server_keep_alive, id, r.u16()?)?,
                AUTHENTICATION_METHOD => set_once(&mut p.authentication_method, id, r.string()?)?,
                AUTHENTICATION_DATA => set_once(&mut p.authentication_data, id, r.binary()?)?,
                REQUEST_PROBLEM_INFORMATION => set_once(&mut p.request_problem_information, id, flag(&mut r, id)?)?,
                WILL_DELAY_INTERVAL => set_once(&mut p.will_delay_interval, id, r.u32()?)?,
                REQUEST_RESPONSE_INFORMATION => set_once(&mut p.request_response_information, id, flag(&mut r, id)?)?,
                RESPONSE_INFORMATION => set_once(&mut p.response_information, id, r.string()?)?,
                SERVER_REFERENCE => set_once(&mut p.server_reference, id, r.string()?)?,
                REASON_STRING => set_once(&mut p.reason_string, id, r.string()?)?,
                RECEIVE_MAXIMUM => set_once(&mut p.receive_maximum, id, nonzero_u16(&mut r, id)?)?,
                TOPIC_ALIAS_MAXIMUM => set_once(&mut p.topic_alias_maximum, id, r.u16()?)?,
                TOPIC_ALIAS => set_once(&mut p.topic_alias, id, nonzero_u16(&mut r, id)?)?,
                MAXIMUM_QOS => set_once(&mut p.maximum_qos, id, flag(&mut r, id)?)?,
                RETAIN_AVAILABLE => set_once(&mut p.retain_available, id, flag(&mut r, id)?)?,
                USER_PROPERTY => {
                    let k = r.string()?;
                    let v = r.string()?;
                    p.user_properties.push((k, v));
                }
                MAXIMUM_PACKET_SIZE => {
                    let v = r.u32()?;
                    if v == 0 {
                        return Err(DecodeError::InvalidPropertyValue(id));
                    }
                    set_once(&mut p.maximum_packet_size, id, v)?
                }
                WILDCARD_SUBSCRIPTION_AVAILABLE => {
                    set_once(&mut p.wildcard_subscription_available, id, flag(&mut r, id)?)?
                }
                SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                    set_once(&mut p.subscription_identifier_available, id, flag(&mut r, id)?)?
                }
                SHARED_SUBSCRIPTION_AVAILABLE => set_once(&mut p.shared_subscription_available, id, flag(&mut r, id)?)?,
                other => return Err(DecodeError::UnknownProperty(other)),
            }
        }
        Ok(p)
    }

    /// Encoded size of the properties, without the length prefix.
    pub fn body_len(&self) -> usize {
        let b = |o: &Option<u8>| o.map_or(0, |_| 2);
        let w = |o: &Option<u16>| o.map_or(0, |_| 3);
        let d = |o: &Option<u32>| o.map_or(0, |_| 5);
        let s = |o: &Option<String>| o.as_ref().map_or(0, |s| 1 + binary_len(s.as_bytes()));
        let bin = |o: &Option<Bytes>| o.as_ref().map_or(0, |v| 1 + binary_len(v));
        b(&self.payload_format_indicator)
            + d(&self.message_expiry_interval)
            + s(&self.content_type)
            + s(&self.response_topic)
            + bin(&self.correlation_data)
            + self
                .subscription_identifiers
                .iter()
                .map(|&v| 1 + varint_len(v.min(MAX_VARINT) as usize))
                .sum::<usize>()
            + d(&self.session_expiry_interval)
            + s(&self.assigned_client_identifier)
            + w(&self.server_keep_alive)
            + s(&self.authentication_method)
            + bin(&self.authentication_data)
            + b(&self.request_problem_information)
            + d(&self.will_delay_interval)
            + b(&self.request_response_information)
            + s(&self.response_information)
            + s(&self.server_reference)
            + s(&self.reason_string)
            + w(&self.receive_maximum)
            + w(&self.topic_alias_maximum)
            + w(&self.topic_alias)
            + b(&self.maximum_qos)
            + b(&self.retain_available)
            + self
                .user_properties
                .iter()
                .map(|(k, v)| 1 + binary_len(k.as_bytes()) + binary_len(v.as_bytes()))
                .sum::<usize>()
            + d(&self.maximum_packet_size)
            + b(&self.wildcard_subscription_available)
            + b(&self.subscription_identifier_available)
            + b(&self.shared_subscription_available)
    }

    /// Encoded size including the length prefix.
    pub fn encoded_len(&self) -> usize {
        let n = self.body_len();
        varint_len(n) + n
    }

    /// Writes the length prefix and the properties.
    pub fn encode(&self, buf: &mut BytesMut) {
        put_varint(buf, self.body_len());
        let byte = |buf: &mut BytesMut, id: u8, v: Option<u8>| {
            if let Some(v) = v {
                buf.put_u8(id);
                buf.put_u8(v);
            }
        };
        let word = |buf: &mut BytesMut, id: u8, v: Option<u16>| {
            if let Some(v) = v {
                buf.put_u8(id);
                buf.put_u16(v);
            }
        };
        let dword = |buf: &mut BytesMut, id: u8, v: Option<u32>| {
            if let Some(v) = v {
                buf.put_u8(id);
                buf.put_u32(v);
            }
        };
        let string = |buf: &mut BytesMut, id: u8, v: &Option<String>| {
            if let Some(v) = v {
                buf.put_u8(id);
                put_string(buf, v);
            }
        };
        let binary = |buf: &mut BytesMut, id: u8, v: &Option<Bytes>| {
            if let Some(v) = v {
                buf.put_u8(id);
                put_binary(buf, v);
            }
        };
        byte(buf, PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        dword(buf, MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        string(buf, CONTENT_TYPE, &self.content_type);
        string(buf, RESPONSE_TOPIC, &self.response_topic);
        binary(buf, CORRELATION_DATA, &self.correlation_data);
        for &id in &self.subscription_identifiers {
            buf.put_u8(SUBSCRIPTION_IDENTIFIER);
            put_varint(buf, id.min(MAX_VARINT) as usize);
        }
        dword(buf, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        string(buf, ASSIGNED_CLIENT_IDENTIFIER, &self.assigned_client_identifier);
        word(buf, SERVER_KEEP_ALIVE, self.server_keep_alive);
        string(buf, AUTHENTICATION_METHOD, &self.authentication_method);
        binary(buf, AUTHENTICATION_DATA, &self.authentication_data);
        byte(buf, REQUEST_PROBLEM_INFORMATION, self.request_problem_information);
        dword(buf, WILL_DELAY_INTERVAL, self.will_delay_interval);
        byte(buf, REQUEST_RESPONSE_INFORMATION, self.request_response_information);
        string(buf, RESPONSE_INFORMATION, &self.response_information);
        string(buf, SERVER_REFERENCE, &self.server_reference);
        string(buf, REASON_STRING, &self.reason_string);
        word(buf, RECEIVE_MAXIMUM, self.receive_maximum);
        word(buf, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        word(buf, TOPIC_ALIAS, self.topic_alias);
        byte(buf, MAXIMUM_QOS, self.maximum_qos);
        byte(buf, RETAIN_AVAILABLE, self.retain_available);
        for (k, v) in &self.user_properties {
            buf.put_u8(USER_PROPERTY);
            put_string(buf, k);
            put_string(buf, v);
        }
        dword(buf, MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        byte(
            buf,
            WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        byte(
            buf,
            SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifier_available,
        );
        byte(buf, SHARED_SUBSCRIPTION_AVAILABLE, self.shared_subscription_available);
    }
}

fn is_known(id: u8) -> bool {
    matches!(
        id,
        0x01 | 0x02 | 0x03 | 0x08 | 0x09 | 0x0B | 0x11 | 0x12 | 0x13 | 0x15..=0x1A | 0x1C | 0x1F | 0x21..=0x2A
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(p: &Properties, allowed: u64) -> Properties {
        let mut buf = BytesMut::new();
        p.encode(&mut buf);
        assert_eq!(buf.len(), p.encoded_len());
        let mut r = Reader::new(buf.freeze());
        let out = Properties::decode(&mut r, allowed).unwrap();
        r.finish().unwrap();
        out
    }

    #[test]
    fn publish_properties_round_trip() {
        let p = Properties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            content_type: Some("text/plain".into()),
            response_topic: Some("r/t".into()),
            correlation_data: Some(Bytes::from_static(b"c")),
            subscription_identifiers: vec![1, 268_435_455],
            topic_alias: Some(3),
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
            ..Properties::default()
        };
        assert_eq!(round_trip(&p, allowed::PUBLISH), p);
    }

    #[test]
    fn refuses_disallowed_duplicate_and_bad_values() {
        let bad =
            |bytes: &'static [u8], allowed| Properties::decode(&mut Reader::new(Bytes::from_static(bytes)), allowed);
        assert_eq!(bad(&[2, 0x11, 0], allowed::CONNECT), Err(DecodeError::Truncated));
        assert_eq!(
            bad(&[5, 0x11, 0, 0, 0, 1], allowed::PUBLISH),
            Err(DecodeError::PropertyNotAllowed(0x11))
        );
        assert_eq!(
            bad(&[4, 0x01, 1, 0x01, 0], allowed::PUBLISH),
            Err(DecodeError::DuplicateProperty(0x01))
        );
        assert_eq!(
            bad(&[2, 0x01, 2], allowed::PUBLISH),
            Err(DecodeError::InvalidPropertyValue(0x01))
        );
        assert_eq!(
            bad(&[3, 0x21, 0, 0], allowed::CONNECT),
            Err(DecodeError::InvalidPropertyValue(0x21))
        );
        assert_eq!(
            bad(&[2, 0x7f, 0], allowed::CONNECT),
            Err(DecodeError::UnknownProperty(0x7f))
        );
    }
}
