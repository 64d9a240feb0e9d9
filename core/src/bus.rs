//! The handle applications hold: typed publishing over any backend.

use std::sync::Arc;

use busline_codecs::CodecRegistry;
use smol_str::SmolStr;

use crate::{
    BusConfig, Capabilities, ConfigError, ConsumerConfig, ContentMode, DeadLetterPolicy, DomainEvent, Event,
    EventBus, EventId, Payload, PublishError, PublishErrorKind, RawEvent, RetryPolicy, RouterObserver,
    SubscribeError, SubscribeOptions, Subscription,
};

/// What a [`Bus`] stamps on events and hands routers as defaults.
#[derive(Debug, Clone)]
pub struct BusSettings {
    /// `source` of every event published without one.
    pub service: SmolStr,
    /// Encodes published payloads; decodes received ones by content type.
    pub codecs: CodecRegistry,
    /// Default retry policy of routers.
    pub retry: RetryPolicy,
    /// Default dead-letter policy of routers.
    pub dead_letter: DeadLetterPolicy,
    /// Default consumer settings of routers.
    pub consumer: ConsumerConfig,
    /// How published events travel: binary (default) or structured mode.
    pub content_mode: ContentMode,
}

impl Default for BusSettings {
    fn default() -> Self {
        Self {
            service: "busline".into(),
            codecs: CodecRegistry::json(),
            retry: RetryPolicy::default(),
            dead_letter: DeadLetterPolicy::default(),
            consumer: ConsumerConfig::default(),
            content_mode: ContentMode::Binary,
        }
    }
}

impl BusSettings {
    /// The settings a configuration asks for.
    pub fn from_config(config: &BusConfig) -> Result<Self, ConfigError> {
        let codecs = CodecRegistry::by_name(&config.codec)
            .ok_or_else(|| ConfigError::UnknownCodec(config.codec.clone()))?;
        Ok(Self {
            service: config.service.as_str().into(),
            codecs,
            retry: config.retry.clone(),
            dead_letter: config.dead_letter.clone(),
            consumer: config.consumer.clone(),
            content_mode: config.content_mode,
        })
    }

    /// Sets how published events travel.
    pub fn with_content_mode(mut self, mode: ContentMode) -> Self {
        self.content_mode = mode;
        self
    }

    /// Sets the service name.
    pub fn with_service(mut self, service: impl Into<SmolStr>) -> Self {
        self.service = service.into();
        self
    }

    /// Sets the codecs.
    pub fn with_codecs(mut self, codecs: CodecRegistry) -> Self {
        self.codecs = codecs;
        self
    }

    /// Sets the default retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the default consumer settings.
    pub fn with_consumer(mut self, consumer: ConsumerConfig) -> Self {
        self.consumer = consumer;
        self
    }
}

/// A connected bus: cheap to clone, shared by publishers and routers.
///
/// ```
/// # async fn demo(bus: busline_core::Bus) -> Result<(), busline_core::PublishError> {
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// # struct OrderCreated { order_id: String }
/// # impl busline_core::Event for OrderCreated { const TYPE: &'static str = "order.created"; }
/// let id = bus.publish("orders", OrderCreated { order_id: "o-1".into() }).await?;
/// # let _ = id; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Bus {
    transport: Arc<dyn EventBus>,
    settings: Arc<BusSettings>,
    /// Set by [`Bus::shutdown`], so a router can tell a subscription that
    /// ended because the application closed the bus from one that died.
    closed: Arc<std::sync::atomic::AtomicBool>,
    /// Observers of every router built on this bus.
    observers: Arc<[Arc<dyn RouterObserver>]>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("service", &self.settings.service)
            .field("capabilities", &self.transport.capabilities())
            .finish()
    }
}

impl Bus {
    /// A bus over a backend.
    pub fn new(transport: impl EventBus, settings: BusSettings) -> Self {
        Self::from_arc(Arc::new(transport), settings)
    }

    /// A bus over a shared backend.
    pub fn from_arc(transport: Arc<dyn EventBus>, settings: BusSettings) -> Self {
        Self {
            transport,
            settings: Arc::new(settings),
            closed: Arc::default(),
            observers: Arc::new([]),
        }
    }

    /// The same bus over `transport`, a decorator of this bus's backend
    /// (tracing, metrics, publish guards): settings, observers and the
    /// shutdown flag are kept.
    pub fn with_transport(&self, transport: Arc<dyn EventBus>) -> Self {
        Self {
            transport,
            settings: self.settings.clone(),
            closed: self.closed.clone(),
            observers: self.observers.clone(),
        }
    }

    /// This bus, with `observer` told about the decisions of every router
    /// built on it afterwards (before the routers' own observers). The
    /// test harness records what handlers handled this way.
    pub fn observed_by(mut self, observer: impl RouterObserver) -> Self {
        let mut observers = self.observers.to_vec();
        observers.push(Arc::new(observer));
        self.observers = observers.into();
        self
    }

    /// The observers of every router built on this bus.
    pub(crate) fn observers(&self) -> &[Arc<dyn RouterObserver>] {
        &self.observers
    }

    /// The backend.
    pub fn transport(&self) -> &Arc<dyn EventBus> {
        &self.transport
    }

