//! The `[rabbitmq]` section of `BusConfig`: tuning of this backend.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The kind of queue a group gets.
///
/// The default is [`Quorum`](QueueType::Quorum): it is the only queue type
/// in which a message the client library cannot parse leaves the queue by
/// itself (see [`RabbitConfig::delivery_limit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Classic durable queues: on one node, cheapest per queue. They have
    /// no delivery limit, so a message lapin cannot parse stays at the
    /// head of the queue: the subscription gives up after
    /// [`RabbitConfig::max_unparseable_losses`] losses in a row with
    /// `ConsumeErrorKind::Unparseable`, and an operator has to remove the
    /// message (`rabbitmqctl purge_queue`, or a get-and-reject in the
    /// management UI).
    Classic,
    /// Quorum queues (the default): replicated across a cluster (Raft),
    /// and with a delivery limit (`x-delivery-limit`), after which the
    /// broker moves a message the client cannot parse into the group's
    /// parking queue `<topic>::<group>::unparseable`. Retry queues use
    /// at-least-once dead-lettering, so delayed retries survive a node
    /// loss.
    #[default]
    Quorum,
}

impl QueueType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

/// Tuning of the RabbitMQ backend.
///
/// ```toml
/// [rabbitmq]
/// prefetch = 32
/// queue_type = "quorum"
/// publisher_channels = 8
/// heartbeat = "30s"
/// connection_name = "order-service"
/// mandatory = true
/// reconnect_min_backoff = "100ms"
/// reconnect_max_backoff = "5s"
/// retry_bucket_base = "100ms"
/// dead_letter_backoff = "200ms"
/// dead_letter_backoff_max = "30s"
/// ```
///
/// TLS is chosen by the URL: `amqps://` connects with rustls and the
/// platform's trust store. Changing `queue_type` (or `delivery_limit`) for a
/// group that already exists makes the broker refuse the declaration
/// (`PRECONDITION_FAILED`); `subscribe` and `provision` then fail with
/// `SubscribeErrorKind::Topology` and an error naming the queue and the
/// setting. Keep the setting the queue was made with (groups made before
/// quorum became the default are classic: `queue_type = "classic"`), or
/// delete the queue (its messages with it) or use a new group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RabbitConfig {
    /// Upper bound of every consumer's prefetch. By default the prefetch is
    /// the subscription's `max_in_flight`; a set value caps it.
    pub prefetch: Option<u16>,
    /// Kind of the group, retry and dead-letter queues declared.
    pub queue_type: QueueType,
    /// Times the broker takes one message back unsettled before it gives
    /// up on it (a quorum queue's `x-delivery-limit`; classic queues have
    /// none). The broker takes a message back when the consumer's
    /// connection is lost with it in flight, or when it is dropped
    /// undecided; retries are new copies and start from zero. Once the
    /// count passes the limit (on RabbitMQ 3.10.8: at the
    /// `delivery_limit + 1`-th loss) the broker moves the message into the
    /// group's parking queue `<topic>::<group>::unparseable`. That is how a
    /// message lapin cannot parse (a header name or `content_type` that is
    /// not UTF-8: each delivery of it drops the consumer's connection)
    /// leaves the queue. `0`, the default, derives it from the bus's retry
    /// policy: `max_attempts` + [`DELIVERY_LIMIT_MARGIN`], so a readable
    /// event that broker restarts or network faults caught in flight
    /// still gets the router's attempts before the broker parks it.
    ///
    /// busline cannot read a parked message either; it counts and warns
    /// about what it sees parked ([`RabbitBus::stats`](crate::RabbitBus::stats)).
    /// An operator inspects it with the management UI ("Get messages" on
    /// the parking queue, which shows the headers) or `rabbitmqadmin get
    /// queue=<topic>::<group>::unparseable`, and removes it with
    /// `rabbitmqctl purge_queue`.
    pub delivery_limit: u32,
    /// Connection losses in a row, each caused by a frame lapin cannot
    /// parse and with no delivery in between, after which a subscription
    /// gives up with `ConsumeErrorKind::Unparseable` (the router fails,
    /// `RunningRouter::health()` shows it) instead of reconnecting again.
    /// `0`, the default, derives it: on quorum queues `delivery_limit` + 3
    /// (the broker parks the message after `delivery_limit` + 1 losses, so
    /// a subscription only gives up when parking did not happen), on
    /// classic queues 3.
    pub max_unparseable_losses: u32,
    /// Publisher channels per connection. Publishes are spread over them and
    /// their confirmations are awaited outside any lock, so concurrent
    /// publishers do not wait for each other's confirmations.
    pub publisher_channels: usize,
    /// AMQP heartbeat interval asked of the broker (`0s` disables it); a
    /// `heartbeat` in the URL's query wins.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Name shown for the connections in the management UI
    /// (`rabbitmqctl list_connections client_properties`); defaults to the
    /// configuration's service name.
    pub connection_name: Option<String>,
    /// Publish with the `mandatory` flag: an event no queue is bound for
    /// fails with `PublishErrorKind::Unroutable` instead of being dropped by
    /// the exchange. Off by default: a topic nobody subscribed to drops
    /// events, as the in-memory bus does.
    pub mandatory: bool,
    /// First delay between reconnection attempts.
    #[serde(with = "humantime_serde")]
    pub reconnect_min_backoff: Duration,
    /// Longest delay between reconnection attempts (the delay doubles up to
    /// it).
    #[serde(with = "humantime_serde")]
    pub reconnect_max_backoff: Duration,
    /// How long one connection attempt may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a publish waits for the broker's confirmation before it
    /// fails with `PublishErrorKind::Timeout` (the event may still be
    /// stored).
    #[serde(with = "humantime_serde")]
    pub confirm_timeout: Duration,
    /// How long any other exchange with the broker may take: waiting for a
    /// publisher channel, opening a channel, a declaration, handing a
    /// publish's frames to the connection, an ack. A publish therefore
    /// returns within `2 × operation_timeout + confirm_timeout` (the
    /// exchange's declaration, the send, the confirmation), with
    /// `PublishErrorKind::Timeout` when the broker (or the network) stalls.
    #[serde(with = "humantime_serde")]
    pub operation_timeout: Duration,
    /// Upper bound of `shutdown`: outstanding confirmations are awaited and
    /// connections closed within it, even when the broker does not answer.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// TTL of a group's shortest retry queue. A delayed retry waits in the
    /// group's queue `<topic>::<group>::retry.<ttl>ms` whose TTL is the
    /// smallest `retry_bucket_base × 2^k` at least as long as the delay
    /// asked: never less than asked, less than twice as long (or this base
    /// when less was asked), and never behind a longer retry. The longest
    /// bucket is the broker's 32-bit TTL limit (49.7 days).
    #[serde(with = "humantime_serde")]
    pub retry_bucket_base: Duration,
    /// First wait after a dead letter or a retry copy could not be
    /// published (the DLQ or retry queue refused, deleted and not
    /// declarable, the broker unreachable), instead of an immediate
    /// redelivery, which would be a hot loop. A dead letter: the event is
    /// parked in a retry queue for the wait, then handled (and
    /// dead-lettered) again, while the group's other events go on. A retry
    /// copy (or a park that fails too): the delivery is held unacked and
    /// the copy sent again after the wait; after
    /// 4 × [`dead_letter_backoff_max`](Self::dead_letter_backoff_max) of
    /// holds in all, the delivery goes back to the broker. The wait
    /// doubles with each further failure, up to `dead_letter_backoff_max`.
    #[serde(with = "humantime_serde")]
    pub dead_letter_backoff: Duration,
    /// Longest wait between tries of a copy that keeps failing.
    #[serde(with = "humantime_serde")]
    pub dead_letter_backoff_max: Duration,
    /// TLS of `amqps://` connections: a private CA to trust and a client
    /// certificate for mutual TLS (the `[rabbitmq.tls]` table).
    pub tls: RabbitTls,
    /// Where the management plugin's HTTP API answers (`http://host:15672`),
    /// for listing topics and groups: AMQP cannot list exchanges or queues.
    /// Unset, it is port 15672 on the URL's first host; the AMQP URL's
    /// credentials and vhost are used either way. Plain HTTP only.
    pub management_url: Option<String>,
}

