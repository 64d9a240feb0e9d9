//! The contract between the core and a broker backend.

use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::Stream;

use crate::{ConsumeError, Delivery, PublishError, RawEvent, SubscribeError};

/// A broker connection as the core sees it: raw envelopes in, deliveries
/// out. Backends implement it; applications use the typed [`Bus`](crate::Bus)
/// handle on top.
///
/// Every method is at-least-once: `publish` returns `Ok` only once the broker
/// has the event, and a [`Delivery`] that is dropped without a decision is
/// delivered again.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// What this backend can promise; the conformance suite skips only what
    /// a capability rules out.
    fn capabilities(&self) -> Capabilities;

    /// Publishes one event to `topic` and waits for the broker's
    /// confirmation.
    async fn publish(&self, topic: &str, event: RawEvent) -> Result<(), PublishError>;

    /// Publishes several events with their confirmations outstanding at once,
    /// and returns when all are confirmed. On error some events of the batch
    /// may have been stored; republishing the whole batch is safe where the
    /// backend deduplicates by event id, and at-least-once otherwise.
    async fn publish_batch(&self, topic: &str, events: Vec<RawEvent>) -> Result<(), PublishError> {
        for event in events {
            self.publish(topic, event).await?;
        }
        Ok(())
    }

    /// Creates the group `group` on `topic` (and its dead-letter topic) so
    /// that it keeps every event published from now on, even before a
    /// consumer subscribes. Idempotent.
    async fn provision(&self, topic: &str, group: &str) -> Result<(), SubscribeError>;

    /// Deletes what [`provision`](Self::provision) created for `group` on
    /// `topic` (the group's queue, consumer or committed offsets, its retry
    /// resources and its dead-letter topic), with the events and dead
    /// letters waiting in them. The topic and its other groups are left as
    /// they are. For throwaway groups (an operator's tail, a health check)
    /// and decommissioned ones. Idempotent: a group that does not exist is
    /// removed already. Members still subscribed may see their stream fail.
    ///
    /// The default reports [`SubscribeErrorKind::Unsupported`](crate::SubscribeErrorKind::Unsupported).
    async fn remove_group(&self, topic: &str, group: &str) -> Result<(), SubscribeError> {
        let _ = group;
        Err(SubscribeError::new(crate::SubscribeErrorKind::Unsupported, topic))
    }

    /// The topics on the broker that busline can read, with what the broker
    /// tells about each (see [`TopicInfo`](crate::TopicInfo)), sorted by name.
    ///
    /// The default reports [`InspectErrorKind::Unsupported`](crate::InspectErrorKind::Unsupported).
    async fn list_topics(&self) -> Result<Vec<crate::TopicInfo>, crate::InspectError> {
        Err(crate::InspectError::topics(crate::InspectErrorKind::Unsupported))
    }

    /// The groups of `topic` with their lag (see
    /// [`GroupInfo`](crate::GroupInfo)), sorted by name: every group the
    /// broker keeps a position or a queue for, connected or not.
    ///
    /// The default reports [`InspectErrorKind::Unsupported`](crate::InspectErrorKind::Unsupported).
    async fn list_groups(&self, topic: &str) -> Result<Vec<crate::GroupInfo>, crate::InspectError> {
        Err(crate::InspectError::groups(
            crate::InspectErrorKind::Unsupported,
            topic,
        ))
    }

    /// Whether this connection reaches its broker now, as far as the
    /// client knows: for readiness probes ([`RouterHealth`](crate::RouterHealth)
    /// counts it). Cheap and non-blocking; it waits for nothing.
    ///
    /// The default is [`ConnectionState::Unknown`].
    fn connection_state(&self) -> ConnectionState {
        ConnectionState::Unknown
    }

    /// Joins `group` on `topic` as one competing member. Provisions the group
    /// first.
    async fn subscribe(
        &self,
        topic: &str,
        group: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, SubscribeError>;

    /// Stops this connection: new publishes and subscriptions fail with
    /// `Closed`; publishes already confirmed stay confirmed. Idempotent.
    async fn shutdown(&self);
}

