//! busline-memory: the in-memory backend.
//!
//! The same semantics as the broker backends, in process: topics, groups
//! (every group gets every event; members of a group compete), order per
//! key, redelivery with delay on tokio time (so tests with paused time run
//! instantly), attempt counting, dead-letter topics, a bounded queue per group
//! (publishers wait when it is full) and a bounded number of deliveries in
//! flight per subscription. It passes the same conformance suite as the
//! broker backends, which is what makes unit tests on it mean something.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use busline_core::{Bus, BusSettings};
//! let bus = Bus::new(busline_memory::MemoryBroker::new().connect(), BusSettings::default());
//! # let _ = bus; }
//! ```
//!
//! It keeps nothing across a process restart, and retains nothing for
//! groups created later: events published to a topic with no group are
//! gone, as on RabbitMQ.

#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

mod broker;
mod client;
mod message;
mod queue;

pub use broker::{MemoryBroker, MemoryConfig};
pub use client::MemoryBus;
pub use message::WireMessage;

use busline_core::{Bus, BusConfig, BusSettings, ConfigError};

/// Connects to the broker a `memory://[name]` URL names (one per name per
/// process) with the configuration's settings.
pub fn connect(config: &BusConfig) -> Result<Bus, ConfigError> {
    let url = config.url.expose_secret();
    let name = url
        .strip_prefix("memory://")
        .ok_or_else(|| ConfigError::InvalidUrl {
            url: config.url.redacted(),
            reason: "expected memory://[name]".into(),
        })?
        .trim_end_matches('/');
    let memory: MemoryConfig = config.memory.parse("memory")?;
    let broker = MemoryBroker::named(name, memory);
    Ok(Bus::new(broker.connect(), BusSettings::from_config(config)?))
}
