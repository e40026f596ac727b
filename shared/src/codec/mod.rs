//! The MQTT 3.1.1 and 5.0 codec: one file per packet type, each with decode, encoded
//! size and encode. The protocol version is a parameter: MQTT 5 fields (properties,
//! reason codes) are read and written only on [`Protocol::V5`].
//!
//! Decoding is two-phase: [`decode`] first checks the fixed header and the remaining
//! length against the caller's maximum packet size (before buffering the body), then
//! parses the body. "Not enough bytes yet" is `Ok(None)`, never an error. No input
//! makes it panic (see the property tests at the bottom of this file, and the
//! generated-packet ones in `generated.rs`).

mod ack;
mod auth;
mod connack;
mod connect;
mod disconnect;
mod error;
#[cfg(test)]
mod generated;
mod primitives;
pub mod properties;
mod publish;
pub mod reason;
mod suback;
mod subscribe;
mod unsuback;
mod unsubscribe;

use bytes::{BufMut, BytesMut};

pub use ack::Ack;
pub use auth::Auth;
pub use connack::ConnAck;
pub use connect::{Connect, LastWill};
pub use disconnect::Disconnect;
pub use error::DecodeError;
pub use primitives::MAX_VARINT;
pub use properties::Properties;
pub use publish::Publish;
pub use suback::SubAck;
pub use subscribe::{RetainHandling, Subscribe, SubscribeFilter, SubscriptionOptions};
pub use unsuback::UnsubAck;
pub use unsubscribe::Unsubscribe;

use primitives::{put_varint, varint_len, Reader};

/// Largest packet MQTT can express: remaining length 268,435,455 plus a 5-byte header.
pub const MAX_PACKET_SIZE: usize = MAX_VARINT as usize + 5;

/// The protocol version of a connection, fixed by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

impl Protocol {
    pub fn level(self) -> u8 {
        match self {
            Protocol::V311 => 4,
            Protocol::V5 => 5,
        }
    }
}

/// Quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(v: u8) -> Result<QoS, DecodeError> {
        match v {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            _ => Err(DecodeError::InvalidQoS),
        }
    }
}

/// Every MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBREL: u8 = 6;
const PUBCOMP: u8 = 7;
const SUBSCRIBE: u8 = 8;
const SUBACK: u8 = 9;
const UNSUBSCRIBE: u8 = 10;
const UNSUBACK: u8 = 11;
const PINGREQ: u8 = 12;
const PINGRESP: u8 = 13;
const DISCONNECT: u8 = 14;
const AUTH: u8 = 15;

/// Where a complete packet sits at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// First byte: packet type and flags.
    pub header: u8,
    /// Fixed header length (1 + varint bytes).
    pub header_len: usize,
    /// Remaining length: the body's size.
    pub body_len: usize,
}

impl Frame {
    pub fn total_len(&self) -> usize {
        self.header_len + self.body_len
    }
}

/// Phase one: reads the fixed header at the front of `buf` without allocating.
///
/// Returns `Ok(None)` while the fixed header is incomplete, and refuses a packet whose
/// total size exceeds `max_size` before its body arrives.
///
/// # Errors
/// [`DecodeError::MalformedLength`] or [`DecodeError::PacketTooLarge`].
pub fn check_frame(buf: &[u8], max_size: usize) -> Result<Option<Frame>, DecodeError> {
    let Some(&header) = buf.first() else {
        return Ok(None);
    };
    let mut body_len = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        body_len |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            // A last byte of 0 after a continuation is a padded, non-minimal encoding
            // (MQTT-1.5.5-1).
            if i > 0 && byte == 0 {
                return Err(DecodeError::MalformedLength);
            }
            let frame = Frame {
                header,
                header_len: 2 + i,
                body_len,
            };
            if frame.total_len() > max_size {
                return Err(DecodeError::PacketTooLarge {
                    size: frame.total_len(),
                    max: max_size,
                });
            }
            return Ok(Some(frame));
        }
    }
    Err(DecodeError::MalformedLength)
}

