//! busline-rabbitmq: the RabbitMQ (AMQP 0-9-1) backend of busline, on lapin.
//!
//! Topology: a durable topic exchange per topic (the topic's name), routing
//! key = event type; a durable queue `<topic>::<group>` per group, bound
//! with `#`; retry queues `<topic>::<group>::retry.<ttl>ms`, one per delay
//! bucket (TTLs `retry_bucket_base × 2^k`), whose messages expire after the
//! bucket's TTL and dead-letter back into the group's queue, so a retry
//! comes back no sooner than asked, less than twice as late, and never
//! behind a longer one; and the group's dead-letter topic
//! `<topic>.<group>.dlq`, itself an exchange with a queue for the same
//! group, readable with the same API. Group queues are quorum queues by
//! default ([`QueueType`]), with a delivery limit and a parking queue
//! `<topic>::<group>::unparseable` (below).
//!
//! The envelope travels as CloudEvents `cloudEvents_` headers plus the
//! native properties `message_id`, `correlation_id`, `content_type`,
//! `timestamp`, `type`, `app_id`, persistent. Publishes wait for publisher
//! confirms; consumers use prefetch = the subscription's in-flight bound;
//! lost connections are re-established with backoff and consumers resume.
//! Each subscription consumes on a connection of its own.
//!
//! Clusters: the URL may list several seed brokers, separated by commas,
//! that share the credentials, vhost and query
//! (`amqp://user:pass@rabbit1:5672,rabbit2:5672,rabbit3:5672/%2f`). Each
//! connection attempt tries them in turn, beginning with the broker after
//! the one whose connection was lost, and keeps the first that answers;
//! when every seed fails the link waits (jittered, doubling from
//! `reconnect_min_backoff` to `reconnect_max_backoff`) and tries again.
//! Group queues are quorum queues, replicated on the cluster's nodes: when
//! the node leading a queue dies, its followers elect a leader and the
//! consumers, reconnected to a live node, go on from there.
//!
//! Messages lapin cannot parse: a foreign producer can write a header-table
//! key or a `content_type` that is not UTF-8; lapin fails to parse the frame
//! and drops the connection, and the broker sends the message again. The
//! consumer reconnects with a growing, jittered delay and at prefetch 1 (so
//! the messages behind the poison are not counted with it). On a quorum
//! queue the broker moves the message into `<topic>::<group>::unparseable`
//! after [`RabbitConfig::delivery_limit`] deliveries, busline warns and
//! counts it ([`RabbitBus::stats`]) and consumption goes on. On a classic
//! queue, which has no delivery limit, the subscription gives up after
//! [`RabbitConfig::max_unparseable_losses`] losses in a row with
//! `ConsumeErrorKind::Unparseable`: the router fails and its health says
//! why. Either way the reconnects are bounded, and the publisher and the
//! other subscriptions keep their connections.
//!
//! ```no_run
//! # async fn demo() -> Result<(), busline_core::ConfigError> {
//! let config = busline_core::BusConfig::from_url("amqp://guest:guest@127.0.0.1:5672/%2f");
//! let bus = busline_rabbitmq::connect(&config).await?;
//! # let _ = bus; Ok(()) }
//! ```

#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

mod acker;
mod bus;
mod config;
mod connection;
mod consumer;
mod group;
mod headers;
mod losses;
mod management;
mod publisher;
mod retry;
mod seeds;
mod stats;
mod topology;

pub use bus::RabbitBus;
pub use config::{QueueType, RabbitConfig, RabbitTls, DELIVERY_LIMIT_MARGIN};
pub use stats::RabbitStats;

use busline_core::{Bus, BusConfig, BusSettings, ConfigError};

/// Connects to the broker an `amqp://` or `amqps://` URL names, with the
/// configuration's settings and its `[rabbitmq]` section
/// ([`RabbitConfig`]).
pub async fn connect(config: &BusConfig) -> Result<Bus, ConfigError> {
    let settings = BusSettings::from_config(config)?;
    let rabbit = config
        .rabbitmq
        .parse::<RabbitConfig>("rabbitmq")?
        .resolved(settings.retry.max_attempts);
    let scheme = config.url.scheme();
    if scheme != "amqp" && scheme != "amqps" {
        return Err(ConfigError::InvalidUrl {
            url: config.url.redacted(),
            reason: "expected amqp://user:pass@host:port/vhost or amqps://…".into(),
        });
    }
    // Unreadable certificate files are a configuration error, not a
    // connection failure.
    rabbit.tls.load().map_err(ConfigError::Invalid)?;
    let name = rabbit
        .connection_name
        .clone()
        .unwrap_or_else(|| config.service.clone());
    let bus = RabbitBus::connect(config.url.expose_secret(), &name, rabbit)
        .await
        .map_err(|e| ConfigError::Connect {
            url: config.url.redacted(),
            source: e.into(),
        })?;
    Ok(Bus::new(bus, settings))
}
