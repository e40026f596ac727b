//! Property tests over generated valid packets: every packet type, both versions,
//! encodes to exactly `encoded_len` bytes and decodes back to itself; and whole packets
//! mutated at any byte, or cut short, never panic the decoder.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use super::properties::{self as id, allowed};
use super::*;

/// Text as MQTT allows it (UTF-8, no U+0000), including multi-byte characters.
fn text() -> impl Strategy<Value = String> {
    "[a-z0-9 é中🙂/_.-]{0,12}"
}

fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

/// A valid topic name: one to four non-empty levels, no wildcards.
fn topic() -> impl Strategy<Value = String> {
    vec("[a-z0-9é$]{1,5}", 1..5).prop_map(|levels| levels.join("/"))
}

/// A valid filter: levels, some `+`, maybe a final `#`.
fn filter() -> impl Strategy<Value = String> {
    (
        vec(prop_oneof![3 => "[a-z0-9]{1,5}", 1 => Just("+".to_owned())], 1..4),
        any::<bool>(),
    )
        .prop_map(|(mut levels, hash)| {
            if hash {
                levels.push("#".into());
            }
            levels.join("/")
        })
}

fn flag() -> impl Strategy<Value = Option<u8>> {
    option::of(0u8..=1)
}

fn nonzero_u16() -> impl Strategy<Value = Option<u16>> {
    option::of(1u16..)
}

/// Any valid set of properties; [`restrict`] keeps those a packet type may carry.
fn properties() -> impl Strategy<Value = Properties> {
    let a = (
        flag(),
        option::of(any::<u32>()),
        option::of(text()),
        option::of(topic()),
        option::of(binary()),
        vec(1u32..=MAX_VARINT, 0..3),
        option::of(any::<u32>()),
        option::of(text()),
        option::of(any::<u16>()),
    );
    let b = (
        option::of(text()),
        option::of(binary()),
        flag(),
        option::of(any::<u32>()),
        flag(),
        option::of(text()),
        option::of(text()),
        option::of(text()),
        nonzero_u16(),
    );
    let c = (
        option::of(any::<u16>()),
        nonzero_u16(),
        flag(),
        flag(),
        vec((text(), text()), 0..3),
        option::of(1u32..),
        flag(),
        flag(),
        flag(),
    );
    (a, b, c).prop_map(|(a, b, c)| Properties {
        payload_format_indicator: a.0,
        message_expiry_interval: a.1,
        content_type: a.2,
        response_topic: a.3,
        correlation_data: a.4,
        subscription_identifiers: a.5,
        session_expiry_interval: a.6,
        assigned_client_identifier: a.7,
        server_keep_alive: a.8,
        authentication_method: b.0,
        authentication_data: b.1,
        request_problem_information: b.2,
        will_delay_interval: b.3,
        request_response_information: b.4,
        response_information: b.5,
        server_reference: b.6,
        reason_string: b.7,
        receive_maximum: b.8,
        topic_alias_maximum: c.0,
        topic_alias: c.1,
        maximum_qos: c.2,
        retain_available: c.3,
        user_properties: c.4,
        maximum_packet_size: c.5,
        wildcard_subscription_available: c.6,
        subscription_identifier_available: c.7,
        shared_subscription_available: c.8,
    })
}

