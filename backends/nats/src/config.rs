//! The `[nats]` section of `BusConfig` and the connection it asks for.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::{ConnectOptions, ServerAddr};
use busline_core::{BusConfig, ConfigError};
use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};

/// Tuning of the NATS JetStream backend (the `[nats]` section of
/// `BusConfig`). Every field has a default; durations are written as
/// `"30s"`, `"7days"`.
///
/// ```
/// let config = busline_core::BusConfig::from_toml_str(r#"
///     url = "nats://127.0.0.1:4222"
///     [nats]
///     storage = "memory"
///     ack_wait = "10s"
///     max_age = "1h"
/// "#).unwrap();
/// let nats: busline_nats::NatsConfig = config.nats.parse("nats").unwrap();
/// assert_eq!(nats.ack_wait, std::time::Duration::from_secs(10));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Where streams keep events: `file` (the default; events survive a
    /// server restart) or `memory`.
    pub storage: Storage,
    /// Stream replicas in a cluster (1 on a single server).
    pub replicas: usize,
    /// When a stream forgets events: `limits` (by age, the default: groups
    /// created later may still replay them) or `interest` (once every group
    /// has acknowledged them).
    pub retention: Retention,
    /// How long a stream keeps an event; `0s` keeps events until deleted by
    /// other limits. Default 7 days, like Kafka's default retention.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Window in which JetStream drops a second publish with the same
    /// `Nats-Msg-Id` (the event id). Default 2 minutes.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// How long the server waits for a delivery's ack before it redelivers.
    /// Long handlers are kept alive with progress acks every third of it.
    /// Default 30 s.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Deliveries of one event before the server gives up on it (the
    /// consumer's `max_deliver`). `0`, the default, derives it from the
    /// bus's retry policy: `max_attempts` plus [`MAX_DELIVER_MARGIN`], so the
    /// router dead-letters first, and a delivery lost in transit still
    /// leaves it a chance. When the server gives up, busline dead-letters
    /// the message from the server's advisory; this is how a message the
    /// client cannot parse leaves the consumer. `-1` is unlimited: such a
    /// message then comes back every `ack_wait` for as long as it is kept.
    pub max_deliver: i64,
    /// Deliveries a whole group may hold unacknowledged (the consumer's
    /// `max_ack_pending`). Each member is further bounded by its own
    /// `max_in_flight`. Default 1024.
    pub max_ack_pending: i64,
    /// Most messages asked for by one pull request; a member never asks for
    /// more than its `max_in_flight`. Default 256.
    pub fetch_batch: usize,
    /// How long one pull request waits on the server. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub fetch_expires: Duration,
    /// Idle heartbeat of pull requests, by which a consumer notices a dead
    /// connection and pulls again. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Longest wait for a publish acknowledgement or a JetStream API reply.
    /// Default 10 s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Acknowledge with a round trip to the server (`double ack`), so `ack`
    /// returns only once the server recorded it. Default off: a lost ack
    /// only means a redelivery.
    pub double_ack: bool,
    /// On shutdown, how long to wait for pending settlements before the
    /// connection is drained. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// A NATS credentials file (JWT and NKey seed).
    pub creds_file: Option<PathBuf>,
    /// TLS settings (a `tls://` URL requires TLS by itself).
    pub tls: TlsConfig,
    /// Connection name shown by the server's monitoring.
    pub connection_name: Option<String>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            storage: Storage::File,
            replicas: 1,
            retention: Retention::Limits,
            max_age: Duration::from_secs(7 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            ack_wait: Duration::from_secs(30),
            max_deliver: 0,
            max_ack_pending: 1024,
            fetch_batch: 256,
            fetch_expires: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            double_ack: false,
            shutdown_timeout: Duration::from_secs(10),
            creds_file: None,
            tls: TlsConfig::default(),
            connection_name: None,
        }
    }
}

/// Deliveries the derived `max_deliver` allows beyond the retry policy's
/// `max_attempts`.
pub const MAX_DELIVER_MARGIN: i64 = 2;