impl Default for RabbitConfig {
    fn default() -> Self {
        Self {
            prefetch: None,
            queue_type: QueueType::Quorum,
            delivery_limit: 0,
            max_unparseable_losses: 0,
            publisher_channels: 4,
            heartbeat: Duration::from_secs(30),
            connection_name: None,
            mandatory: false,
            reconnect_min_backoff: Duration::from_millis(100),
            reconnect_max_backoff: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            confirm_timeout: Duration::from_secs(30),
            operation_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(10),
            retry_bucket_base: Duration::from_millis(100),
            dead_letter_backoff: Duration::from_millis(200),
            dead_letter_backoff_max: Duration::from_secs(30),
            tls: RabbitTls::default(),
            management_url: None,
        }
    }
}

/// Deliveries the derived [`RabbitConfig::delivery_limit`] allows beyond
/// the retry policy's `max_attempts`: a delivery lost in transit (a broker
/// restart, a network fault) still leaves the router its attempts.
pub const DELIVERY_LIMIT_MARGIN: u32 = 2;

impl RabbitConfig {
    /// This configuration with a derived `delivery_limit` and
    /// `max_unparseable_losses` (`0`) resolved for a retry policy of
    /// `max_attempts`.
    pub(crate) fn resolved(mut self, max_attempts: u32) -> Self {
        if self.delivery_limit == 0 {
            self.delivery_limit = max_attempts.max(1).saturating_add(DELIVERY_LIMIT_MARGIN);
        }
        if self.max_unparseable_losses == 0 {
            self.max_unparseable_losses = match self.queue_type {
                QueueType::Quorum => self.delivery_limit.saturating_add(3),
                QueueType::Classic => 3,
            };
        }
        self
    }

