//! busline-rabbitmq: the RabbitMQ (AMQP 0-9-1) backend of busline, on lapin.
//!
//! Topology: a durable topic exchange per topic (the topic's name), routing
//! key = event type; a durable queue `<topic>::<group>` per group, bound
//! with `#`; a retry queue `<topic>::<group>::retry` whose messages expire
//! after their retry delay and dead-letter back into the group's queue; and
//! the group's dead-letter topic `<topic>.<group>.dlq`, itself an exchange
//! with a queue for the same group, readable with the same API.
//!
//! The envelope travels as CloudEvents `cloudEvents_` headers plus the
//! native properties `message_id`, `correlation_id`, `content_type`,
//! `timestamp`, `type`, `app_id`, persistent. Publishes wait for publisher
//! confirms; consumers use prefetch = the subscription's in-flight bound;
//! lost connections are re-established with backoff and consumers resume.
//!
//! ```no_run
//! # async fn demo() -> Result<(), busline_core::ConfigError> {
//! let config = busline_core::BusConfig::from_url("amqp://guest:guest@127.0.0.1:5672/%2f");
//! let bus = busline_rabbitmq::connect(&config).await?;
//! # let _ = bus; Ok(()) }
//! ```

#![deny(missing_docs)]

mod acker;
mod bus;
mod config;
mod connection;
mod consumer;
mod headers;
mod publisher;
mod topology;

pub use bus::RabbitBus;
pub use config::{QueueType, RabbitConfig};

use busline_core::{Bus, BusConfig, BusSettings, ConfigError};

/// Connects to the broker an `amqp://` or `amqps://` URL names, with the
/// configuration's settings and its `[rabbitmq]` section
/// ([`RabbitConfig`]).
pub async fn connect(config: &BusConfig) -> Result<Bus, ConfigError> {
    let settings = BusSettings::from_config(config)?;
    let rabbit: RabbitConfig = config.rabbitmq.parse("rabbitmq")?;
    let scheme = config.url.scheme();
    if scheme != "amqp" && scheme != "amqps" {
        return Err(ConfigError::InvalidUrl {
            url: config.url.redacted(),
            reason: "expected amqp://user:pass@host:port/vhost or amqps://…".into(),
        });
    }
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