impl NatsConfig {
    /// This configuration with a derived `max_deliver` (`0`) resolved for a
    /// retry policy of `max_attempts`, and an explicit one checked against
    /// it: at or below `max_attempts` the server stops redelivering an
    /// event before the router would dead-letter it.
    pub(crate) fn resolved(mut self, max_attempts: u32) -> Result<Self, ConfigError> {
        let max_attempts = i64::from(max_attempts.max(1));
        match self.max_deliver {
            0 => self.max_deliver = max_attempts + MAX_DELIVER_MARGIN,
            -1 => tracing::warn!(
                "[nats] max_deliver = -1: a message the client cannot parse comes back every ack_wait for as long as the stream keeps it"
            ),
            n if n < -1 => {
                return Err(ConfigError::Invalid(format!(
                    "[nats] max_deliver = {n}: use a positive count, 0 (derived from the retry policy) or -1 (unlimited)"
                )))
            }
            n if n <= max_attempts => {
                return Err(ConfigError::Invalid(format!(
                    "[nats] max_deliver = {n} is not above the retry policy's max_attempts = {max_attempts}: \
                     the server would stop redelivering before the router dead-letters; \
                     use at least {} (a delivery lost in transit counts too), or 0 to derive it",
                    max_attempts + 1
                )))
            }
            _ => {}
        }
        Ok(self)
    }
}

/// Stream storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    /// On disk: survives a server restart.
    File,
    /// In memory: lost on a server restart.
    Memory,
}

/// Stream retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Retention {
    /// Kept until `max_age` (or other limits).
    Limits,
    /// Kept until every group has acknowledged them.
    Interest,
}

/// TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Refuse to connect without TLS.
    pub required: bool,
    /// PEM file of root certificates to trust besides the system's.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

/// The servers of a `nats://` or `tls://` URL and the options to connect with.
pub(crate) struct Endpoint {
    pub(crate) servers: Vec<ServerAddr>,
    pub(crate) options: ConnectOptions,
}