    /// The prefetch of a consumer asking for `max_in_flight`.
    pub(crate) fn prefetch_for(&self, max_in_flight: usize) -> u16 {
        let wanted = u16::try_from(max_in_flight.max(1)).unwrap_or(u16::MAX);
        match self.prefetch {
            Some(cap) => wanted.min(cap.max(1)),
            None => wanted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_from_a_bus_config_section() {
        let config = busline_core::BusConfig::from_toml_str(
            "[rabbitmq]\nprefetch = 7\nqueue_type = \"quorum\"\nheartbeat = \"10s\"\nmandatory = true\n",
        )
        .unwrap();
        let rabbit: RabbitConfig = config.rabbitmq.parse("rabbitmq").unwrap();
        assert_eq!(rabbit.prefetch, Some(7));
        assert_eq!(rabbit.queue_type, QueueType::Quorum);
        assert_eq!(rabbit.heartbeat, Duration::from_secs(10));
        assert!(rabbit.mandatory);
        assert_eq!(rabbit.publisher_channels, 4);
        assert_eq!(RabbitConfig::default().queue_type, QueueType::Quorum);
        assert!(
            busline_core::BusConfig::from_toml_str("[rabbitmq]\nprefetchh = 1")
                .unwrap()
                .rabbitmq
                .parse::<RabbitConfig>("rabbitmq")
                .is_err()
        );
    }

    #[test]
    fn prefetch_follows_max_in_flight_under_the_cap() {
        let mut c = RabbitConfig::default();
        assert_eq!(c.prefetch_for(64), 64);
        assert_eq!(c.prefetch_for(0), 1);
        assert_eq!(c.prefetch_for(1 << 20), u16::MAX);
        c.prefetch = Some(10);
        assert_eq!(c.prefetch_for(64), 10);
        assert_eq!(c.prefetch_for(4), 4);
    }

    #[test]
    fn delivery_limit_and_unparseable_losses_are_derived() {
        let quorum = RabbitConfig::default().resolved(5);
        assert_eq!(quorum.delivery_limit, 5 + DELIVERY_LIMIT_MARGIN);
        assert_eq!(quorum.max_unparseable_losses, quorum.delivery_limit + 3);
        let classic = RabbitConfig {
            queue_type: QueueType::Classic,
            ..RabbitConfig::default()
        }
        .resolved(5);
        assert_eq!(classic.max_unparseable_losses, 3);
        let set = RabbitConfig {
            delivery_limit: 2,
            max_unparseable_losses: 9,
            ..RabbitConfig::default()
        }
        .resolved(5);
        assert_eq!((set.delivery_limit, set.max_unparseable_losses), (2, 9));
    }
}

/// TLS of `amqps://` connections, beyond lapin's defaults (rustls with the
/// platform's trust store and no client certificate):
///
/// ```toml
/// [rabbitmq.tls]
/// ca_file = "/etc/busline/rabbit-ca.pem"     # a private CA, trusted besides the platform's
/// cert_file = "/etc/busline/client.pem"      # mutual TLS: PEM certificate (chain) ...
/// key_file = "/etc/busline/client.key"       # ... and its PEM (PKCS#8) key
/// # or pkcs12_file = "client.p12" with pkcs12_password = "…"
/// ```
///
/// Files are read at connect; a missing or unreadable one is a
/// [`ConfigError::Invalid`](busline_core::ConfigError::Invalid). The
/// server's host name is always verified. `pkcs12_password` shows as `***`
/// in `Debug` and serializes as `***` outside
/// [`busline_core::redact::with_secrets`].
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RabbitTls {
    /// PEM file of CA certificates to trust.
    pub ca_file: Option<std::path::PathBuf>,
    /// The same, inline: PEM text of CA certificates to trust.
    pub ca_pem: Option<String>,
    /// PEM client certificate (or chain), with `key_file`.
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM private key (PKCS#8) of `cert_file`.
    pub key_file: Option<std::path::PathBuf>,
    /// PKCS#12 (DER) client identity, instead of `cert_file` and `key_file`.
    pub pkcs12_file: Option<std::path::PathBuf>,
    /// Password of `pkcs12_file`.
    #[serde(serialize_with = "serialize_secret")]
    pub pkcs12_password: Option<String>,
}

fn serialize_secret<S: serde::Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) if busline_core::redact::secrets_exposed() => s.serialize_some(v),
        Some(_) => s.serialize_some(busline_core::redact::MASK),
        None => s.serialize_none(),
    }
}

