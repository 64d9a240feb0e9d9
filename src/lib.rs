//! busline: one event bus API over Kafka, RabbitMQ, NATS JetStream and an
//! in-memory bus.
//!
//! Publish typed, versioned domain events; register typed handlers; move
//! between brokers by changing one URL. Unit tests run on the in-memory
//! backend, which passes the same conformance suite as the brokers.
//!
//! ```
//! use busline::{Context, DomainEvent, Event, HandlerError, Router};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct OrderCreated { order_id: String, total_cents: u64 }
//! impl Event for OrderCreated { const TYPE: &'static str = "order.created"; const VERSION: u32 = 2; }
//!
//! async fn reserve_items(_ctx: Context, event: DomainEvent<OrderCreated>) -> Result<(), HandlerError> {
//!     println!("reserving items for {}", event.data.order_id);
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = busline::connect_url("memory://docs-example").await?;
//! let inventory = Router::new(bus.clone(), "inventory")
//!     .on("orders", reserve_items)
//!     .start()
//!     .await?;
//! bus.publish("orders", OrderCreated { order_id: "o-1".into(), total_cents: 1250 }).await?;
//! # inventory.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! Backends are cargo features: `memory` (default), `rabbitmq`, `nats`,
//! `kafka`; codecs: `json` (default), `msgpack` (default); the resilience and
//! observability layers of [`layers`]: `layers` (default), `postgres`,
//! `opentelemetry`, `signing`, `probes` (HTTP health and metrics); the
//! transactional outbox and inbox on
//! PostgreSQL: `outbox`.

#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use busline_core::*;

#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use busline_memory as memory;

#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub use busline_nats as nats;

#[cfg(feature = "rabbitmq")]
#[cfg_attr(docsrs, doc(cfg(feature = "rabbitmq")))]
pub use busline_rabbitmq as rabbitmq;

#[cfg(feature = "layers")]
#[cfg_attr(docsrs, doc(cfg(feature = "layers")))]
pub use busline_layers as layers;

#[cfg(feature = "kafka")]
#[cfg_attr(docsrs, doc(cfg(feature = "kafka")))]
pub use busline_kafka as kafka;

#[cfg(feature = "outbox")]
#[cfg_attr(docsrs, doc(cfg(feature = "outbox")))]
pub use busline_outbox as outbox;

/// Connects the backend the configuration's URL names.
///
/// | scheme | backend | feature |
/// | --- | --- | --- |
/// | `memory://[name]` | in-process broker (one per name) | `memory` |
/// | `amqp://`, `amqps://` | RabbitMQ | `rabbitmq` |
/// | `nats://`, `tls://` | NATS JetStream | `nats` |
/// | `kafka://host:port[,host:port]`, `kafkas://…` (TLS) | Kafka | `kafka` |
pub async fn connect(config: &BusConfig) -> Result<Bus, ConfigError> {
    let scheme = config.url.scheme();
    match scheme.as_str() {
        "memory" => connect_memory(config),
        "amqp" | "amqps" => connect_rabbitmq(config).await,
        "nats" | "tls" => connect_nats(config).await,
        "kafka" | "kafkas" => connect_kafka(config).await,
        "" => Err(ConfigError::InvalidUrl {
            url: config.url.redacted(),
            reason: "no scheme; expected memory://, amqp://, nats:// or kafka://".into(),
        }),
        other => Err(ConfigError::UnsupportedScheme {
            scheme: other.to_owned(),
            hint: "busline knows memory://, amqp(s)://, nats://, tls:// and kafka(s)://".into(),
        }),
    }
}

/// Connects with default settings to `url`.
pub async fn connect_url(url: &str) -> Result<Bus, ConfigError> {
    connect(&BusConfig::from_url(url)).await
}

/// Connects with the configuration from the environment
/// ([`BusConfig::from_env`]: `BUSLINE_URL`, `BUSLINE_SERVICE`,
/// `BUSLINE_CODEC`, `BUSLINE_CONFIG`); `memory://` when `BUSLINE_URL` is unset.
pub async fn connect_env() -> Result<Bus, ConfigError> {
    connect(&BusConfig::from_env()?).await
}

// Unused when every backend is compiled in.
#[allow(dead_code)]
fn missing_backend(scheme: &str, feature: &str) -> ConfigError {
    ConfigError::UnsupportedScheme {
        scheme: scheme.to_owned(),
        hint: format!("enable the `{feature}` feature of busline"),
    }
}

#[cfg(feature = "memory")]
fn connect_memory(config: &BusConfig) -> Result<Bus, ConfigError> {
    busline_memory::connect(config)
}

#[cfg(not(feature = "memory"))]
fn connect_memory(_config: &BusConfig) -> Result<Bus, ConfigError> {
    Err(missing_backend("memory", "memory"))
}

#[cfg(feature = "rabbitmq")]
async fn connect_rabbitmq(config: &BusConfig) -> Result<Bus, ConfigError> {
    busline_rabbitmq::connect(config).await
}

#[cfg(not(feature = "rabbitmq"))]
async fn connect_rabbitmq(config: &BusConfig) -> Result<Bus, ConfigError> {
    Err(missing_backend(&config.url.scheme(), "rabbitmq"))
}

#[cfg(feature = "kafka")]
async fn connect_kafka(config: &BusConfig) -> Result<Bus, ConfigError> {
    busline_kafka::connect(config).await
}

#[cfg(not(feature = "kafka"))]
async fn connect_kafka(config: &BusConfig) -> Result<Bus, ConfigError> {
    Err(missing_backend(&config.url.scheme(), "kafka"))
}

#[cfg(feature = "nats")]
async fn connect_nats(config: &BusConfig) -> Result<Bus, ConfigError> {
    busline_nats::connect(config).await
}

#[cfg(not(feature = "nats"))]
async fn connect_nats(config: &BusConfig) -> Result<Bus, ConfigError> {
    Err(missing_backend(&config.url.scheme(), "nats"))
}