    /// The settings.
    pub fn settings(&self) -> &BusSettings {
        &self.settings
    }

    /// The codecs.
    pub fn codecs(&self) -> &CodecRegistry {
        &self.settings.codecs
    }

    /// What the backend promises.
    pub fn capabilities(&self) -> Capabilities {
        self.transport.capabilities()
    }

    /// Publishes `data` as a new event and returns its id once the broker has
    /// it.
    pub async fn publish<E: Event>(&self, topic: &str, data: E) -> Result<EventId, PublishError> {
        self.publish_event(topic, DomainEvent::new(data)).await
    }

    /// Publishes a prepared envelope (key, correlation, extensions set by
    /// the caller) and returns its id.
    pub async fn publish_event<E: Event>(
        &self,
        topic: &str,
        event: DomainEvent<E>,
    ) -> Result<EventId, PublishError> {
        let raw = self.encode(topic, event)?;
        let id = raw.id.clone();
        self.transport.publish(topic, raw).await?;
        Ok(id)
    }

    /// Publishes several envelopes with their confirmations outstanding at
    /// once; returns when every one is confirmed.
    pub async fn publish_batch<E: Event>(
        &self,
        topic: &str,
        events: Vec<DomainEvent<E>>,
    ) -> Result<(), PublishError> {
        let raws = events
            .into_iter()
            .map(|e| self.encode(topic, e))
            .collect::<Result<Vec<_>, _>>()?;
        self.transport.publish_batch(topic, raws).await
    }

    /// Publishes an already encoded event as it is (source filled in if
    /// empty).
    pub async fn publish_raw(&self, topic: &str, mut event: RawEvent) -> Result<(), PublishError> {
        if event.source.is_empty() {
            event.source.clone_from(&self.settings.service);
        }
        let event = self.in_content_mode(topic, event)?;
        self.transport.publish(topic, event).await
    }

    /// Validates `event` and, in structured mode, wraps it in its
    /// structured form: the same attributes (backends route and key by
    /// them), the whole event as the payload.
    fn in_content_mode(&self, topic: &str, event: RawEvent) -> Result<RawEvent, PublishError> {
        let invalid = |e| PublishError::new(PublishErrorKind::InvalidEnvelope, topic).with_source(e);
        crate::wire::validate(&event).map_err(invalid)?;
        match self.settings.content_mode {
            ContentMode::Binary => Ok(event),
            ContentMode::Structured if crate::wire::is_structured(&event.data.content_type) => Ok(event),
            ContentMode::Structured => {
                let body = crate::wire::encode_structured(&event).map_err(invalid)?;
                Ok(event.map_data(|_| Payload {
                    content_type: SmolStr::new_static(crate::wire::STRUCTURED_JSON),
                    bytes: body,
                }))
            }
        }
    }

    /// Encodes a typed envelope into the raw form a backend publishes.
    pub fn encode<E: Event>(&self, topic: &str, event: DomainEvent<E>) -> Result<RawEvent, PublishError> {
        let codecs = &self.settings.codecs;
        let mut raw = event.try_map_data(|data| {
            codecs
                .encode(&data)
                .map(|bytes| Payload {
                    content_type: codecs.content_type().into(),
                    bytes: bytes.into(),
                })
                .map_err(|e| PublishError::new(PublishErrorKind::Encode, topic).with_source(e))
        })?;
        if raw.source.is_empty() {
            raw.source.clone_from(&self.settings.service);
        }
        self.in_content_mode(topic, raw)
    }

    /// Creates `group` on `topic` (and its DLQ) ahead of its first consumer.
    pub async fn provision(&self, topic: &str, group: &str) -> Result<(), SubscribeError> {
        self.transport.provision(topic, group).await
    }

    /// Deletes `group` on `topic` with its DLQ and the events waiting in
    /// them ([`EventBus::remove_group`]); other groups keep theirs.
    pub async fn remove_group(&self, topic: &str, group: &str) -> Result<(), SubscribeError> {
        self.transport.remove_group(topic, group).await
    }

    /// Whether the bus reaches its broker now ([`EventBus::connection_state`]).
    pub fn connection_state(&self) -> crate::ConnectionState {
        self.transport.connection_state()
    }

    /// The broker's topics with their sizes ([`EventBus::list_topics`]).
    pub async fn list_topics(&self) -> Result<Vec<crate::TopicInfo>, crate::InspectError> {
        self.transport.list_topics().await
    }

    /// The groups of `topic` with their lag ([`EventBus::list_groups`]).
    pub async fn list_groups(&self, topic: &str) -> Result<Vec<crate::GroupInfo>, crate::InspectError> {
        self.transport.list_groups(topic).await
    }

    /// Joins `group` on `topic` and returns its raw deliveries. Most
    /// applications use a [`Router`](crate::Router) instead.
    pub async fn subscribe(
        &self,
        topic: &str,
        group: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, SubscribeError> {
        self.transport.subscribe(topic, group, options).await
    }

    /// Shuts the backend connection down.
    pub async fn shutdown(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::Release);
        self.transport.shutdown().await
    }

    /// Whether [`shutdown`](Bus::shutdown) was called on this bus or a clone
    /// of it.
    pub fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }
}