impl std::fmt::Debug for RabbitTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitTls")
            .field("ca_file", &self.ca_file)
            .field(
                "ca_pem",
                &self.ca_pem.as_ref().map(|p| format!("{} bytes", p.len())),
            )
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("pkcs12_file", &self.pkcs12_file)
            .field(
                "pkcs12_password",
                &self.pkcs12_password.as_ref().map(|_| busline_core::redact::MASK),
            )
            .finish()
    }
}

impl RabbitTls {
    /// Whether anything is set.
    pub fn is_set(&self) -> bool {
        *self != Self::default()
    }

    /// lapin's TLS configuration, the files read; `Err` names the setting
    /// and the file, never a password.
    pub(crate) fn load(&self) -> Result<lapin::tcp::OwnedTLSConfig, String> {
        use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
        let read = |what: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| format!("[rabbitmq.tls] {what} {}: {e}", path.display()))
        };
        let mut cert_chain = String::new();
        if let Some(path) = &self.ca_file {
            let pem = read("ca_file", path)?;
            cert_chain.push_str(
                &String::from_utf8(pem)
                    .map_err(|_| format!("[rabbitmq.tls] ca_file {}: not PEM text", path.display()))?,
            );
            cert_chain.push('\n');
        }
        if let Some(pem) = &self.ca_pem {
            cert_chain.push_str(pem);
        }
        if !cert_chain.is_empty() && !cert_chain.contains("-----BEGIN CERTIFICATE-----") {
            return Err("[rabbitmq.tls] ca_file / ca_pem holds no PEM certificate".into());
        }
        let identity = match (&self.cert_file, &self.key_file, &self.pkcs12_file) {
            (None, None, None) => None,
            (Some(cert), Some(key), None) => Some(OwnedIdentity::PKCS8 {
                pem: read("cert_file", cert)?,
                key: read("key_file", key)?,
            }),
            (None, None, Some(p12)) => Some(OwnedIdentity::PKCS12 {
                der: read("pkcs12_file", p12)?,
                password: self.pkcs12_password.clone().unwrap_or_default(),
            }),
            _ => {
                return Err(
                    "[rabbitmq.tls] a client certificate is cert_file with key_file, or pkcs12_file".into(),
                )
            }
        };
        Ok(OwnedTLSConfig {
            identity,
            cert_chain: (!cert_chain.is_empty()).then_some(cert_chain),
        })
    }
}

#[cfg(test)]
mod tls_tests {
    use super::*;

    #[test]
    fn the_pkcs12_password_never_shows() {
        let c: RabbitConfig = busline_core::BusConfig::from_toml_str(
            "[rabbitmq.tls]\npkcs12_file = \"/x.p12\"\npkcs12_password = \"hunter2\"\n",
        )
        .unwrap()
        .rabbitmq
        .parse("rabbitmq")
        .unwrap();
        for shown in [format!("{c:?}"), serde_json::to_string(&c).unwrap()] {
            assert!(!shown.contains("hunter2") && shown.contains("x.p12"), "{shown}");
        }
        let full = busline_core::redact::with_secrets(|| serde_json::to_string(&c)).unwrap();
        assert!(full.contains("hunter2"));
    }

    #[test]
    fn half_a_client_identity_is_an_error() {
        let tls = RabbitTls {
            cert_file: Some("/c.pem".into()),
            ..RabbitTls::default()
        };
        assert!(tls.load().unwrap_err().contains("cert_file with key_file"));
        let tls = RabbitTls {
            ca_pem: Some("not pem".into()),
            ..RabbitTls::default()
        };
        assert!(tls.load().unwrap_err().contains("no PEM certificate"));
        assert!(RabbitTls::default().load().unwrap().cert_chain.is_none());
    }
}