/// Keeps only the properties in `mask` (an `allowed::*` set); none on 3.1.1.
fn restrict(p: Properties, mask: u64, protocol: Protocol) -> Properties {
    if protocol == Protocol::V311 {
        return Properties::default();
    }
    let ok = |i: u8| mask & (1 << i) != 0;
    // Authentication data needs a method (MQTT-3.1.2-30).
    let auth_data = p.authentication_data.filter(|_| p.authentication_method.is_some());
    fn keep<T>(on: bool, v: T) -> T
    where
        T: Default,
    {
        if on {
            v
        } else {
            T::default()
        }
    }
    Properties {
        payload_format_indicator: keep(ok(id::PAYLOAD_FORMAT_INDICATOR), p.payload_format_indicator),
        message_expiry_interval: keep(ok(id::MESSAGE_EXPIRY_INTERVAL), p.message_expiry_interval),
        content_type: keep(ok(id::CONTENT_TYPE), p.content_type),
        response_topic: keep(ok(id::RESPONSE_TOPIC), p.response_topic),
        correlation_data: keep(ok(id::CORRELATION_DATA), p.correlation_data),
        subscription_identifiers: keep(ok(id::SUBSCRIPTION_IDENTIFIER), p.subscription_identifiers),
        session_expiry_interval: keep(ok(id::SESSION_EXPIRY_INTERVAL), p.session_expiry_interval),
        assigned_client_identifier: keep(ok(id::ASSIGNED_CLIENT_IDENTIFIER), p.assigned_client_identifier),
        server_keep_alive: keep(ok(id::SERVER_KEEP_ALIVE), p.server_keep_alive),
        authentication_method: keep(ok(id::AUTHENTICATION_METHOD), p.authentication_method),
        authentication_data: keep(ok(id::AUTHENTICATION_DATA), auth_data),
        request_problem_information: keep(ok(id::REQUEST_PROBLEM_INFORMATION), p.request_problem_information),
        will_delay_interval: keep(ok(id::WILL_DELAY_INTERVAL), p.will_delay_interval),
        request_response_information: keep(ok(id::REQUEST_RESPONSE_INFORMATION), p.request_response_information),
        response_information: keep(ok(id::RESPONSE_INFORMATION), p.response_information),
        server_reference: keep(ok(id::SERVER_REFERENCE), p.server_reference),
        reason_string: keep(ok(id::REASON_STRING), p.reason_string),
        receive_maximum: keep(ok(id::RECEIVE_MAXIMUM), p.receive_maximum),
        topic_alias_maximum: keep(ok(id::TOPIC_ALIAS_MAXIMUM), p.topic_alias_maximum),
        topic_alias: keep(ok(id::TOPIC_ALIAS), p.topic_alias),
        maximum_qos: keep(ok(id::MAXIMUM_QOS), p.maximum_qos),
        retain_available: keep(ok(id::RETAIN_AVAILABLE), p.retain_available),
        user_properties: keep(ok(id::USER_PROPERTY), p.user_properties),
        maximum_packet_size: keep(ok(id::MAXIMUM_PACKET_SIZE), p.maximum_packet_size),
        wildcard_subscription_available: keep(
            ok(id::WILDCARD_SUBSCRIPTION_AVAILABLE),
            p.wildcard_subscription_available,
        ),
        subscription_identifier_available: keep(
            ok(id::SUBSCRIPTION_IDENTIFIER_AVAILABLE),
            p.subscription_identifier_available,
        ),
        shared_subscription_available: keep(ok(id::SHARED_SUBSCRIPTION_AVAILABLE), p.shared_subscription_available),
    }
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce), Just(QoS::ExactlyOnce)]
}

fn code(codes: &'static [u8]) -> impl Strategy<Value = u8> {
    proptest::sample::select(codes)
}

fn connect(protocol: Protocol) -> impl Strategy<Value = Packet> {
    let will = option::of((topic(), binary(), qos(), any::<bool>(), properties()));
    (
        any::<bool>(),
        any::<u16>(),
        "[a-zA-Z0-9-]{0,23}",
        will,
        option::of(text()),
        option::of(binary()),
        properties(),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, props)| {
                // 3.1.1 allows a password only with a user name (MQTT-3.1.2-22).
                let password = if protocol == Protocol::V311 && username.is_none() {
                    None
                } else {
                    password
                };
                Packet::Connect(Box::new(Connect {
                    protocol,
                    clean_start,
                    keep_alive,
                    client_id,
                    will: will.map(|(topic, payload, qos, retain, p)| LastWill {
                        topic,
                        payload,
                        qos,
                        retain,
                        properties: restrict(p, allowed::WILL, protocol),
                    }),
                    username,
                    password,
                    properties: restrict(props, allowed::CONNECT, protocol),
                }))
            },
        )
}

