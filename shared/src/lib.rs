//! Natter's wire contract, shared by the broker (`natterd`), the CLI (`natter`),
//! the end-to-end tests and the load generator.
//!
//! * [`codec`]: the MQTT 3.1.1 and 5.0 packet codec (no I/O, no runtime).
//! * [`topic`]: topic name and filter syntax, shared-subscription parsing and matching.
//! * [`names`]: the account-name rule users and groups follow.
//! * [`im`]: the IM topic contract (where to publish, where things arrive).
//! * [`api`]: the request/response API over MQTT, presence and event payloads.

pub mod api;
pub mod codec;
pub mod im;
pub mod names;
pub mod topic;
