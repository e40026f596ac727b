//! `natterd`: Natter's MQTT 3.1.1/5.0 broker.
//!
//! Data flows one way: [`listener`] accepts, [`connection`] turns bytes into packets,
//! [`session`] applies the protocol and asks the [`hooks`] (plugins: [`auth`], and
//! [`im`] with its authorization in [`acl`]),
//! the [`router`] matches topics and queues deliveries into the target sessions, whose
//! connections write them out. [`store`] keeps durable state and knows no MQTT.

pub mod accounts;
pub mod acl;
pub mod admin;
pub mod auth;
pub mod clock;
pub mod config;
pub mod connection;
pub mod control;
pub mod datakey;
pub mod hooks;
pub mod im;
pub mod listener;
pub mod model;
pub mod router;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod store;

pub use config::Config;

/// A hash map for the per-message paths (topic levels, user names): foldhash instead
/// of SipHash, seeded randomly per process so crafted keys cannot pick buckets.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub use server::{start, start_with, RunningBroker};
