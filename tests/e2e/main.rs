//! End-to-end tests: each starts its own natterd on 127.0.0.1:0 with a temporary data
//! dir and talks to it with rumqttc (3.1.1 and 5) or raw bytes.

mod at_rest;
mod auth;
mod durability;
mod files;
mod hooks;
mod hostile;
mod im;
mod limits;
mod mailbox;
mod mqtt5;
mod plain;
mod qos;
mod retained;
mod scale;
mod session;
mod social;
mod will;
