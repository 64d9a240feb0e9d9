//! The `[kafka]` section: busline's own settings plus librdkafka properties
//! that pass through to the clients.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

#[cfg(doc)]
use busline_core::is_secret_key;
use busline_core::redact::redact_value;
use busline_core::{BusConfig, ConfigError};
use percent_encoding::percent_decode_str;
use rdkafka::ClientConfig;
use serde::{Deserialize, Deserializer, Serialize};

/// Tuning of the Kafka backend, read from the `[kafka]` section of a
/// [`BusConfig`].
///
/// Keys busline does not know (they contain a dot, like `linger.ms` or
/// `sasl.password`) are librdkafka properties for both the producer and the
/// consumers; `[kafka.producer]` and `[kafka.consumer]` hold properties for
/// one side only. Properties given here win over busline's defaults:
///
/// | side | property | default | why |
/// | --- | --- | --- | --- |
/// | producer | `enable.idempotence` | `true` | no duplicates or reordering on retries |
/// | producer | `acks` | `all` | a publish returns once every in-sync replica has it |
/// | producer | `linger.ms` | `5` | batches concurrent publishes, little latency |
/// | producer | `batch.size` | `1000000` | bytes per partition batch |
/// | producer | `message.timeout.ms` | `30000` | a publish fails `Timeout` after this |
/// | producer | `queue.buffering.max.messages` | `200000` | publishes in flight per client |
/// | consumer | `enable.auto.commit` | `false` | busline commits only decided offsets |
/// | consumer | `enable.auto.offset.store` | `false` | idem |
/// | consumer | `session.timeout.ms` | `10000` | a dead member is noticed within 10 s |
/// | consumer | `heartbeat.interval.ms` | `1000` | rebalances complete quickly |
/// | consumer | `fetch.wait.max.ms` | `100` | low latency when the topic is quiet |
/// | consumer | `auto.offset.reset` | `earliest` | only used when a committed offset is out of range: re-read rather than skip |
///
/// Where a group starts is not left to `auto.offset.reset`: `provision`
/// (and the first member of a group) commits the current end of every
/// partition of a new group for [`StartFrom::New`](busline_core::StartFrom::New),
/// or its beginning for `Earliest`, so events published after `provision`
/// returns are never skipped. A group is new on a topic while it has no
/// committed offset on any of its partitions; in a group that has some, a
/// partition without one starts at its earliest offset. When *all* of a
/// group's offsets expired, it is new again: see the crate documentation.
///
/// ```
/// let config = busline_core::BusConfig::from_toml_str(r#"
///     url = "kafka://127.0.0.1:9092"
///     [kafka]
///     partitions = 8
///     "linger.ms" = 10
///     "sasl.password" = "s3cret"
///     [kafka.consumer]
///     "session.timeout.ms" = "30000"
/// "#).unwrap();
/// let kafka = busline_kafka::KafkaConfig::from_bus_config(&config).unwrap();
/// assert_eq!(kafka.partitions, 8);
/// assert_eq!(kafka.properties.get("linger.ms"), Some("10"));
/// assert!(!format!("{kafka:?}").contains("s3cret"));
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct KafkaConfig {
    /// Partitions of the topics busline creates (default 4).
    pub partitions: i32,
    /// Replication factor of the topics busline creates (default 1; use 3 on
    /// a production cluster).
    pub replication: i32,
    /// Topic-level configuration of created topics (`retention.ms`, …).
    pub topic_config: BTreeMap<String, String>,
    /// Create missing topics with the admin API (default). `false` for
    /// brokers without CreateTopics that create topics when their metadata
    /// is requested (librdkafka's mock cluster, `auto.create.topics.enable`).
    pub admin_create_topics: bool,
    /// Remove groups with the admin API (`remove_group`: DeleteGroups for
    /// the group's consumer groups, DeleteTopics for its dead-letter
    /// topics; default). `false` for brokers without them (librdkafka's
    /// mock cluster, Azure Event Hubs): `remove_group` then answers
    /// `Unsupported`.
    pub admin_delete_groups: bool,
    /// Properties for the producer only.
    pub producer: Properties,
    /// Properties for the consumers (and the group-offset client) only.
    pub consumer: Properties,
    /// How often a member commits the offsets its settled events allow.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Deadline of admin, metadata and offset requests.
    #[serde(with = "humantime_serde")]
    pub operation_timeout: Duration,
    /// How long `subscribe` waits for the member's first partition
    /// assignment (it returns anyway after it, with a warning).
    #[serde(with = "humantime_serde")]
    pub join_timeout: Duration,
    /// How long a member that leaves (subscription dropped, bus shut down)
    /// waits for deliveries still in flight to be settled before it commits
    /// and closes; what is unsettled then is delivered again.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How long a member whose partitions a rebalance revokes waits for
    /// their deliveries in flight to be settled before it commits what was
    /// decided and gives the partitions up (default 30 s, the router's
    /// default handler timeout, so a handler within it always finishes
    /// before its partition moves). Meanwhile nothing more of those
    /// partitions is handed out, so the next owner neither starts a key
    /// while its handler still runs here nor redelivers what was settled.
    /// A delivery still unsettled then is abandoned: its next owner
    /// delivers it again (at-least-once), possibly while it still runs
    /// here. The whole group's rebalance waits for its slowest member, so
    /// keep this well below the consumer's `max.poll.interval.ms` (the
    /// rebalance timeout, 300 s by default); `connect` refuses a value that
    /// is not below it. `0` gives partitions up at once.
    #[serde(with = "humantime_serde")]
    pub revoke_timeout: Duration,
    /// Records a member buffers beyond those in flight (waiting for their
    /// key's turn or a free slot) before it pauses fetching.
    pub max_buffered: usize,
    /// Start fetching a newly assigned (or resumed) partition this many
    /// offsets before its committed offset, skipping what lies before it.
    /// `0` (the default) on Kafka. A workaround for brokers that return
    /// nothing for a fetch that starts inside a stored record batch (tansu
    /// 0.6): with a rewind at least as large as the producers' batches
    /// (`batch.num.messages`), a group resumes correctly there.
    pub fetch_rewind: u32,
    /// In-partition retry bound: a delivery returned (nacked or dropped)
    /// this many times is dead-lettered by the backend itself with reason
    /// `max_attempts_exceeded`, so a key cannot be blocked forever. `0`
    /// disables the bound. Routers dead-letter much earlier, by their retry
    /// policy.
    pub max_attempts: u32,
    /// First delay before a dead letter that could not be produced (DLQ
    /// unreachable, refused) is tried again: its record is handed out
    /// again after it, and the delay doubles with each further failure of
    /// the same record, up to [`dead_letter_backoff_max`](Self::dead_letter_backoff_max).
    /// Its key waits meanwhile; nothing is committed past it.
    #[serde(with = "humantime_serde")]
    pub dead_letter_backoff: Duration,
    /// The longest delay between tries of a dead letter that keeps failing.
    #[serde(with = "humantime_serde")]
    pub dead_letter_backoff_max: Duration,
    /// librdkafka properties for every client: `linger.ms`, `sasl.*`,
    /// `security.protocol`, `client.id`, …
    #[serde(flatten)]
    pub properties: Properties,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            partitions: 4,
            replication: 1,
            topic_config: BTreeMap::new(),
            admin_create_topics: true,
            admin_delete_groups: true,
            producer: Properties::default(),
            consumer: Properties::default(),
            commit_interval: Duration::from_millis(100),
            operation_timeout: Duration::from_secs(10),
            join_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            revoke_timeout: Duration::from_secs(30),
            max_buffered: 10_000,
            max_attempts: 1_000,
            fetch_rewind: 0,
            dead_letter_backoff: Duration::from_millis(200),
            dead_letter_backoff_max: Duration::from_secs(30),
            properties: Properties::default(),
        }
    }
}