/// Whether a bus reaches its broker, as its client knows it now.
///
/// ```
/// use busline_core::ConnectionState;
/// assert!(ConnectionState::Unknown.is_usable());
/// let down = ConnectionState::Reconnecting { reason: "connection reset".into() };
/// assert!(!down.is_usable());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Connected; for a client that connects on first use, also before it
    /// has (nothing has failed).
    Connected,
    /// Not connected now, and trying again; `reason` is the last error or
    /// what was seen, for an operator.
    Reconnecting {
        /// Why, as far as known.
        reason: String,
    },
    /// Shut down.
    Closed,
    /// The backend cannot tell (the Kafka client reconnects inside and says
    /// so only through its statistics).
    Unknown,
}

impl ConnectionState {
    /// Connected, or not known to be otherwise: what a readiness probe
    /// accepts.
    pub fn is_usable(&self) -> bool {
        matches!(self, Self::Connected | Self::Unknown)
    }
}

impl std::fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connected => f.write_str("connected"),
            Self::Reconnecting { reason } => write!(f, "reconnecting ({reason})"),
            Self::Closed => f.write_str("closed"),
            Self::Unknown => f.write_str("unknown"),
        }
    }
}

/// An [`EventBus`] wrapped around another one, changing some of its calls
/// (tracing, metrics, publish guards, signatures, test doubles).
///
/// Every type that implements it is an `EventBus`: `publish`,
/// `publish_batch` and `subscribe` go through the hooks below, which
/// forward to [`inner`](Self::inner) unless overridden; `capabilities`,
/// `provision` and `shutdown` `remove_group` are the inner bus's. So a decorator states
/// only what it changes.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// use busline_core::{EventBus, PublishError, RawEvent};
/// use busline_core::backend::{async_trait, BusDecorator};
///
/// /// Counts publishes.
/// struct Counted {
///     inner: Arc<dyn EventBus>,
///     published: AtomicU64,
/// }
///
/// #[async_trait]
/// impl BusDecorator for Counted {
///     fn inner(&self) -> &Arc<dyn EventBus> {
///         &self.inner
///     }
///
///     async fn on_publish(&self, topic: &str, event: RawEvent) -> Result<(), PublishError> {
///         self.published.fetch_add(1, Ordering::Relaxed);
///         self.inner.publish(topic, event).await
///     }
/// }
/// ```
#[async_trait]
pub trait BusDecorator: Send + Sync + 'static {
    /// The decorated bus.
    fn inner(&self) -> &std::sync::Arc<dyn EventBus>;

    /// [`EventBus::publish`] of the decorator.
    async fn on_publish(&self, topic: &str, event: RawEvent) -> Result<(), PublishError> {
        self.inner().publish(topic, event).await
    }

    /// [`EventBus::publish_batch`] of the decorator.
    async fn on_publish_batch(&self, topic: &str, events: Vec<RawEvent>) -> Result<(), PublishError> {
        self.inner().publish_batch(topic, events).await
    }

    /// [`EventBus::subscribe`] of the decorator.
    async fn on_subscribe(
        &self,
        topic: &str,
        group: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, SubscribeError> {
        self.inner().subscribe(topic, group, options).await
    }
}

#[async_trait]
impl<D: BusDecorator> EventBus for D {
    fn capabilities(&self) -> Capabilities {
        self.inner().capabilities()
    }

    async fn publish(&self, topic: &str, event: RawEvent) -> Result<(), PublishError> {
        self.on_publish(topic, event).await
    }

    async fn publish_batch(&self, topic: &str, events: Vec<RawEvent>) -> Result<(), PublishError> {
        self.on_publish_batch(topic, events).await
    }

    async fn provision(&self, topic: &str, group: &str) -> Result<(), SubscribeError> {
        self.inner().provision(topic, group).await
    }

    async fn remove_group(&self, topic: &str, group: &str) -> Result<(), SubscribeError> {
        self.inner().remove_group(topic, group).await
    }

    async fn list_topics(&self) -> Result<Vec<crate::TopicInfo>, crate::InspectError> {
        self.inner().list_topics().await
    }

    fn connection_state(&self) -> ConnectionState {
        self.inner().connection_state()
    }

    async fn list_groups(&self, topic: &str) -> Result<Vec<crate::GroupInfo>, crate::InspectError> {
        self.inner().list_groups(topic).await
    }

