//! Decode errors, each naming the rule broken and mapping to an MQTT 5 reason code.

use thiserror::Error;

use super::reason;
use crate::topic::TopicError;

/// Why bytes from the network are not a valid MQTT packet.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// A variable byte integer longer than four bytes, or not in the fewest bytes
    /// (MQTT-1.5.5-1, 2.2.3).
    #[error("malformed variable byte integer")]
    MalformedLength,
    /// The packet is larger than the configured maximum, seen from the fixed header.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge { size: usize, max: usize },
    /// Packet type 0, or AUTH (15) on MQTT 3.1.1.
    #[error("invalid packet type {0}")]
    InvalidPacketType(u8),
    /// Reserved fixed-header flags differ from the spec's value (MQTT-2.2.2-2).
    #[error("invalid fixed header flags {flags:#06b} for packet type {packet_type}")]
    InvalidFlags { packet_type: u8, flags: u8 },
    /// CONNECT names a protocol other than "MQTT" (MQTT-3.1.2-1).
    #[error("invalid protocol name")]
    InvalidProtocolName,
    /// CONNECT asks for a protocol level other than 4 (3.1.1) or 5 (MQTT-3.1.2-2).
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolLevel(u8),
    /// A field runs past the end of the packet.
    #[error("packet truncated: a field runs past its end")]
    Truncated,
    /// Bytes left over after the last field.
    #[error("unexpected bytes after the last field")]
    TrailingBytes,
    /// A string is not valid UTF-8 (MQTT-1.5.3-1).
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    /// A string holds U+0000 (MQTT-1.5.3-2).
    #[error("string contains a null character")]
    NullCharacter,
    /// QoS 3.
    #[error("invalid QoS 3")]
    InvalidQoS,
    /// A PUBLISH topic name breaks the topic rules.
    #[error("invalid topic name: {0}")]
    InvalidTopic(TopicError),
    /// A SUBSCRIBE or UNSUBSCRIBE filter breaks the filter rules.
    #[error("invalid topic filter: {0}")]
    InvalidFilter(TopicError),
    /// Packet identifier 0 where one is required (MQTT-2.3.1-1).
    #[error("packet identifier is zero")]
    ZeroPacketId,
    /// A property identifier not defined by MQTT 5.
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u8),
    /// A property that this packet type may not carry.
    #[error("property {0:#04x} is not allowed in this packet")]
    PropertyNotAllowed(u8),
    /// A property that may appear once appears twice.
    #[error("property {0:#04x} appears more than once")]
    DuplicateProperty(u8),
    /// A property with a value outside its range.
    #[error("property {0:#04x} has an invalid value")]
    InvalidPropertyValue(u8),
    /// A reason code this packet type may not carry.
    #[error("invalid reason code {0:#04x}")]
    InvalidReasonCode(u8),
    /// Another protocol rule, named by its spec clause.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
}

impl DecodeError {
    /// The MQTT 5 reason code to send in CONNACK or DISCONNECT for this error.
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::PacketTooLarge { .. } => reason::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocolLevel(_) | DecodeError::InvalidProtocolName => {
                reason::UNSUPPORTED_PROTOCOL_VERSION
            }
            DecodeError::InvalidTopic(_) => reason::TOPIC_NAME_INVALID,
            DecodeError::InvalidFilter(_) => reason::TOPIC_FILTER_INVALID,
            DecodeError::Protocol(_)
            | DecodeError::InvalidPacketType(_)
            | DecodeError::PropertyNotAllowed(_)
            | DecodeError::DuplicateProperty(_)
            | DecodeError::InvalidPropertyValue(_)
            | DecodeError::ZeroPacketId => reason::PROTOCOL_ERROR,
            _ => reason::MALFORMED_PACKET,
        }
    }
}
