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
//! - A group is a consumer group (`group.id` = the group), except on the
//!   group's dead-letter topics: their readers (a DLQ consumer, a replay)
//!   join `<group>.dlq` ([`consumer_group_id`]), so they never rebalance
//!   the main subscriptions.
//! - Where a group starts: `provision` (and the first member of a group)
//!   commits the start offsets of a *new* group, one without any committed
//!   offset on the topic: the current end of every partition for
//!   `StartFrom::New` (events published after `provision` returns reach
//!   the group), the beginning for `Earliest`. In a group that has
//!   committed offsets, a partition without one (added later, or its offset
//!   expired) starts at its earliest retained offset, so nothing written to
//!   it meanwhile is skipped. A group whose offsets have *all* expired
//!   (`offsets.retention.minutes`, 7 days by default, counted once the group
//!   is empty) is new again and follows `StartFrom`: with `New` it skips
//!   what was written while it had no offsets, with `Earliest` it reads
//!   all that is retained again; keep the retention longer than a group may
//!   stay stopped.
//! - Each member polls on a thread of its own and hands out up to
//!   `max_in_flight` deliveries concurrently, one at a time per key, in
//!   order, across retries. It commits each partition only up to its lowest
//!   undecided offset, so an event is never committed before it is acked or
//!   dead-lettered. When a rebalance revokes partitions, it stops handing
//!   them out, waits up to [`KafkaConfig::revoke_timeout`] for their
//!   deliveries in flight to be settled, commits what is decided and drops
//!   the rest (their next owner reads them again). A commit the broker
//!   refuses during the rebalance is kept by the connection: its member that
//!   is assigned the partition again starts after what was decided and
//!   commits it (a member of another process starts at the committed
//!   offset: at-least-once).
//! - `nack` retries in the partition after the delay (the key waits);
//!   `dead_letter` produces the record, headers and body byte for byte plus
//!   `ce_deadletter…` headers, to the DLQ topic, awaits the report, then
//!   marks it decided. A delivery dropped undecided comes again with the
//!   attempt number one higher; one released (shutdown's deadline passed)
//!   comes again with the same attempt number (in this process: a new
//!   process counts from 1); a record whose headers are not an envelope
//!   is delivered as a poison delivery that can be dead-lettered as it is.
//! - Shutdown stops fetching, waits for deliveries in flight, commits,
//!   leaves the groups and flushes the producer.
//!
//!
//! # TLS and SASL
//!
//! rdkafka is built with OpenSSL (feature `ssl`, linked against the
//! system's libssl), so `SSL`, `SASL_SSL` and the SASL mechanisms `PLAIN`,
//! `SCRAM-SHA-256`, `SCRAM-SHA-512` and `OAUTHBEARER` work (not `GSSAPI`:
//! that needs rdkafka's `gssapi` feature and libsasl2; not OIDC token
//! retrieval: that needs its `curl` feature). The URL picks the protocol:
//!
//! | URL | `security.protocol` |
//! | --- | --- |
//! | `kafka://h:9092` | `PLAINTEXT` |
//! | `kafkas://h:9093` (or `kafka://h:9093?tls=true`) | `SSL` |
//! | `kafkas://user:pass@h:9093` | `SASL_SSL` (`PLAIN` unless `?mechanism=`) |
//! | `kafkas://user:pass@h:9093?mechanism=SCRAM-SHA-512` | `SASL_SSL` with SCRAM |
//! | `kafkas://h:9093?mechanism=OAUTHBEARER` | `SASL_SSL`; the token from `sasl.oauthbearer.*` properties |
//! | `kafka://user:pass@h:9092` | `SASL_PLAINTEXT`, warned at connect: the password crosses the network in clear |
//! | `kafka://user:pass@h:9092?tls=false` | `SASL_PLAINTEXT`, meant: no warning |
//!
//! Certificates are librdkafka properties of the `[kafka]` section:
//! `ssl.ca.location` (or inline `ssl.ca.pem`) for a private CA,
//! `ssl.certificate.location` and `ssl.key.location` (or `.pem`, or
//! `ssl.keystore.location` with `ssl.keystore.password`) for a client
//! certificate; host names are verified (`ssl.endpoint.identification.algorithm
//! = https`, librdkafka's default). Explicit `security.protocol` and
//! `sasl.*` properties win over what the URL says. Secret properties never
//! show in `Debug` or `Serialize` (see `busline_core::redact`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), busline_core::ConfigError> {
//! let config = busline_core::BusConfig::from_url("kafka://127.0.0.1:9092").with_service("orders");
//! let bus = busline_kafka::connect(&config).await?;
//! # let _ = bus; Ok(()) }
//! ```
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

mod attempts;
mod bus;
mod config;
mod errors;
mod headers;
mod inventory;
mod member;
mod publisher;
mod removal;
mod shared;
mod topology;

pub use bus::KafkaBus;
pub use config::{KafkaConfig, Properties};
pub use topology::consumer_group_id;

use busline_core::{Bus, BusConfig, BusSettings, ConfigError};

/// Connects to the brokers of `config.url` (`kafka://host:port[,host:port]`,
/// optionally `user:password@` for SASL/PLAIN), tuned by the `[kafka]`
/// section ([`KafkaConfig`]).
pub async fn connect(config: &BusConfig) -> Result<Bus, ConfigError> {
    let kafka = KafkaConfig::from_bus_config(config)?;
    let settings = BusSettings::from_config(config)?;
    Ok(Bus::new(KafkaBus::connect(config, kafka).await?, settings))
}
