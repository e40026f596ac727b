//! Retained messages as written: the topic's last retained message with its MQTT 5
//! properties and its expiry as a wall-clock deadline (an [`Instant`] does not
//! outlive the process).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use natter_shared::codec::{Properties, QoS};
use serde::{Deserialize, Serialize};

use crate::model::message::shared;
use crate::model::Message;

/// The MQTT 5 properties a message carries on to its receivers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PropsRecord {
    pub payload_format: Option<u8>,
    /// Message Expiry Interval as published (a will's; a retained message keeps a
    /// deadline instead).
    pub expiry_secs: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Vec<u8>>,
    pub user_properties: Vec<(String, String)>,
}

impl PropsRecord {
    pub fn of(p: &Properties) -> PropsRecord {
        PropsRecord {
            payload_format: p.payload_format_indicator,
            expiry_secs: p.message_expiry_interval,
            content_type: p.content_type.clone(),
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.as_ref().map(|b| b.to_vec()),
            user_properties: p.user_properties.clone(),
        }
    }

    pub fn properties(&self) -> Properties {
        Properties {
            payload_format_indicator: self.payload_format,
            message_expiry_interval: self.expiry_secs,
            content_type: self.content_type.clone(),
            response_topic: self.response_topic.clone(),
            correlation_data: self.correlation_data.clone().map(Bytes::from),
            user_properties: self.user_properties.clone(),
            ..Properties::default()
        }
    }
}

/// A retained message as written, under its topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetainedRecord {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub props: PropsRecord,
    /// When it expires (Unix ms), if ever.
    pub expires_at_ms: Option<u64>,
}

impl RetainedRecord {
    /// The record of `msg`, `now`/`now_ms` being the same moment on both clocks.
    pub fn of(msg: &Message, now: Instant, now_ms: u64) -> RetainedRecord {
        let mut props = PropsRecord::of(&msg.v5_properties());
        props.expiry_secs = None;
        RetainedRecord {
            topic: msg.topic.to_string(),
            payload: msg.payload.to_vec(),
            qos: msg.qos as u8,
            props,
            expires_at_ms: msg.expires_at.map(|t| {
                let left = u64::try_from(t.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX);
                now_ms.saturating_add(left)
            }),
        }
    }

    /// The message again, or `None` once it has expired.
    pub fn message(self, now: Instant, now_ms: u64) -> Option<Message> {
        let expires_at = match self.expires_at_ms {
            Some(deadline) if deadline <= now_ms => return None,
            Some(deadline) => Some(now + Duration::from_millis(deadline - now_ms)),
            None => None,
        };
        let mut msg = Message::broker(
            Arc::<str>::from(self.topic),
            Bytes::from(self.payload),
            QoS::from_u8(self.qos).unwrap_or(QoS::AtMostOnce),
            true,
        );
        msg.properties = shared(self.props.properties());
        msg.expires_at = expires_at;
        Some(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retained_message_comes_back_with_its_properties_and_what_is_left_of_its_expiry() {
        let now = Instant::now();
        let mut msg = Message::broker("sensors/1", Bytes::from_static(b"21.5"), QoS::AtLeastOnce, true);
        msg.properties = shared(Properties {
            content_type: Some("text/plain".into()),
            correlation_data: Some(Bytes::from_static(b"c")),
            user_properties: vec![("k".into(), "v".into())],
            payload_format_indicator: Some(1),
            ..Properties::default()
        });
        msg.expires_at = Some(now + Duration::from_secs(10));
        let record = RetainedRecord::of(&msg, now, 1_000_000);
        assert_eq!(record.expires_at_ms, Some(1_010_000));
        // Read back 4 s later (another process: another Instant origin).
        let later = Instant::now();
        let back = record.clone().message(later, 1_004_000).unwrap();
        assert_eq!(
            (&*back.topic, &back.payload[..], back.qos),
            ("sensors/1", &b"21.5"[..], QoS::AtLeastOnce)
        );
        assert!(back.retain);
        assert_eq!(back.properties.content_type.as_deref(), Some("text/plain"));
        assert_eq!(back.properties.user_properties, vec![("k".into(), "v".into())]);
        assert_eq!(back.remaining_expiry(later), Some(6));
        assert!(record.message(later, 1_010_000).is_none(), "expired meanwhile");
    }
}