/// Decodes one packet from the front of `buf`, removing its bytes.
///
/// `protocol` is the connection's version; a CONNECT carries its own and ignores it.
/// Returns `Ok(None)` when more bytes are needed (after reserving room for them, never
/// more than `max_size`).
///
/// # Errors
/// Any [`DecodeError`]: the connection must then be closed (with a DISCONNECT carrying
/// [`DecodeError::reason_code`] on MQTT 5).
pub fn decode(buf: &mut BytesMut, protocol: Protocol, max_size: usize) -> Result<Option<Packet>, DecodeError> {
    let Some(frame) = check_frame(buf, max_size)? else {
        return Ok(None);
    };
    if buf.len() < frame.total_len() {
        buf.reserve(frame.total_len() - buf.len());
        return Ok(None);
    }
    let mut bytes = buf.split_to(frame.total_len()).freeze();
    let body = bytes.split_off(frame.header_len);
    decode_body(frame.header, body, protocol).map(Some)
}

fn expect_flags(header: u8, expected: u8) -> Result<(), DecodeError> {
    if header & 0x0f != expected {
        return Err(DecodeError::InvalidFlags {
            packet_type: header >> 4,
            flags: header & 0x0f,
        });
    }
    Ok(())
}

fn decode_body(header: u8, body: bytes::Bytes, protocol: Protocol) -> Result<Packet, DecodeError> {
    let packet_type = header >> 4;
    let empty = body.is_empty();
    let mut r = Reader::new(body);
    let packet = match packet_type {
        CONNECT => {
            expect_flags(header, 0)?;
            Packet::Connect(Box::new(Connect::decode(&mut r)?))
        }
        CONNACK => {
            expect_flags(header, 0)?;
            Packet::ConnAck(ConnAck::decode(&mut r, protocol)?)
        }
        PUBLISH => Packet::Publish(Publish::decode(header & 0x0f, &mut r, protocol)?),
        PUBACK => {
            expect_flags(header, 0)?;
            Packet::PubAck(Ack::decode(&mut r, protocol, reason::PUBACK_CODES)?)
        }
        PUBREC => {
            expect_flags(header, 0)?;
            Packet::PubRec(Ack::decode(&mut r, protocol, reason::PUBACK_CODES)?)
        }
        PUBREL => {
            expect_flags(header, 0b0010)?;
            Packet::PubRel(Ack::decode(&mut r, protocol, reason::PUBREL_CODES)?)
        }
        PUBCOMP => {
            expect_flags(header, 0)?;
            Packet::PubComp(Ack::decode(&mut r, protocol, reason::PUBREL_CODES)?)
        }
        SUBSCRIBE => {
            expect_flags(header, 0b0010)?;
            Packet::Subscribe(Subscribe::decode(&mut r, protocol)?)
        }
        SUBACK => {
            expect_flags(header, 0)?;
            Packet::SubAck(SubAck::decode(&mut r, protocol)?)
        }
        UNSUBSCRIBE => {
            expect_flags(header, 0b0010)?;
            Packet::Unsubscribe(Unsubscribe::decode(&mut r, protocol)?)
        }
        UNSUBACK => {
            expect_flags(header, 0)?;
            Packet::UnsubAck(UnsubAck::decode(&mut r, protocol)?)
        }
        PINGREQ | PINGRESP => {
            expect_flags(header, 0)?;
            if !empty {
                return Err(DecodeError::TrailingBytes);
            }
            if packet_type == PINGREQ {
                Packet::PingReq
            } else {
                Packet::PingResp
            }
        }
        DISCONNECT => {
            expect_flags(header, 0)?;
            Packet::Disconnect(Disconnect::decode(&mut r, protocol)?)
        }
        AUTH if protocol == Protocol::V5 => {
            expect_flags(header, 0)?;
            Packet::Auth(Auth::decode(&mut r)?)
        }
        other => return Err(DecodeError::InvalidPacketType(other)),
    };
    r.finish()?;
    Ok(packet)
}

impl Packet {
    /// Short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }

    fn header_byte(&self) -> u8 {
        match self {
            Packet::Connect(_) => CONNECT << 4,
            Packet::ConnAck(_) => CONNACK << 4,
            Packet::Publish(p) => (PUBLISH << 4) | p.flags(),
            Packet::PubAck(_) => PUBACK << 4,
            Packet::PubRec(_) => PUBREC << 4,
            Packet::PubRel(_) => (PUBREL << 4) | 0b0010,
            Packet::PubComp(_) => PUBCOMP << 4,
            Packet::Subscribe(_) => (SUBSCRIBE << 4) | 0b0010,
            Packet::SubAck(_) => SUBACK << 4,
            Packet::Unsubscribe(_) => (UNSUBSCRIBE << 4) | 0b0010,
            Packet::UnsubAck(_) => UNSUBACK << 4,
            Packet::PingReq => PINGREQ << 4,
            Packet::PingResp => PINGRESP << 4,
            Packet::Disconnect(_) => DISCONNECT << 4,
            Packet::Auth(_) => AUTH << 4,
        }
    }