impl KafkaConfig {
    /// Reads the `[kafka]` section.
    pub fn from_bus_config(config: &BusConfig) -> Result<Self, ConfigError> {
        config.kafka.parse("kafka")
    }

    /// Checks settings that only make sense together.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let key = "max.poll.interval.ms";
        let poll_interval = match self.consumer.get(key).or_else(|| self.properties.get(key)) {
            None => Duration::from_millis(300_000),
            Some(ms) => Duration::from_millis(ms.trim().parse().map_err(|_| {
                ConfigError::Invalid(format!(
                    "[kafka] `{key}` = `{ms}` is not a number of milliseconds"
                ))
            })?),
        };
        if self.revoke_timeout >= poll_interval {
            return Err(ConfigError::Invalid(format!(
                "[kafka] revoke_timeout ({:?}) must be below the consumer's {key} ({poll_interval:?}): the group's rebalance waits for it",
                self.revoke_timeout
            )));
        }
        Ok(())
    }

    /// The producer's librdkafka configuration for `bootstrap`.
    pub(crate) fn producer_config(&self, bootstrap: &Bootstrap) -> ClientConfig {
        let mut c = bootstrap.client_config();
        for (k, v) in [
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "5"),
            ("batch.size", "1000000"),
            ("message.timeout.ms", "30000"),
            ("queue.buffering.max.messages", "200000"),
        ] {
            c.set(k, v);
        }
        self.properties.apply(&mut c);
        self.producer.apply(&mut c);
        c
    }

    /// A consumer's librdkafka configuration in `group`.
    pub(crate) fn consumer_config(&self, bootstrap: &Bootstrap, group: &str) -> ClientConfig {
        let mut c = bootstrap.client_config();
        for (k, v) in [
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("session.timeout.ms", "10000"),
            ("heartbeat.interval.ms", "1000"),
            ("fetch.wait.max.ms", "100"),
            ("auto.offset.reset", "earliest"),
            ("enable.partition.eof", "false"),
        ] {
            c.set(k, v);
        }
        self.properties.apply(&mut c);
        self.consumer.apply(&mut c);
        c.set("group.id", group);
        c
    }

    /// The delay before a record whose dead letter failed `failures` times
    /// in a row is handed out again: [`dead_letter_backoff`](Self::dead_letter_backoff)
    /// doubled per further failure, at most
    /// [`dead_letter_backoff_max`](Self::dead_letter_backoff_max).
    pub fn dead_letter_delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        self.dead_letter_backoff
            .saturating_mul(1 << doublings)
            .min(self.dead_letter_backoff_max)
    }

    /// The admin client's configuration.
    pub(crate) fn admin_config(&self, bootstrap: &Bootstrap) -> ClientConfig {
        let mut c = bootstrap.client_config();
        self.properties.apply(&mut c);
        c
    }
}

