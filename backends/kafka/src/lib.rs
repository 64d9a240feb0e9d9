//! busline-kafka: the Kafka backend of busline, on rdkafka (librdkafka).
//!
//! - A topic is a Kafka topic, created through the admin API when missing
//!   (with [`KafkaConfig::partitions`] and [`KafkaConfig::replication`]),
//!   and so is each group's dead-letter topic `<topic>.<group>.dlq`.
//! - The envelope travels in CloudEvents binary mode: `ce_` headers plus
//!   `content-type`; the record key is the envelope key, so events of one
//!   key share a partition and keep their order (the key is also written
//!   as `ce_partitionkey`; on read the record key wins).
//! - Publishing uses one idempotent producer with `acks=all`; `publish`
//!   returns on the delivery report; a batch has every record in flight at
//!   once.
//! - A group is a consumer group. `provision` creates the topics and
//!   commits the group's start offsets (the current end of every partition),
//!   so events published after it returns reach the group's first member.
//! - Each member polls on a thread of its own and hands out up to
//!   `max_in_flight` deliveries concurrently, one at a time per key, in
//!   order, across retries. It commits each partition only up to its lowest
//!   undecided offset, so an event is never committed before it is acked or
//!   dead-lettered; on a rebalance it commits what is decided and drops the
//!   revoked partitions' records (their next owner reads them again).
//! - `nack` retries in the partition after the delay (the key waits);
//!   `dead_letter` produces the record, headers and body byte for byte plus
//!   `ce_deadletter…` headers, to the DLQ topic, awaits the report, then
//!   marks it decided. A delivery dropped undecided comes again with the
//!   attempt number one higher; a record whose headers are not an envelope
//!   is delivered as a poison delivery that can be dead-lettered as it is.
//! - Shutdown stops fetching, waits for deliveries in flight, commits,
//!   leaves the groups and flushes the producer.
//!
//! ```no_run
//! # async fn demo() -> Result<(), busline_core::ConfigError> {
//! let config = busline_core::BusConfig::from_url("kafka://127.0.0.1:9092").with_service("orders");
//! let bus = busline_kafka::connect(&config).await?;
//! # let _ = bus; Ok(()) }
//! ```
#![deny(missing_docs)]

mod attempts;
mod bus;
mod config;
mod errors;
mod headers;
mod member;
mod publisher;
mod shared;
mod topology;

pub use bus::KafkaBus;
pub use config::{KafkaConfig, Properties};

use busline_core::{Bus, BusConfig, BusSettings, ConfigError};

/// Connects to the brokers of `config.url` (`kafka://host:port[,host:port]`,
/// optionally `user:password@` for SASL/PLAIN), tuned by the `[kafka]`
/// section ([`KafkaConfig`]).
pub async fn connect(config: &BusConfig) -> Result<Bus, ConfigError> {
    let kafka = KafkaConfig::from_bus_config(config)?;
    let settings = BusSettings::from_config(config)?;
    Ok(Bus::new(KafkaBus::connect(config, kafka).await?, settings))
}