    fn body_len(&self, protocol: Protocol) -> usize {
        match self {
            Packet::Connect(c) => c.body_len(),
            Packet::ConnAck(c) => c.body_len(protocol),
            Packet::Publish(p) => p.body_len(protocol),
            Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => a.body_len(protocol),
            Packet::Subscribe(s) => s.body_len(protocol),
            Packet::SubAck(s) => s.body_len(protocol),
            Packet::Unsubscribe(u) => u.body_len(protocol),
            Packet::UnsubAck(u) => u.body_len(protocol),
            Packet::PingReq | Packet::PingResp => 0,
            Packet::Disconnect(d) => d.body_len(protocol),
            Packet::Auth(a) => a.body_len(),
        }
    }

    /// Size of the whole encoded packet, fixed header included.
    pub fn encoded_len(&self, protocol: Protocol) -> usize {
        let body = self.body_len(protocol);
        1 + varint_len(body) + body
    }

    /// Appends the encoded packet to `buf`.
    pub fn encode(&self, buf: &mut BytesMut, protocol: Protocol) {
        let body = self.body_len(protocol);
        buf.reserve(1 + varint_len(body) + body);
        buf.put_u8(self.header_byte());
        put_varint(buf, body);
        match self {
            Packet::Connect(c) => c.encode_body(buf),
            Packet::ConnAck(c) => c.encode_body(buf, protocol),
            Packet::Publish(p) => p.encode_body(buf, protocol),
            Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
                a.encode_body(buf, protocol)
            }
            Packet::Subscribe(s) => s.encode_body(buf, protocol),
            Packet::SubAck(s) => s.encode_body(buf, protocol),
            Packet::Unsubscribe(u) => u.encode_body(buf, protocol),
            Packet::UnsubAck(u) => u.encode_body(buf, protocol),
            Packet::PingReq | Packet::PingResp => {}
            Packet::Disconnect(d) => d.encode_body(buf, protocol),
            Packet::Auth(a) => a.encode_body(buf),
        }
    }
}

/// Reads a packet identifier that must not be zero.
fn read_pkid(r: &mut Reader) -> Result<u16, DecodeError> {
    let id = r.u16()?;
    if id == 0 {
        return Err(DecodeError::ZeroPacketId);
    }
    Ok(id)
}

