//! A persistent session as written: who it belongs to, its subscriptions with their
//! options and identifiers, its expiry and its pending will.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use natter_shared::codec::{LastWill, Protocol, QoS, RetainHandling, SubscriptionOptions};
use serde::{Deserialize, Serialize};

use super::{opts, PropsRecord};
use crate::model::{ClientInfo, Session, SessionKey, Subscription};
use bincode::Options;

/// A session as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub username: Option<String>,
    pub client_id: String,
    pub v5: bool,
    pub admin: bool,
    pub expiry_secs: u32,
    /// When its last connection ended (Unix ms); `None` while one was attached.
    pub disconnected_at_ms: Option<u64>,
    pub subscriptions: Vec<SubRecord>,
    pub will: Option<WillRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubRecord {
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    pub id: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WillRecord {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub delay_secs: u32,
    /// Its other MQTT 5 properties.
    pub props: PropsRecord,
}

/// The record's key: the session key, encoded.
pub(super) fn key_bytes(username: Option<&str>, client_id: &str) -> Vec<u8> {
    opts().serialize(&(username, client_id)).unwrap_or_default()
}

impl Record {
    /// The record of `session` now.
    pub fn of(
        session: &Session,
        info: &ClientInfo,
        expiry_secs: u32,
        will: Option<&LastWill>,
        disconnected: bool,
    ) -> Record {
        let subscriptions = session
            .lock()
            .subscriptions
            .iter()
            .map(|(filter, s)| SubRecord {
                filter: filter.to_owned(),
                qos: s.options.qos as u8,
                no_local: s.options.no_local,
                retain_as_published: s.options.retain_as_published,
                retain_handling: s.options.retain_handling as u8,
                id: s.id,
            })
            .collect();
        Record {
            username: info.username.as_deref().map(str::to_owned),
            client_id: info.client_id.to_string(),
            v5: info.protocol == Protocol::V5,
            admin: info.admin,
            expiry_secs,
            disconnected_at_ms: disconnected.then(crate::clock::unix_ms),
            subscriptions,
            will: will.map(|w| WillRecord {
                topic: w.topic.clone(),
                payload: w.payload.to_vec(),
                qos: w.qos as u8,
                retain: w.retain,
                delay_secs: w.properties.will_delay_interval.unwrap_or(0),
                props: PropsRecord::of(&w.properties),
            }),
        }
    }

    pub fn key(&self) -> SessionKey {
        SessionKey {
            username: self.username.as_deref().map(Arc::from),
            client_id: Arc::from(self.client_id.as_str()),
        }
    }

    pub fn subscriptions(&self) -> Vec<(String, Subscription)> {
        self.subscriptions
            .iter()
            .map(|s| {
                let options = SubscriptionOptions {
                    qos: QoS::from_u8(s.qos).unwrap_or(QoS::AtMostOnce),
                    no_local: s.no_local,
                    retain_as_published: s.retain_as_published,
                    retain_handling: match s.retain_handling {
                        1 => RetainHandling::OnNewSubscription,
                        2 => RetainHandling::Never,
                        _ => RetainHandling::OnSubscribe,
                    },
                };
                (s.filter.clone(), Subscription { options, id: s.id })
            })
            .collect()
    }

    /// Who the session belongs to, for the plugins (a restored session has no
    /// address until its client is back).
    pub fn client_info(&self) -> ClientInfo {
        ClientInfo {
            username: self.username.as_deref().map(Arc::from),
            client_id: Arc::from(self.client_id.as_str()),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            protocol: if self.v5 { Protocol::V5 } else { Protocol::V311 },
            admin: self.admin,
            restriction: None,
            persistent: true,
        }
    }

    /// The pending will, with `delay_secs` as its delay.
    pub fn will(&self, delay_secs: u32) -> Option<LastWill> {
        self.will.as_ref().map(|w| LastWill {
            topic: w.topic.clone(),
            payload: Bytes::from(w.payload.clone()),
            qos: QoS::from_u8(w.qos).unwrap_or(QoS::AtMostOnce),
            retain: w.retain,
            properties: {
                let mut p = w.props.properties();
                p.will_delay_interval = (delay_secs > 0).then_some(delay_secs);
                p
            },
        })
    }

    /// How long the session and its will have left, `now_ms` being the restart
    /// (a session attached at the crash counts from the restart).
    pub fn remaining(&self, now_ms: u64) -> (Duration, u32) {
        let gone = Duration::from_millis(now_ms.saturating_sub(self.disconnected_at_ms.unwrap_or(now_ms)));
        let expiry = Duration::from_secs(u64::from(self.expiry_secs)).saturating_sub(gone);
        let will_delay = self.will.as_ref().map_or(0, |w| {
            let left = Duration::from_secs(u64::from(w.delay_secs)).saturating_sub(gone);
            u32::try_from(left.as_secs()).unwrap_or(u32::MAX)
        });
        (expiry, will_delay)
    }
}
