//! busline-nats: the NATS JetStream backend of busline, on `async-nats`.
//!
//! - A topic is a stream capturing the subjects `<token>.>`; an event is
//!   stored under `<token>.<event_type>`. The token is the topic escaped
//!   injectively ([`escape`]), so `orders`, `orders.eu`, `orders-eu` and
//!   `orders.billing.dlq` are separate streams whose subjects never overlap.
//! - A group is a durable pull consumer (explicit ack) of the stream;
//!   `provision` creates it, and the group's dead-letter stream and consumer
//!   on `<topic>.<group>.dlq`, so dead letters are kept before anyone reads
//!   them. `remove_group` deletes the durable and the DLQ stream (kept, with
//!   only the group's durable gone, while another consumer reads it); the
//!   topic's stream stays for the other groups.
//! - The envelope travels as CloudEvents `ce-` headers with percent-encoded
//!   values (the content type as `ce-datacontenttype`; `dataversion` 1 and a
//!   correlation id equal to the event id, what a reader assumes without
//!   them, are left out), plus `Nats-Msg-Id` = event id, so JetStream
//!   drops a retried publish within its duplicate window.
//! - Publishing waits for the JetStream publish ack; a batch has every
//!   publish in flight at once.
//! - A delivery's attempt number is the server's delivery count; `nack`
//!   naks with a delay; a long handler is kept alive with progress acks; a
//!   dead letter is published to the DLQ stream and then the original is
//!   `term`inated (a letter the DLQ refuses brings the event back after a
//!   delay that doubles with each attempt); a delivery dropped undecided is
//!   nak'ed.
//! - The client reconnects by itself, and subscriptions pull again after a
//!   server restart; unacknowledged events come again. Reconnect rounds in
//!   quick succession back off, and for a while after a reconnect members
//!   pull one message per request.
//! - A message async-nats cannot parse (header bytes that are not UTF-8)
//!   costs the connection on each delivery and never reaches busline; the
//!   consumer's `max_deliver` ends its deliveries, and busline answers the
//!   server's `MAX_DELIVERIES` advisory by reading the stored bytes through
//!   the stream message API and dead-lettering them as
//!   `unparseable_message` ([`NatsStats`] counts them).
//!
//! ```no_run
//! # async fn demo() -> Result<(), busline_core::ConfigError> {
//! let config = busline_core::BusConfig::from_url("nats://127.0.0.1:4222").with_service("orders");
//! let bus = busline_nats::connect(&config).await?;
//! # let _ = bus; Ok(()) }
//! ```
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

mod acker;
mod advisory;
mod attempts;
mod bus;
mod config;
mod consumer;
mod headers;
mod inventory;
mod keepalive;
mod naming;
mod publisher;
mod rawmsg;
mod reconnect;
mod shared;
mod topology;

pub use bus::{NatsBus, NatsStats};
pub use config::{NatsConfig, Retention, Storage, TlsConfig, MAX_DELIVER_MARGIN};
pub use naming::{consumer_name, escape, unescape, TopicNames};

use busline_core::{Bus, BusConfig, BusSettings, ConfigError};

/// Connects to the NATS server(s) of `config.url` (`nats://` or `tls://`,
/// several servers comma-separated, `user:password@` or `token@` in the
/// URL), tuned by the `[nats]` section ([`NatsConfig`]).
pub async fn connect(config: &BusConfig) -> Result<Bus, ConfigError> {
    let nats: NatsConfig = config.nats.parse("nats")?;
    let settings = BusSettings::from_config(config)?;
    Ok(Bus::new(NatsBus::connect(config, nats).await?, settings))
}