#[cfg(test)]
pub(crate) fn round_trip(packet: &Packet, protocol: Protocol) -> Packet {
    let mut buf = BytesMut::new();
    packet.encode(&mut buf, protocol);
    assert_eq!(
        buf.len(),
        packet.encoded_len(protocol),
        "encoded_len of {}",
        packet.name()
    );
    let out = decode(&mut buf, protocol, MAX_PACKET_SIZE)
        .expect("decodes")
        .expect("complete");
    assert!(buf.is_empty(), "trailing bytes after {}", packet.name());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn incomplete_input_is_not_an_error() {
        let mut full = BytesMut::new();
        Packet::PingReq.encode(&mut full, Protocol::V311);
        let mut partial = BytesMut::from(&full[..1]);
        assert_eq!(decode(&mut partial, Protocol::V311, 1024), Ok(None));
        let mut pubframe = BytesMut::from(&[0x30u8, 10, 0, 1][..]);
        assert_eq!(decode(&mut pubframe, Protocol::V311, 1024), Ok(None));
    }

    #[test]
    fn size_is_checked_from_the_fixed_header() {
        let mut buf = BytesMut::from(&[0x30u8, 0xff, 0xff, 0x7f][..]);
        assert_eq!(
            decode(&mut buf, Protocol::V311, 1024),
            Err(DecodeError::PacketTooLarge {
                size: 2_097_155,
                max: 1024
            })
        );
        assert_eq!(
            check_frame(&[0x30, 0xff, 0xff, 0xff, 0xff], usize::MAX),
            Err(DecodeError::MalformedLength)
        );
    }

    #[test]
    fn lengths_use_the_fewest_bytes() {
        // 0 in two bytes, 127 in two, 128 in three: padded, refused.
        for padded in [
            &[0x30u8, 0x80, 0x00][..],
            &[0x30, 0xff, 0x00],
            &[0x30, 0x80, 0x81, 0x00],
        ] {
            assert_eq!(
                check_frame(padded, usize::MAX),
                Err(DecodeError::MalformedLength),
                "{padded:?}"
            );
        }
        // The same values written minimally are fine.
        assert_eq!(check_frame(&[0x30, 0x00], usize::MAX).unwrap().unwrap().body_len, 0);
        assert_eq!(
            check_frame(&[0x30, 0x80, 0x01], usize::MAX).unwrap().unwrap().body_len,
            128
        );
        assert_eq!(
            check_frame(&[0x30, 0xff, 0xff, 0xff, 0x7f], usize::MAX)
                .unwrap()
                .unwrap()
                .body_len,
            268_435_455
        );
        // Inside a packet too: a v5 PUBLISH whose property length is 0 in two bytes.
        let mut buf = BytesMut::from(&[0x30u8, 6, 0, 1, b't', 0x80, 0x00, b'x'][..]);
        assert_eq!(decode(&mut buf, Protocol::V5, 1024), Err(DecodeError::MalformedLength));
    }

    #[test]
    fn reserved_flags_and_types_are_refused() {
        let flags = |packet_type, flags| DecodeError::InvalidFlags { packet_type, flags };
        for (bytes, proto, expected) in [
            (&[0x42u8, 2, 0, 1][..], Protocol::V311, flags(4, 2)),
            (&[0x60u8, 2, 0, 1][..], Protocol::V311, flags(6, 0)),
            (&[0xC1u8, 0][..], Protocol::V311, flags(12, 1)),
            (&[0x00u8, 0][..], Protocol::V311, DecodeError::InvalidPacketType(0)),
            (&[0xF0u8, 0][..], Protocol::V311, DecodeError::InvalidPacketType(15)),
            (&[0x80u8, 5, 0, 1, 0, 1, b'a'][..], Protocol::V311, flags(8, 0)),
            (&[0xA0u8, 5, 0, 1, 0, 1, b'a'][..], Protocol::V5, flags(10, 0)),
            (&[0x3Eu8, 3, 0, 1, b'a'][..], Protocol::V311, DecodeError::InvalidQoS),
            // Not a flag: a PINGREQ with a body.
            (&[0xC0u8, 1, 0][..], Protocol::V311, DecodeError::TrailingBytes),
        ] {
            let mut buf = BytesMut::from(bytes);
            assert_eq!(decode(&mut buf, proto, 1024), Err(expected), "{bytes:?}");
        }
    }

    #[test]
    fn ping_and_auth_round_trip() {
        assert_eq!(round_trip(&Packet::PingReq, Protocol::V311), Packet::PingReq);
        assert_eq!(round_trip(&Packet::PingResp, Protocol::V5), Packet::PingResp);
        let auth = Packet::Auth(Auth {
            reason: 0x18,
            properties: Properties {
                authentication_method: Some("x".into()),
                ..Default::default()
            },
        });
        assert_eq!(round_trip(&auth, Protocol::V5), auth);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        /// Arbitrary bytes never panic the decoder, for either version and any size limit.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), max in 0usize..400, v5: bool) {
            let proto = if v5 { Protocol::V5 } else { Protocol::V311 };
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decode(&mut buf, proto, max) {}
        }

        /// A valid fixed header followed by random body bytes, for every packet type:
        /// reaches the body parsers far more often than fully random input.
        #[test]
        fn random_bodies_never_panic(kind in 0u8..16, flags in 0u8..16, body in proptest::collection::vec(any::<u8>(), 0..120), v5: bool) {
            let proto = if v5 { Protocol::V5 } else { Protocol::V311 };
            let mut buf = BytesMut::new();
            buf.put_u8(kind << 4 | flags);
            put_varint(&mut buf, body.len());
            buf.extend_from_slice(&body);
            let _ = decode(&mut buf, proto, MAX_PACKET_SIZE);
        }
    }
}