    async fn subscribe(
        &self,
        topic: &str,
        group: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, SubscribeError> {
        self.on_subscribe(topic, group, options).await
    }

    async fn shutdown(&self) {
        self.inner().shutdown().await
    }
}

/// What a backend can promise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Capabilities {
    /// Events with the same key reach a group's handlers one at a time, in
    /// publish order, even with many in flight.
    pub order_per_key: bool,
    /// Events survive a broker restart.
    pub persistent: bool,
    /// A new group may start from the earliest retained event.
    pub replay_from_start: bool,
    /// The broker drops a second publish of the same event id.
    pub dedup_by_id: bool,
    /// [`Acknowledge::release`](crate::backend::Acknowledge::release) returns a
    /// delivery without counting an attempt (shutdown's abandoned events
    /// keep their attempt number).
    pub release_keeps_attempt: bool,
}

impl Capabilities {
    /// No promises beyond the contract's at-least-once.
    pub const fn none() -> Self {
        Self {
            order_per_key: false,
            persistent: false,
            replay_from_start: false,
            dedup_by_id: false,
            release_keeps_attempt: false,
        }
    }

    /// Sets `order_per_key`.
    pub const fn with_order_per_key(mut self, yes: bool) -> Self {
        self.order_per_key = yes;
        self
    }

    /// Sets `persistent`.
    pub const fn with_persistent(mut self, yes: bool) -> Self {
        self.persistent = yes;
        self
    }

    /// Sets `replay_from_start`.
    pub const fn with_replay_from_start(mut self, yes: bool) -> Self {
        self.replay_from_start = yes;
        self
    }

    /// Sets `dedup_by_id`.
    pub const fn with_dedup_by_id(mut self, yes: bool) -> Self {
        self.dedup_by_id = yes;
        self
    }

    /// Sets `release_keeps_attempt`.
    pub const fn with_release_keeps_attempt(mut self, yes: bool) -> Self {
        self.release_keeps_attempt = yes;
        self
    }
}

/// Where a new group starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// Events published after the group was created (the default).
    #[default]
    New,
    /// The earliest event the broker retains, where it retains
    /// ([`Capabilities::replay_from_start`]).
    Earliest,
}

/// How a member consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// Deliveries handed out and not yet settled, at most (the broker's
    /// prefetch / max-ack-pending). A slow consumer applies backpressure at
    /// this bound.
    pub max_in_flight: usize,
    /// Where a group that does not exist yet starts.
    pub start_from: StartFrom,
    /// Hand out one event of a key at a time, in order (the default, where
    /// the backend keeps order per key). `false` lets a reader hold many
    /// events of one key at once, as an operator's look at a DLQ does
    /// ([`Bus::browse_dead_letters`](crate::Bus::browse_dead_letters)):
    /// the Kafka backend then hands out a key's next record without waiting
    /// for the one before. The memory bus keeps order per key regardless;
    /// RabbitMQ and NATS keep none to begin with.
    pub order_per_key: bool,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            max_in_flight: 64,
            start_from: StartFrom::New,
            order_per_key: true,
        }
    }
}

impl SubscribeOptions {
    /// Sets `max_in_flight` (at least 1).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// Sets `start_from`.
    pub fn start_from(mut self, start: StartFrom) -> Self {
        self.start_from = start;
        self
    }

    /// Whether a key's events are handed out one at a time, in order
    /// (see [`order_per_key`](Self::order_per_key)).
    pub fn order_per_key(mut self, yes: bool) -> Self {
        self.order_per_key = yes;
        self
    }
}

/// The deliveries of one group member. Dropping it leaves the group;
/// deliveries already handed out stay valid and must still be settled (or
/// dropped, which redelivers them).
pub struct Subscription {
    stream: BoxStream<'static, Result<Delivery, ConsumeError>>,
}

impl Subscription {
    /// Wraps a backend's delivery stream.
    pub fn new(stream: impl Stream<Item = Result<Delivery, ConsumeError>> + Send + 'static) -> Self {
        Self {
            stream: Box::pin(stream),
        }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Subscription")
    }
}

impl Stream for Subscription {
    type Item = Result<Delivery, ConsumeError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.as_mut().poll_next(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.stream.size_hint()
    }
}
