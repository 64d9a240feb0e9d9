//! Configuration: one URL picks the backend; the rest tunes the core and,
//! per backend section, the broker client.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

#[cfg(doc)]
use crate::redact::with_secrets;
use crate::redact::{is_secret_key, redact_url, redact_value, secrets_exposed, MASK};
use crate::{ConfigError, DeadLetterPolicy, RetryPolicy};

/// The environment variable that holds the bus URL.
pub const ENV_URL: &str = "BUSLINE_URL";
/// The environment variable that names the publishing service.
pub const ENV_SERVICE: &str = "BUSLINE_SERVICE";
/// The environment variable that names the codec (`json`, `msgpack`).
pub const ENV_CODEC: &str = "BUSLINE_CODEC";
/// The environment variable that points at a TOML configuration file.
pub const ENV_CONFIG_FILE: &str = "BUSLINE_CONFIG";

/// How published events travel (CloudEvents content modes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentMode {
    /// Attributes as broker headers, the payload as the body: what every
    /// CloudEvents consumer of the broker reads, and the cheaper one.
    #[default]
    Binary,
    /// The whole event as one JSON object in the body, content type
    /// `application/cloudevents+json`, for consumers that read only that
    /// (HTTP bridges, some SDK setups). Payloads that are not JSON travel
    /// base64-encoded.
    Structured,
}

/// Everything a bus needs, deserializable from TOML (or any serde format)
/// and from the environment.
///
/// ```
/// use busline_core::BusConfig;
/// let config = BusConfig::from_toml_str(r#"
///     url = "amqp://app:s3cret@rabbit:5672/orders"
///     service = "order-service"
///     [retry]
///     max_attempts = 3
///     initial_backoff = "100ms"
///     [rabbitmq]
///     prefetch = 32
/// "#).unwrap();
/// assert_eq!(config.url.scheme(), "amqp");
/// assert_eq!(config.retry.max_attempts, 3);
/// // Secrets never show:
/// assert!(!format!("{config:?}").contains("s3cret"));
/// assert!(!config.url.to_string().contains("s3cret"));
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// Picks the backend: `memory://`, `kafka://h:9092,h2:9092`,
    /// `amqp://user:pass@host:5672/vhost`, `nats://host:4222`, …
    pub url: BrokerUrl,
    /// The publishing service, written as every event's `source`.
    pub service: String,
    /// Codec of published payloads: `json` (default) or `msgpack`.
    pub codec: String,
    /// How published events travel: `binary` (default: attributes as broker
    /// headers) or `structured` (the whole event as one JSON object in the
    /// body). Both are read on every backend whatever this says.
    pub content_mode: ContentMode,
    /// Default retry policy of routers on this bus.
    pub retry: RetryPolicy,
    /// Default dead-letter policy of routers on this bus.
    pub dead_letter: DeadLetterPolicy,
    /// Default consumer settings of routers on this bus.
    pub consumer: ConsumerConfig,
    /// Tuning of the in-memory backend.
    pub memory: BackendSection,
    /// Tuning of the Kafka backend; librdkafka properties pass through.
    pub kafka: BackendSection,
    /// Tuning of the RabbitMQ backend.
    pub rabbitmq: BackendSection,
    /// Tuning of the NATS backend.
    pub nats: BackendSection,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            url: BrokerUrl::new("memory://"),
            service: "busline".into(),
            codec: "json".into(),
            content_mode: ContentMode::default(),
            retry: RetryPolicy::default(),
            dead_letter: DeadLetterPolicy::default(),
            consumer: ConsumerConfig::default(),
            memory: BackendSection::default(),
            kafka: BackendSection::default(),
            rabbitmq: BackendSection::default(),
            nats: BackendSection::default(),
        }
    }
}

impl BusConfig {
    /// Defaults with this URL.
    pub fn from_url(url: impl Into<String>) -> Self {
        Self {
            url: BrokerUrl::new(url),
            ..Self::default()
        }
    }