fn publish(protocol: Protocol) -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic(),
        1u16..,
        properties(),
        binary(),
        any::<bool>(),
    )
        .prop_map(move |(dup, qos, retain, topic, pkid, props, payload, alias_only)| {
            let properties = restrict(props, allowed::PUBLISH, protocol);
            // With a topic alias the topic may be empty (MQTT 5 3.3.2.3.4).
            let topic = if alias_only && properties.topic_alias.is_some() {
                String::new()
            } else {
                topic
            };
            let at_least_once = qos != QoS::AtMostOnce;
            Packet::Publish(Publish {
                dup: dup && at_least_once,
                qos,
                retain,
                topic: topic.into(),
                pkid: if at_least_once { pkid } else { 0 },
                properties,
                payload,
            })
        })
}

/// PUBACK/PUBREC (`codes` PUBACK_CODES) or PUBREL/PUBCOMP (PUBREL_CODES).
fn ack(protocol: Protocol, codes: &'static [u8]) -> impl Strategy<Value = Ack> {
    (1u16.., code(codes), properties()).prop_map(move |(pkid, reason, p)| match protocol {
        Protocol::V311 => Ack::new(pkid),
        Protocol::V5 => Ack {
            pkid,
            reason,
            properties: restrict(p, allowed::ACK, protocol),
        },
    })
}

fn subscribe(protocol: Protocol) -> impl Strategy<Value = Packet> {
    let options = (qos(), any::<bool>(), any::<bool>(), 0u8..3);
    (1u16.., properties(), vec((filter(), options), 1..4)).prop_map(move |(pkid, p, filters)| {
        let mut properties = restrict(p, allowed::SUBSCRIBE, protocol);
        properties.subscription_identifiers.truncate(1);
        Packet::Subscribe(Subscribe {
            pkid,
            properties,
            filters: filters
                .into_iter()
                .map(|(filter, (qos, no_local, rap, rh))| SubscribeFilter {
                    filter,
                    options: match protocol {
                        Protocol::V311 => SubscriptionOptions {
                            qos,
                            ..Default::default()
                        },
                        Protocol::V5 => SubscriptionOptions {
                            qos,
                            no_local,
                            retain_as_published: rap,
                            retain_handling: match rh {
                                0 => RetainHandling::OnSubscribe,
                                1 => RetainHandling::OnNewSubscription,
                                _ => RetainHandling::Never,
                            },
                        },
                    },
                })
                .collect(),
        })
    })
}

/// Any valid packet of `protocol`, every type with equal weight.
fn packet(protocol: Protocol) -> BoxedStrategy<Packet> {
    let v5 = protocol == Protocol::V5;
    let suback_codes: &'static [u8] = if v5 { reason::SUBACK_CODES } else { &[0, 1, 2, 0x80] };
    let connack_codes: &'static [u8] = if v5 { reason::CONNACK_CODES } else { &[0, 1, 2, 3, 4, 5] };
    let mut all = vec![
        connect(protocol).boxed(),
        (any::<bool>(), code(connack_codes), properties())
            .prop_map(move |(session_present, code, p)| {
                Packet::ConnAck(ConnAck {
                    session_present,
                    code,
                    properties: restrict(p, allowed::CONNACK, protocol),
                })
            })
            .boxed(),
        publish(protocol).boxed(),
        ack(protocol, reason::PUBACK_CODES).prop_map(Packet::PubAck).boxed(),
        ack(protocol, reason::PUBACK_CODES).prop_map(Packet::PubRec).boxed(),
        ack(protocol, reason::PUBREL_CODES).prop_map(Packet::PubRel).boxed(),
        ack(protocol, reason::PUBREL_CODES).prop_map(Packet::PubComp).boxed(),
        subscribe(protocol).boxed(),
        (1u16.., properties(), vec(code(suback_codes), 1..5))
            .prop_map(move |(pkid, p, codes)| {
                Packet::SubAck(SubAck {
                    pkid,
                    properties: restrict(p, allowed::ACK, protocol),
                    codes,
                })
            })
            .boxed(),
        (1u16.., properties(), vec(filter(), 1..4))
            .prop_map(move |(pkid, p, filters)| {
                Packet::Unsubscribe(Unsubscribe {
                    pkid,
                    properties: restrict(p, allowed::UNSUBSCRIBE, protocol),
                    filters,
                })
            })
            .boxed(),
        (1u16.., properties(), vec(code(reason::UNSUBACK_CODES), 1..5))
            .prop_map(move |(pkid, p, codes)| {
                Packet::UnsubAck(UnsubAck {
                    pkid,
                    properties: restrict(p, allowed::ACK, protocol),
                    // 3.1.1's UNSUBACK has no codes.
                    codes: if v5 { codes } else { Vec::new() },
                })
            })
            .boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        (code(reason::DISCONNECT_CODES), properties())
            .prop_map(move |(reason, p)| {
                Packet::Disconnect(match protocol {
                    Protocol::V311 => Disconnect::default(),
                    Protocol::V5 => Disconnect {
                        reason,
                        properties: restrict(p, allowed::DISCONNECT, protocol),
                    },
                })
            })
            .boxed(),
    ];
    if v5 {
        all.push(
            (code(reason::AUTH_CODES), properties())
                .prop_map(move |(reason, p)| {
                    Packet::Auth(Auth {
                        reason,
                        properties: restrict(p, allowed::AUTH, protocol),
                    })
                })
                .boxed(),
        );
    }
    proptest::strategy::Union::new(all).boxed()
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![Just(Protocol::V311), Just(Protocol::V5)]
}

