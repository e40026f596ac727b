//! What several layers share, below all of them: the message as routed, who a client
//! is, and a session's state with its handle. Plain data and its invariants; no
//! policy, no I/O.

pub mod durable;
pub mod inflight;
pub mod message;
pub mod pkids;
pub mod session;
pub mod wake;

pub use durable::Durable;
pub use inflight::{Inflight, Stage};
pub use message::{ClientInfo, Message, PropertiesSource, Restriction};
pub use pkids::PacketIds;
pub use session::{Delivery, Enqueued, Kick, Offered, Session, SessionKey, SessionState, Subscription};