/// Reads the URL (`nats://[user:pass@]host:port[,host2:port]`, `tls://…`,
/// or a token as user name) and the section into connect options.
pub(crate) async fn endpoint(config: &BusConfig, nats: &NatsConfig) -> Result<Endpoint, ConfigError> {
    let invalid = |reason: String| ConfigError::InvalidUrl {
        url: config.url.redacted(),
        reason,
    };
    let url = config.url.expose_secret();
    let scheme = config.url.scheme();
    if scheme != "nats" && scheme != "tls" {
        return Err(invalid("expected a nats:// or tls:// URL".into()));
    }
    let rest = &url[scheme.len() + 3..];
    let mut servers = Vec::new();
    let mut auth: Option<(String, Option<String>)> = None;
    // Items and their credentials are cut where the redactor cuts them
    // (busline_core::redact), so what is sent as the password is exactly
    // what `redacted()` hides: the userinfo ends at an item's last `@`.
    for (_, item) in busline_core::redact::seed_items(&scheme, rest) {
        let (userinfo, after) = busline_core::redact::split_userinfo(item.trim());
        if let Some(userinfo) = userinfo {
            let (user, pass) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
            auth.get_or_insert((decode(user), pass.map(decode)));
        }
        let hosts = after.split(['/', '?', '#']).next().unwrap_or_default();
        for host in hosts.split(',').map(str::trim) {
            if host.is_empty() {
                if hosts.trim().is_empty() || hosts.contains(",,") {
                    return Err(invalid("a server address is empty".into()));
                }
                continue;
            }
            let addr: ServerAddr = format!("{scheme}://{host}")
                .parse()
                .map_err(|e: std::io::Error| invalid(e.to_string()))?;
            servers.push(addr);
        }
    }
    if servers.is_empty() {
        return Err(invalid("no server address".into()));
    }

    // The first connect must succeed (a wrong URL is reported at once);
    // after that the client reconnects for as long as it lives.
    let mut options = ConnectOptions::new()
        .connection_timeout(nats.request_timeout)
        .request_timeout(Some(nats.request_timeout))
        .max_reconnects(None);
    match auth {
        Some((user, Some(pass))) => options = options.user_and_password(user, pass),
        Some((token, None)) => options = options.token(token),
        None => {}
    }
    if let Some(path) = &nats.creds_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| ConfigError::Invalid(format!("[nats] creds_file {}: {e}", path.display())))?;
    }
    if scheme == "tls" || nats.tls.required {
        options = options.require_tls(true);
    }
    if let Some(ca) = &nats.tls.ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    match (&nats.tls.cert_file, &nats.tls.key_file) {
        (Some(cert), Some(key)) => options = options.add_client_certificate(cert.clone(), key.clone()),
        (None, None) => {}
        _ => {
            return Err(ConfigError::Invalid(
                "[nats] tls: cert_file and key_file go together".into(),
            ))
        }
    }
    if let Some(name) = &nats.connection_name {
        options = options.name(name);
    }
    Ok(Endpoint { servers, options })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn urls_with_several_servers_and_credentials() {
        let config = BusConfig::from_url("nats://app:s%40cret@a:4222,b:4223/");
        let e = endpoint(&config, &NatsConfig::default()).await.unwrap();
        let hosts: Vec<String> = e
            .servers
            .iter()
            .map(|s| format!("{}:{}", s.host(), s.port()))
            .collect();
        assert_eq!(hosts, ["a:4222", "b:4223"]);
        assert!(!format!("{:?}", e.servers).contains("cret"));
    }

    #[tokio::test]
    async fn passwords_end_at_the_last_at_sign_of_their_item() {
        let config = BusConfig::from_url("nats://app:pa/ss@w:rd@a:4222, nats://other:x@b:4223");
        let e = endpoint(&config, &NatsConfig::default()).await.unwrap();
        let hosts: Vec<String> = e
            .servers
            .iter()
            .map(|s| format!("{}:{}", s.host(), s.port()))
            .collect();
        assert_eq!(hosts, ["a:4222", "b:4223"]);
        assert_eq!(
            config.url.redacted(),
            "nats://app:***@a:4222, nats://other:***@b:4223"
        );
        let config = BusConfig::from_url("nats://app:pw@a:4222,,b:1");
        let err = endpoint(&config, &NatsConfig::default())
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("empty") && !err.contains("pw@"), "{err}");
    }

    #[tokio::test]
    async fn other_schemes_are_refused() {
        let config = BusConfig::from_url("amqp://a:5672");
        assert!(endpoint(&config, &NatsConfig::default()).await.is_err());
        let config = BusConfig::from_url("nats://");
        assert!(endpoint(&config, &NatsConfig::default()).await.is_err());
    }

    #[test]
    fn max_deliver_is_derived_or_must_exceed_max_attempts() {
        let with = |max_deliver| NatsConfig {
            max_deliver,
            ..NatsConfig::default()
        };
        assert_eq!(with(0).resolved(5).unwrap().max_deliver, 5 + MAX_DELIVER_MARGIN);
        assert_eq!(with(6).resolved(5).unwrap().max_deliver, 6);
        assert_eq!(with(-1).resolved(5).unwrap().max_deliver, -1);
        for bad in [1, 4, 5, -2] {
            let err = with(bad).resolved(5).unwrap_err().to_string();
            assert!(err.contains("max_deliver"), "{bad}: {err}");
        }
    }

    #[test]
    fn section_parses_with_defaults() {
        let c = BusConfig::from_toml_str("[nats]\nstorage = \"memory\"\nmax_age = \"1h\"\n").unwrap();
        let n: NatsConfig = c.nats.parse("nats").unwrap();
        assert_eq!(n.storage, Storage::Memory);
        assert_eq!(n.max_age, Duration::from_secs(3600));
        assert_eq!(n.ack_wait, NatsConfig::default().ack_wait);
        assert!(BusConfig::from_toml_str("[nats]\nstorag = 1\n")
            .unwrap()
            .nats
            .parse::<NatsConfig>("nats")
            .is_err());
    }
}