fn with_protocol() -> impl Strategy<Value = (Protocol, Packet)> {
    protocol().prop_flat_map(|p| (Just(p), packet(p)))
}

fn encoded(packet: &Packet, protocol: Protocol) -> BytesMut {
    let mut buf = BytesMut::new();
    packet.encode(&mut buf, protocol);
    buf
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// encode -> decode is the identity, and `encoded_len` is the encoding's length.
    #[test]
    fn every_valid_packet_round_trips((proto, packet) in with_protocol()) {
        let mut buf = encoded(&packet, proto);
        prop_assert_eq!(buf.len(), packet.encoded_len(proto), "encoded_len of {}", packet.name());
        let out = decode(&mut buf, proto, MAX_PACKET_SIZE);
        prop_assert_eq!(out, Ok(Some(packet)));
        prop_assert!(buf.is_empty(), "trailing bytes");
    }

    /// A stream of several packets decodes packet by packet, in order, even when it
    /// arrives one byte at a time.
    #[test]
    fn a_stream_decodes_in_order_byte_by_byte(
        (proto, packets) in protocol().prop_flat_map(|p| (Just(p), vec(packet(p), 1..4)))
    ) {
        let whole: Vec<u8> = packets.iter().flat_map(|p| encoded(p, proto).to_vec()).collect();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in whole {
            buf.extend_from_slice(&[b]);
            while let Some(p) = decode(&mut buf, proto, MAX_PACKET_SIZE).expect("valid stream") {
                got.push(p);
            }
        }
        prop_assert_eq!(got, packets);
    }

    /// Any byte of a whole valid packet mutated (one to three times) never panics the
    /// decoder, whatever the size limit.
    #[test]
    fn mutated_packets_never_panic(
        (proto, packet) in with_protocol(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        max in prop_oneof![Just(MAX_PACKET_SIZE), 0usize..64],
    ) {
        let mut buf = encoded(&packet, proto);
        for (at, byte) in edits {
            let i = at.index(buf.len());
            buf[i] = byte;
        }
        while let Ok(Some(_)) = decode(&mut buf, proto, max) {}
    }

    /// A valid packet cut short is "not yet" (`Ok(None)`), never an error or a panic,
    /// as long as its fixed header's length promises more bytes.
    #[test]
    fn truncated_packets_wait_for_more((proto, packet) in with_protocol(), cut in any::<prop::sample::Index>()) {
        let whole = encoded(&packet, proto);
        let keep = cut.index(whole.len());
        let mut buf = BytesMut::from(&whole[..keep]);
        prop_assert_eq!(decode(&mut buf, proto, MAX_PACKET_SIZE), Ok(None));
    }
}