    /// Reads a TOML document.
    pub fn from_toml_str(toml_text: &str) -> Result<Self, ConfigError> {
        toml::from_str(toml_text).map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// Reads the TOML file named by `BUSLINE_CONFIG` if set (defaults
    /// otherwise), then applies `BUSLINE_URL`, `BUSLINE_SERVICE` and
    /// `BUSLINE_CODEC` on top.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut config = match std::env::var(ENV_CONFIG_FILE) {
            Ok(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| ConfigError::Invalid(format!("cannot read {path}: {e}")))?;
                Self::from_toml_str(&text)?
            }
            Err(_) => Self::default(),
        };
        if let Ok(url) = std::env::var(ENV_URL) {
            config.url = BrokerUrl::new(url);
        }
        if let Ok(service) = std::env::var(ENV_SERVICE) {
            config.service = service;
        }
        if let Ok(codec) = std::env::var(ENV_CODEC) {
            config.codec = codec;
        }
        Ok(config)
    }

    /// Sets the service name.
    pub fn with_service(mut self, service: impl Into<String>) -> Self {
        self.service = service.into();
        self
    }

    /// Sets the default retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
}

/// Default consumer settings of routers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Deliveries in flight per subscription.
    pub max_in_flight: usize,
    /// Longest a handler may run before it counts as a retryable failure.
    #[serde(with = "humantime_serde")]
    pub handler_timeout: Option<Duration>,
    /// On shutdown, how long in-flight handlers may take to finish before
    /// they are cancelled (their events are then redelivered).
    #[serde(with = "humantime_serde")]
    pub shutdown_deadline: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 64,
            handler_timeout: Some(Duration::from_secs(30)),
            shutdown_deadline: Duration::from_secs(30),
        }
    }
}

/// A backend's own configuration table, kept untyped by the core (which knows
/// no broker) and read by the backend with [`BackendSection::parse`].
/// Values whose key names a secret ([`is_secret_key`]) show as `***` in
/// `Debug` and serialize as `***` outside [`with_secrets`]; URLs in other
/// string values are redacted the same ways.
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct BackendSection(pub serde_json::Map<String, serde_json::Value>);

impl BackendSection {
    /// Reads the section as the backend's typed configuration.
    pub fn parse<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T, ConfigError> {
        serde_json::from_value(serde_json::Value::Object(self.0.clone()))
            .map_err(|e| ConfigError::Invalid(format!("[{name}] section: {e}")))
    }

    /// The section with secret values hidden, tables (`[kafka.producer]`)
    /// included.
    fn redacted(&self) -> serde_json::Map<String, serde_json::Value> {
        fn value(key: &str, v: &serde_json::Value) -> serde_json::Value {
            use serde_json::Value;
            match v {
                _ if is_secret_key(key) => Value::String(MASK.into()),
                Value::String(s) => Value::String(redact_value(key, s).into_owned()),
                Value::Object(map) => {
                    Value::Object(map.iter().map(|(k, v)| (k.clone(), value(k, v))).collect())
                }
                Value::Array(items) => Value::Array(items.iter().map(|v| value(key, v)).collect()),
                other => other.clone(),
            }
        }
        self.0.iter().map(|(k, v)| (k.clone(), value(k, v))).collect()
    }
}

impl Serialize for BackendSection {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if secrets_exposed() {
            self.0.serialize(s)
        } else {
            self.redacted().serialize(s)
        }
    }
}

impl fmt::Debug for BackendSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.redacted()).finish()
    }
}

/// A broker URL whose credentials never show in `Debug` or `Display`, and
/// serialize only inside [`with_secrets`].
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl(String);

impl<'de> Deserialize<'de> for BrokerUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self(String::deserialize(d)?))
    }
}

impl Serialize for BrokerUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if secrets_exposed() {
            s.serialize_str(&self.0)
        } else {
            s.serialize_str(&self.redacted())
        }
    }
}