/// librdkafka properties (`name = value`); values may be written as TOML
/// strings, numbers or booleans. Values of secret keys ([`is_secret_key`]:
/// `sasl.password`, `ssl.key.pem`, `sasl.oauthbearer.config`, …) never
/// show in `Debug` and serialize as `***` unless serialized inside
/// [`busline_core::redact::with_secrets`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Properties(BTreeMap<String, String>);

impl Serialize for Properties {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let expose = busline_core::redact::secrets_exposed();
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            if expose {
                map.serialize_entry(k, v)?;
            } else {
                map.serialize_entry(k, &redact_value(k, v))?;
            }
        }
        map.end()
    }
}

impl Properties {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Sets `key` to `value`.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.0.insert(key.into(), value.into());
        self
    }

    fn apply(&self, c: &mut ClientConfig) {
        for (k, v) in &self.0 {
            c.set(k, v);
        }
    }
}

impl<'de> Deserialize<'de> for Properties {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Value {
            Text(String),
            Int(i64),
            Float(f64),
            Bool(bool),
        }
        let raw = BTreeMap::<String, Value>::deserialize(d)?;
        Ok(Self(
            raw.into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::Text(s) => s,
                        Value::Int(i) => i.to_string(),
                        Value::Float(f) => f.to_string(),
                        Value::Bool(b) => b.to_string(),
                    };
                    (k, v)
                })
                .collect(),
        ))
    }
}

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, redact_value(k, v))))
            .finish()
    }
}

/// SASL mechanisms a URL may name with `?mechanism=`.
const MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"];

