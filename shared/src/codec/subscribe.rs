//! SUBSCRIBE (MQTT 3.1.1 section 3.8, MQTT 5 section 3.8).

use bytes::{BufMut, BytesMut};

use super::primitives::{binary_len, put_string, Reader};
use super::properties::allowed;
use super::{read_pkid, DecodeError, Properties, Protocol, QoS};
use crate::topic::{parse_shared, validate_filter};

/// MQTT 5 Retain Handling option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe.
    #[default]
    OnSubscribe = 0,
    /// Send them only if the subscription did not exist.
    OnNewSubscription = 1,
    /// Never send them.
    Never = 2,
}

/// The options byte of one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    fn to_byte(self) -> u8 {
        (self.qos as u8)
            | (u8::from(self.no_local) << 2)
            | (u8::from(self.retain_as_published) << 3)
            | ((self.retain_handling as u8) << 4)
    }
}

/// One filter of a SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeFilter {
    pub filter: String,
    pub options: SubscriptionOptions,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub pkid: u16,
    pub properties: Properties,
    pub filters: Vec<SubscribeFilter>,
}

impl Subscribe {
    pub(crate) fn decode(r: &mut Reader, protocol: Protocol) -> Result<Subscribe, DecodeError> {
        let pkid = read_pkid(r)?;
        let properties = match protocol {
            Protocol::V5 => Properties::decode(r, allowed::SUBSCRIBE)?,
            Protocol::V311 => Properties::default(),
        };
        if properties.subscription_identifiers.len() > 1 {
            return Err(DecodeError::DuplicateProperty(
                super::properties::SUBSCRIPTION_IDENTIFIER,
            ));
        }
        let mut filters = Vec::new();
        while r.remaining() > 0 {
            let filter = r.string()?;
            let byte = r.u8()?;
            let options = match protocol {
                Protocol::V311 => {
                    if byte & 0xfc != 0 {
                        return Err(DecodeError::Protocol("SUBSCRIBE reserved bits set (MQTT-3.8.3-4)"));
                    }
                    SubscriptionOptions {
                        qos: QoS::from_u8(byte)?,
                        ..Default::default()
                    }
                }
                Protocol::V5 => {
                    if byte & 0xc0 != 0 {
                        return Err(DecodeError::Protocol("SUBSCRIBE reserved bits set (MQTT-3.8.3-5)"));
                    }
                    let retain_handling = match (byte >> 4) & 0x03 {
                        0 => RetainHandling::OnSubscribe,
                        1 => RetainHandling::OnNewSubscription,
                        2 => RetainHandling::Never,
                        _ => return Err(DecodeError::Protocol("retain handling 3 (MQTT-3.8.3-5)")),
                    };
                    SubscriptionOptions {
                        qos: QoS::from_u8(byte & 0x03)?,
                        no_local: byte & 0x04 != 0,
                        retain_as_published: byte & 0x08 != 0,
                        retain_handling,
                    }
                }
            };
            validate_filter(&filter).map_err(DecodeError::InvalidFilter)?;
            if options.no_local && parse_shared(&filter).is_some() {
                return Err(DecodeError::Protocol(
                    "no local on a shared subscription (MQTT-3.8.3-4)",
                ));
            }
            filters.push(SubscribeFilter { filter, options });
        }
        if filters.is_empty() {
            return Err(DecodeError::Protocol("SUBSCRIBE without a topic filter (MQTT-3.8.3-3)"));
        }
        Ok(Subscribe {
            pkid,
            properties,
            filters,
        })
    }

    pub(crate) fn body_len(&self, protocol: Protocol) -> usize {
        2 + match protocol {
            Protocol::V5 => self.properties.encoded_len(),
            Protocol::V311 => 0,
        } + self
            .filters
            .iter()
            .map(|f| binary_len(f.filter.as_bytes()) + 1)
            .sum::<usize>()
    }

    pub(crate) fn encode_body(&self, buf: &mut BytesMut, protocol: Protocol) {
        buf.put_u16(self.pkid);
        if protocol == Protocol::V5 {
            self.properties.encode(buf);
        }
        for f in &self.filters {
            put_string(buf, &f.filter);
            let byte = match protocol {
                Protocol::V5 => f.options.to_byte(),
                Protocol::V311 => f.options.qos as u8,
            };
            buf.put_u8(byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;

    #[test]
    fn round_trips() {
        let opts = SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::Never,
        };
        let v5 = Packet::Subscribe(Subscribe {
            pkid: 5,
            properties: Properties {
                subscription_identifiers: vec![12],
                ..Default::default()
            },
            filters: vec![
                SubscribeFilter {
                    filter: "a/+".into(),
                    options: opts,
                },
                SubscribeFilter {
                    filter: "$share/g/b".into(),
                    options: SubscriptionOptions::default(),
                },
            ],
        });
        assert_eq!(round_trip(&v5, Protocol::V5), v5);
        let v3 = Packet::Subscribe(Subscribe {
            pkid: 5,
            properties: Properties::default(),
            filters: vec![SubscribeFilter {
                filter: "#".into(),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            }],
        });
        assert_eq!(round_trip(&v3, Protocol::V311), v3);
    }

    #[test]
    fn refuses_invalid_subscribes() {
        use crate::topic::TopicError;
        let protocol = DecodeError::Protocol;
        let cases: [(&[u8], Protocol, DecodeError); 11] = [
            (
                &[0x82, 2, 0, 1],
                Protocol::V311,
                protocol("SUBSCRIBE without a topic filter (MQTT-3.8.3-3)"),
            ),
            (
                &[0x82, 6, 0, 1, 0, 1, b'a', 4],
                Protocol::V311,
                protocol("SUBSCRIBE reserved bits set (MQTT-3.8.3-4)"),
            ),
            (&[0x82, 6, 0, 1, 0, 1, b'a', 3], Protocol::V311, DecodeError::InvalidQoS),
            (
                &[0x82, 7, 0, 1, 0, 2, b'a', b'#', 0],
                Protocol::V311,
                DecodeError::InvalidFilter(TopicError::BadMultiLevelWildcard),
            ),
            (
                &[0x82, 5, 0, 1, 0, 0, 0],
                Protocol::V311,
                DecodeError::InvalidFilter(TopicError::Empty),
            ),
            (
                &[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x30],
                Protocol::V5,
                protocol("retain handling 3 (MQTT-3.8.3-5)"),
            ),
            (
                &[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x40],
                Protocol::V5,
                protocol("SUBSCRIBE reserved bits set (MQTT-3.8.3-5)"),
            ),
            (
                &[
                    0x82, 15, 0, 1, 0, 0, 9, b'$', b's', b'h', b'a', b'r', b'e', b'/', b'g', b'/', 0,
                ],
                Protocol::V5,
                DecodeError::InvalidFilter(TopicError::BadSharedSubscription),
            ),
            (
                &[0x82, 6, 0, 1, 0, 2, b'a', 0],
                Protocol::V311,
                DecodeError::NullCharacter,
            ),
            (&[0x82, 5, 0, 1, 0, 3, b'a'], Protocol::V311, DecodeError::Truncated),
            (
                &[0x80, 6, 0, 1, 0, 1, b'a', 0],
                Protocol::V311,
                DecodeError::InvalidFlags {
                    packet_type: 8,
                    flags: 0,
                },
            ),
        ];
        for (c, proto, expected) in cases {
            let mut buf = BytesMut::from(c);
            assert_eq!(decode(&mut buf, proto, 64), Err(expected), "{c:?}");
        }
    }
}
