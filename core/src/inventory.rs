//! What a broker holds: its topics and, per topic, its groups with how far
//! behind each is. For operators (`busline topics`, `busline groups`) and
//! dashboards; a backend answers with what its broker tells
//! ([`EventBus::list_topics`](crate::EventBus::list_topics),
//! [`EventBus::list_groups`](crate::EventBus::list_groups)), and a figure the
//! broker does not give is `None`, never a guess.

use std::fmt;

use crate::BoxError;

/// One topic as the broker reports it.
///
/// ```
/// let topic = busline_core::TopicInfo::new("orders").with_messages(Some(12));
/// assert_eq!(topic.messages, Some(12));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopicInfo {
    /// The busline topic name (dead-letter topics are topics too:
    /// `<topic>.<group>.dlq`).
    pub topic: String,
    /// Events the broker keeps for the topic: the sum of a Kafka topic's
    /// partitions (high watermark − low watermark), a JetStream stream's
    /// message count. `None` where the broker keeps nothing per topic
    /// (a RabbitMQ exchange routes; its queues hold the events).
    pub messages: Option<u64>,
    /// The topic's partitions (Kafka); `None` where there are none.
    pub partitions: Option<u32>,
}

impl TopicInfo {
    /// A topic with nothing known about it yet.
    pub fn new(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            messages: None,
            partitions: None,
        }
    }

    /// Sets [`messages`](Self::messages).
    pub fn with_messages(mut self, messages: Option<u64>) -> Self {
        self.messages = messages;
        self
    }

    /// Sets [`partitions`](Self::partitions).
    pub fn with_partitions(mut self, partitions: Option<u32>) -> Self {
        self.partitions = partitions;
        self
    }
}

/// One group of a topic as the broker reports it.
///
/// ```
/// let group = busline_core::GroupInfo::new("billing").with_lag(Some(3));
/// assert_eq!(group.lag, Some(3));
/// assert_eq!(group.in_flight, None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupInfo {
    /// The busline group name.
    pub group: String,
    /// Events the group has yet to be handed: Kafka consumer lag (high
    /// watermark − committed offset, summed over the partitions it has
    /// offsets on), JetStream `num_pending`, the messages ready in a
    /// RabbitMQ queue.
    pub lag: Option<u64>,
    /// Events handed to a member and not yet settled: JetStream
    /// `num_ack_pending`, a RabbitMQ queue's unacknowledged messages (the
    /// queue depth AMQP reports counts only ready ones, so `None` there),
    /// the memory bus's in-flight entries. Kafka does not track it.
    pub in_flight: Option<u64>,
    /// Members connected now: a RabbitMQ queue's consumers, a Kafka group's
    /// members, the pull requests waiting on a JetStream consumer.
    pub members: Option<u32>,
}

impl GroupInfo {
    /// A group with nothing known about it yet.
    pub fn new(group: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            lag: None,
            in_flight: None,
            members: None,
        }
    }

    /// Sets [`lag`](Self::lag).
    pub fn with_lag(mut self, lag: Option<u64>) -> Self {
        self.lag = lag;
        self
    }

    /// Sets [`in_flight`](Self::in_flight).
    pub fn with_in_flight(mut self, in_flight: Option<u64>) -> Self {
        self.in_flight = in_flight;
        self
    }

    /// Sets [`members`](Self::members).
    pub fn with_members(mut self, members: Option<u32>) -> Self {
        self.members = members;
        self
    }
}

/// Why listing topics or groups failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InspectErrorKind {
    /// The broker (or the way busline reaches it) cannot list this; the
    /// error's source says what would.
    Unsupported,
    /// The topic does not exist.
    NotFound,
    /// The broker did not answer in time.
    Timeout,
    /// The connection to the broker failed.
    Connection,
    /// The bus was shut down.
    Closed,
    /// Anything else the broker or its client reported.
    Other,
}

impl fmt::Display for InspectErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unsupported => "not supported by this backend",
            Self::NotFound => "no such topic",
            Self::Timeout => "no answer in time",
            Self::Connection => "connection to the broker failed",
            Self::Closed => "the bus is shut down",
            Self::Other => "broker error",
        })
    }
}

/// Listing topics or groups failed.
///
/// ```
/// use busline_core::{InspectError, InspectErrorKind};
/// let e = InspectError::new(InspectErrorKind::NotFound, "the groups of `orders`");
/// assert_eq!(e.to_string(), "listing the groups of `orders` failed: no such topic");
/// ```
#[derive(Debug, thiserror::Error)]
#[error("listing {what} failed: {kind}")]
pub struct InspectError {
    kind: InspectErrorKind,
    what: String,
    #[source]
    source: Option<BoxError>,
}

impl InspectError {
    /// An error of `kind` while listing `what` ("the topics", "the groups
    /// of `orders`").
    pub fn new(kind: InspectErrorKind, what: impl Into<String>) -> Self {
        Self {
            kind,
            what: what.into(),
            source: None,
        }
    }

    /// The error of listing the topics.
    pub fn topics(kind: InspectErrorKind) -> Self {
        Self::new(kind, "the topics")
    }

    /// The error of listing the groups of `topic`.
    pub fn groups(kind: InspectErrorKind, topic: &str) -> Self {
        Self::new(kind, format!("the groups of `{topic}`"))
    }

    /// Attaches the underlying error, or what to do instead.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> InspectErrorKind {
        self.kind
    }
}