/// The brokers of a `kafka://` or `kafkas://` URL, and how to reach them:
///
/// | URL | `security.protocol` |
/// | --- | --- |
/// | `kafka://h:9092` | `PLAINTEXT` |
/// | `kafkas://h:9093` (or `kafka://h:9093?tls=true`) | `SSL` |
/// | `kafkas://user:pass@h:9093` | `SASL_SSL` |
/// | `kafka://user:pass@h:9092` | `SASL_PLAINTEXT`, with a warning at connect: the password crosses the network in clear; `?tls=false` says it is meant and silences it |
///
/// `?mechanism=SCRAM-SHA-512` (or `SCRAM-SHA-256`, `PLAIN` (the default
/// with credentials), `OAUTHBEARER`, `GSSAPI`) picks the SASL mechanism;
/// `kafkas://h:9093?mechanism=OAUTHBEARER` needs no userinfo (the token
/// comes from `sasl.oauthbearer.*` properties). User and password are
/// percent-decoded; the password ends at the last `@` of the URL. Explicit
/// `security.protocol` / `sasl.*` properties of the `[kafka]` section win.
#[derive(Clone)]
pub(crate) struct Bootstrap {
    servers: String,
    credentials: Option<(String, String)>,
    tls: bool,
    mechanism: Option<String>,
    /// `?tls=false` written out: SASL over plaintext is meant.
    plaintext_meant: bool,
}

impl fmt::Debug for Bootstrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bootstrap")
            .field("servers", &self.servers)
            .field("credentials", &self.credentials.as_ref().map(|(u, _)| (u, "***")))
            .field("security_protocol", &self.security_protocol())
            .field("mechanism", &self.mechanism)
            .finish()
    }
}

