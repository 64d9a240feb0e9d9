//! The `[rabbitmq]` section of `BusConfig`: tuning of this backend.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The kind of queue a group gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Classic durable queues (the default): fast, on one node.
    #[default]
    Classic,
    /// Quorum queues: replicated across a cluster (Raft). Retry queues use
    /// at-least-once dead-lettering, so delayed retries survive a node loss.
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
/// ```
///
/// TLS is chosen by the URL: `amqps://` connects with rustls and the
/// platform's trust store. Changing `queue_type` for a group that already
/// exists makes the broker refuse the declaration (`PRECONDITION_FAILED`):
/// the queue must be deleted or a new group used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RabbitConfig {
    /// Upper bound of every consumer's prefetch. By default the prefetch is
    /// the subscription's `max_in_flight`; a set value caps it.
    pub prefetch: Option<u16>,
    /// Kind of the group, retry and dead-letter queues declared.
    pub queue_type: QueueType,
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
}

impl Default for RabbitConfig {
    fn default() -> Self {
        Self {
            prefetch: None,
            queue_type: QueueType::Classic,
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
        }
    }
}

impl RabbitConfig {
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
}