impl BrokerUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into().trim().to_owned())
    }

    /// The scheme, lower-cased (`amqp`, `kafka`, …); empty if there is none.
    pub fn scheme(&self) -> String {
        self.0
            .split_once("://")
            .map(|(s, _)| s.to_ascii_lowercase())
            .unwrap_or_default()
    }

    /// The URL with its secrets, for the backend that connects with it. Do not
    /// log it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// The URL with every password (or token standing as user name) and
    /// secret query value replaced by `***`, seed lists item by item: see
    /// [`redact_url`].
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BrokerUrl({})", self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        let cases = [
            (
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                "amqp://guest:***@127.0.0.1:5672/%2f",
            ),
            ("nats://s3cret@host:4222", "nats://***@host:4222"),
            ("kafka://a:9092,b:9092", "kafka://a:9092,b:9092"),
            ("amqp://orders:pa/ss@rabbit/%2f", "amqp://orders:***@rabbit/%2f"),
            ("nats://u:p@h1,nats://u:q@h2", "nats://u:***@h1,nats://u:***@h2"),
            (
                "amqps://u:p@h/v?auth_mechanism=plain&password=x",
                "amqps://u:***@h/v?auth_mechanism=plain&password=***",
            ),
            ("memory://", "memory://"),
        ];
        for (url, want) in cases {
            let u = BrokerUrl::new(url);
            assert_eq!(u.to_string(), want);
            assert_eq!(format!("{u:?}"), format!("BrokerUrl({want})"));
        }
    }

    #[test]
    fn sections_redact_secret_keys() {
        let c = BusConfig::from_toml_str("[kafka]\n\"sasl.password\" = \"hunter2\"\n\"linger.ms\" = \"5\"\n")
            .unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("linger.ms"));
    }

    #[test]
    fn serialize_hides_secrets_unless_asked() {
        let c = BusConfig::from_toml_str(
            "url = \"nats://u:pa/ss@h1,nats://v:pa@ss@h2\"\n[kafka]\n\"sasl.password\" = \"hunter2\"\n\"ssl.key.pem\" = \"-----BEGIN PRIVATE KEY-----\"\n[kafka.producer]\n\"sasl.oauthbearer.config\" = \"clientSecret=s3\"\n\"linger.ms\" = 5\n",
        )
        .unwrap();
        for shown in [
            serde_json::to_string(&c).unwrap(),
            toml::to_string(&c).unwrap(),
            format!("{c:?}"),
        ] {
            for secret in ["pa/ss", "pa@ss", "hunter2", "PRIVATE KEY", "clientSecret"] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
            assert!(shown.contains("linger.ms"), "{shown}");
        }
        let full = crate::redact::with_secrets(|| toml::to_string(&c)).unwrap();
        let back = BusConfig::from_toml_str(&full).unwrap();
        assert_eq!(back.url.expose_secret(), c.url.expose_secret());
        assert_eq!(back.kafka, c.kafka);
    }

    #[test]
    fn unknown_fields_are_errors() {
        let err = BusConfig::from_toml_str("urll = \"memory://\"").unwrap_err();
        assert!(err.to_string().contains("urll"), "{err}");
    }

    #[test]
    fn typed_section() {
        #[derive(Deserialize)]
        struct Rabbit {
            prefetch: u16,
        }
        let c = BusConfig::from_toml_str("[rabbitmq]\nprefetch = 7").unwrap();
        assert_eq!(c.rabbitmq.parse::<Rabbit>("rabbitmq").unwrap().prefetch, 7);
        assert!(c.rabbitmq.parse::<Rabbit>("rabbitmq").is_ok());
        let bad = BusConfig::from_toml_str("[rabbitmq]\nprefetch = \"x\"").unwrap();
        assert!(bad.rabbitmq.parse::<Rabbit>("rabbitmq").is_err());
    }
}