impl Bootstrap {
    /// Parses the URL of `config`.
    pub(crate) fn from_url(config: &BusConfig) -> Result<Self, ConfigError> {
        let invalid = |reason: &str| ConfigError::InvalidUrl {
            url: config.url.redacted(),
            reason: reason.into(),
        };
        let url = config.url.expose_secret();
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(invalid("expected kafka://host:port[,host:port] or kafkas://…"));
        };
        let mut tls = match scheme.to_ascii_lowercase().as_str() {
            "kafka" => false,
            "kafkas" => true,
            _ => return Err(invalid("the Kafka backend takes kafka:// and kafkas:// URLs")),
        };
        // The userinfo ends at the last `@`, where the redactor ends it: a
        // password may hold `/`, `?`, `#` or `@`.
        let (userinfo, after) = busline_core::redact::split_userinfo(rest);
        let hosts_end = after.find(['/', '?', '#']).unwrap_or(after.len());
        let (hosts, tail) = after.split_at(hosts_end);
        let tail = tail.split('#').next().unwrap_or_default();
        let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
        if !path.is_empty() && path != "/" {
            return Err(invalid(
                "a Kafka URL has no path: kafka://host:port[,host:port][?tls=…&mechanism=…]",
            ));
        }
        let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
        let credentials = userinfo.map(|userinfo| {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            (decode(user), decode(password))
        });
        let mut mechanism = None;
        let mut plaintext_meant = false;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match (key, decode(value).to_ascii_lowercase().as_str()) {
                ("tls", "true" | "1" | "yes") => tls = true,
                ("tls", "false" | "0" | "no") if scheme.eq_ignore_ascii_case("kafkas") => {
                    return Err(invalid("kafkas:// is TLS; tls=false contradicts it"))
                }
                ("tls", "false" | "0" | "no") => plaintext_meant = true,
                ("tls", _) => return Err(invalid("tls takes true or false")),
                ("mechanism" | "sasl_mechanism", _) => {
                    let m = decode(value).to_ascii_uppercase();
                    if !MECHANISMS.contains(&m.as_str()) {
                        return Err(invalid(&format!(
                            "unknown SASL mechanism `{m}`; known: {}",
                            MECHANISMS.join(", ")
                        )));
                    }
                    mechanism = Some(m);
                }
                _ => {
                    return Err(invalid(&format!(
                        "unknown URL option `{key}`; known: tls, mechanism (librdkafka properties go in the [kafka] section)"
                    )))
                }
            }
        }
        let servers: Vec<&str> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .collect();
        if servers.is_empty() {
            return Err(invalid("no broker address"));
        }
        Ok(Self {
            servers: servers.join(","),
            credentials,
            tls,
            mechanism,
            plaintext_meant,
        })
    }

    /// A bootstrap list as it is, e.g. a mock cluster's.
    #[cfg(test)]
    pub(crate) fn servers(servers: impl Into<String>) -> Self {
        Self {
            servers: servers.into(),
            credentials: None,
            tls: false,
            mechanism: None,
            plaintext_meant: false,
        }
    }

    fn sasl(&self) -> bool {
        self.credentials.is_some() || self.mechanism.is_some()
    }

    /// The `security.protocol` the URL asks for.
    pub(crate) fn security_protocol(&self) -> &'static str {
        match (self.tls, self.sasl()) {
            (false, false) => "PLAINTEXT",
            (true, false) => "SSL",
            (false, true) => "SASL_PLAINTEXT",
            (true, true) => "SASL_SSL",
        }
    }

    /// Warns when credentials would cross the network in clear, unless the
    /// URL says so is meant (`?tls=false`).
    pub(crate) fn warn_if_plaintext_credentials(&self) {
        if !self.tls && self.credentials.is_some() && !self.plaintext_meant {
            tracing::warn!(
                servers = %self.servers,
                "Kafka credentials over SASL_PLAINTEXT: the SASL exchange (a PLAIN password in clear) is not encrypted; \
                 use kafkas:// (SASL_SSL), or add ?tls=false if plaintext is meant"
            );
        }
    }

    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.servers);
        c.set("security.protocol", self.security_protocol());
        if self.sasl() {
            c.set("sasl.mechanisms", self.mechanism.as_deref().unwrap_or("PLAIN"));
        }
        if let Some((user, password)) = &self.credentials {
            c.set("sasl.username", user);
            c.set("sasl.password", password);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_retries_back_off_up_to_the_cap() {
        let c = KafkaConfig::default();
        let delays: Vec<_> = [1, 2, 3, 8, 9, 1_000].map(|n| c.dead_letter_delay(n)).into();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            delays,
            vec![ms(200), ms(400), ms(800), ms(25_600), ms(30_000), ms(30_000)]
        );
    }

    #[test]
    fn revoke_timeout_stays_below_the_poll_interval() {
        let mut c = KafkaConfig::default();
        assert!(c.validate().is_ok());
        c.revoke_timeout = Duration::from_secs(300);
        assert!(c.validate().is_err(), "not below the default 300 s");
        c.consumer.set("max.poll.interval.ms", "600000");
        assert!(c.validate().is_ok());
        c.consumer.set("max.poll.interval.ms", "ten minutes");
        assert!(c.validate().is_err());
    }

    #[test]
    fn urls_give_bootstrap_lists() {
        let b = Bootstrap::from_url(&BusConfig::from_url("kafka://a:9092, b:9093")).unwrap();
        assert_eq!(b.servers, "a:9092,b:9093");
        let b = Bootstrap::from_url(&BusConfig::from_url("kafka://u:pw@a:9092/")).unwrap();
        assert_eq!(b.credentials, Some(("u".into(), "pw".into())));
        assert!(!format!("{b:?}").contains("pw"));
        let b = Bootstrap::from_url(&BusConfig::from_url("kafka://u:p/w@r%40d@a:9092,b:9093")).unwrap();
        assert_eq!(b.credentials, Some(("u".into(), "p/w@r@d".into())));
        assert_eq!(b.servers, "a:9092,b:9093");
        assert!(Bootstrap::from_url(&BusConfig::from_url("kafka://")).is_err());
        assert!(Bootstrap::from_url(&BusConfig::from_url("nats://a:1")).is_err());
        let b = Bootstrap::from_url(&BusConfig::from_url("kafka://[::1]:9092,h:1")).unwrap();
        assert_eq!(b.servers, "[::1]:9092,h:1");
    }

    #[test]
    fn properties_hide_secrets_in_debug_and_serialize() {
        let config = BusConfig::from_toml_str(
            "[kafka]\n\"sasl.password\" = \"hunter2\"\n\"ssl.key.pem\" = \"KEYPEM\"\n\"sasl.oauthbearer.config\" = \"clientSecret=s3\"\n\"ssl.keystore.password\" = \"ks\"\n[kafka.consumer]\n\"sasl.password\" = \"hunter3\"\n",
        )
        .unwrap();
        let k = KafkaConfig::from_bus_config(&config).unwrap();
        let json = serde_json::to_string(&k).unwrap();
        for shown in [format!("{k:?}"), json] {
            for secret in ["hunter2", "hunter3", "KEYPEM", "clientSecret", "\"ks\""] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
        }
        let full = busline_core::redact::with_secrets(|| serde_json::to_string(&k)).unwrap();
        assert!(full.contains("hunter2") && full.contains("hunter3"), "{full}");
    }

    #[test]
    fn schemes_and_options_pick_the_security_protocol() {
        let proto = |url: &str| {
            let b = Bootstrap::from_url(&BusConfig::from_url(url)).unwrap_or_else(|e| panic!("{url}: {e}"));
            let c = b.client_config();
            (
                c.get("security.protocol").unwrap().to_owned(),
                c.get("sasl.mechanisms").map(str::to_owned),
            )
        };
        let p = |s: &str, m: Option<&str>| (s.to_owned(), m.map(str::to_owned));
        assert_eq!(proto("kafka://a:9092"), p("PLAINTEXT", None));
        assert_eq!(proto("kafkas://a:9093"), p("SSL", None));
        assert_eq!(proto("kafka://a:9093?tls=true"), p("SSL", None));
        assert_eq!(proto("kafkas://u:p@a:9093"), p("SASL_SSL", Some("PLAIN")));
        assert_eq!(
            proto("KAFKAS://u:p@a:9093,b:9093/?mechanism=scram-sha-512"),
            p("SASL_SSL", Some("SCRAM-SHA-512"))
        );
        assert_eq!(proto("kafka://u:p@a:9092"), p("SASL_PLAINTEXT", Some("PLAIN")));
        assert_eq!(
            proto("kafka://u:p@a:9092?tls=false&mechanism=SCRAM-SHA-256"),
            p("SASL_PLAINTEXT", Some("SCRAM-SHA-256"))
        );
        assert_eq!(
            proto("kafkas://a:9093?mechanism=OAUTHBEARER"),
            p("SASL_SSL", Some("OAUTHBEARER"))
        );
        for bad in [
            "kafkas://a:9093?tls=false",
            "kafka://a:9092?tls=maybe",
            "kafka://u:hunter2@a:9092?mechanism=MD5",
            "kafka://u:hunter2@a:9092?linger.ms=5",
            "kafka://u:hunter2@a:9092/topic",
        ] {
            let err = Bootstrap::from_url(&BusConfig::from_url(bad))
                .expect_err(bad)
                .to_string();
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    /// The build links OpenSSL: clients for TLS and every SASL mechanism
    /// but GSSAPI are created (before `ssl` was enabled, creation failed
    /// with "OpenSSL not available at build time" and "Current build
    /// options: PLAIN").
    #[test]
    fn tls_and_sasl_clients_can_be_created() {
        use rdkafka::producer::BaseProducer;
        let k = KafkaConfig::default();
        for (url, extra) in [
            ("kafkas://127.0.0.1:1", vec![]),
            ("kafkas://u:p@127.0.0.1:1", vec![]),
            ("kafkas://u:p@127.0.0.1:1?mechanism=SCRAM-SHA-256", vec![]),
            ("kafkas://u:p@127.0.0.1:1?mechanism=SCRAM-SHA-512", vec![]),
            (
                "kafka://u:p@127.0.0.1:1?tls=false&mechanism=SCRAM-SHA-512",
                vec![],
            ),
            (
                "kafkas://127.0.0.1:1?mechanism=OAUTHBEARER",
                vec![
                    ("enable.sasl.oauthbearer.unsecure.jwt", "true"),
                    ("sasl.oauthbearer.config", "principal=busline"),
                ],
            ),
            (
                "kafkas://127.0.0.1:1",
                vec![("ssl.endpoint.identification.algorithm", "https")],
            ),
        ] {
            let b = Bootstrap::from_url(&BusConfig::from_url(url)).unwrap();
            let mut c = k.producer_config(&b);
            for (key, value) in extra {
                c.set(key, value);
            }
            if let Err(e) = c.create::<BaseProducer>() {
                panic!("{url}: {e}");
            }
        }
    }

    #[test]
    fn properties_pass_through_and_win() {
        let config = BusConfig::from_toml_str(
            "url = \"kafka://h:1\"\n[kafka]\n\"linger.ms\" = 20\n\"enable.idempotence\" = true\n[kafka.producer]\n\"acks\" = \"1\"\n",
        )
        .unwrap();
        let k = KafkaConfig::from_bus_config(&config).unwrap();
        let p = k.producer_config(&Bootstrap::servers("h:1"));
        assert_eq!(p.get("linger.ms"), Some("20"));
        assert_eq!(p.get("acks"), Some("1"));
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        let c = k.consumer_config(&Bootstrap::servers("h:1"), "g");
        assert_eq!(c.get("group.id"), Some("g"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("acks"), None);
    }
}
