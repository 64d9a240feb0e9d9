//! `RabbitBus`: the `EventBus` of the RabbitMQ backend.

use std::sync::{Arc, Mutex, Weak};

use busline_core::backend::async_trait;
use busline_core::{
    Capabilities, ConnectionState, EventBus, GroupInfo, InspectError, InspectErrorKind, PublishError,
    PublishErrorKind, RawEvent, SubscribeError, SubscribeErrorKind, SubscribeOptions, Subscription,
    TopicInfo,
};
use lapin::types::ShortString;
use tokio::sync::watch;

use crate::acker::GroupContext;
use crate::config::RabbitConfig;
use crate::connection::{Link, LinkError, LinkOptions};
use crate::consumer::Member;
use crate::headers;
use crate::losses::LossPolicy;
use crate::management::Management;
use crate::publisher::{Failure, Outgoing, Publisher};
use crate::retry::RetryTuning;
use crate::stats::{Counters, RabbitStats};
use crate::topology::{self, Topology, TopologyError};

/// A connection to RabbitMQ: one AMQP connection for publishing (a pool of
/// confirm channels), one for declaring topology, and one per subscription
/// for its consumer, each reconnected with backoff when lost. A
/// subscription has a connection of its own because lapin drops a whole
/// connection on a frame it cannot parse: a message a foreign producer
/// wrote with a header name that is not UTF-8 then costs only the consumer
/// it was sent to. Cloning shares it.
#[derive(Clone)]
pub struct RabbitBus {
    inner: Arc<Inner>,
}

struct Inner {
    config: RabbitConfig,
    /// With its password: member connections are made from it.
    url: String,
    publish_link: Arc<Link>,
    /// Declarations (`provision`, redeclaring after a returned copy); no
    /// consumer runs on it, so no message can break it.
    consume_link: Arc<Link>,
    /// The connections of the subscriptions, closed on shutdown.
    members: Mutex<Vec<Weak<Link>>>,
    counters: Arc<Counters>,
    publisher: Arc<Publisher>,
    topology: Arc<Topology>,
    closed: watch::Sender<bool>,
    connection_name: String,
}

impl RabbitBus {
    /// The management API of the first seed (or `management_url`).
    fn management(&self) -> Result<Management, (InspectErrorKind, String)> {
        if *self.inner.closed.borrow() {
            return Err((InspectErrorKind::Closed, "the bus is shut down".into()));
        }
        let seeds = crate::seeds::parse(&self.inner.url).map_err(|e| (InspectErrorKind::Other, e))?;
        let seed = seeds
            .first()
            .ok_or((InspectErrorKind::Other, "no broker in the URL".to_owned()))?;
        let config = &self.inner.config;
        Management::new(config.management_url.as_deref(), seed, config.operation_timeout)
            .map_err(|e| (InspectErrorKind::Unsupported, e))
    }
}

impl std::fmt::Debug for RabbitBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitBus")
            .field("connection_name", &self.inner.connection_name)
            .field("config", &self.inner.config)
            .field("closed", &*self.inner.closed.borrow())
            .finish()
    }
}

impl RabbitBus {
    /// Connects to the broker at `url` (`amqp://` or `amqps://`, credentials
    /// and vhost in the URL; several seed brokers of a cluster separated by
    /// commas: `amqp://u:p@h1:5672,h2:5672/%2f`), naming its connections
    /// `connection_name`. Fails if no broker can be reached now; later
    /// losses are reconnected, to any of the seeds. A derived `delivery_limit` (`0`) is resolved for the
    /// default retry policy ([`connect`](crate::connect) resolves it for the
    /// configured one).
    pub async fn connect(url: &str, connection_name: &str, config: RabbitConfig) -> Result<Self, String> {
        let config = config.resolved(busline_core::RetryPolicy::default().max_attempts);
        let redacted = busline_core::BrokerUrl::new(url).redacted();
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("amqp" | "amqps")) {
            return Err(format!("`{redacted}` is not an amqp:// or amqps:// URL"));
        }
        let tls = config.tls.load()?;
        if config.tls.is_set() && scheme.as_deref() != Some("amqps") {
            return Err(format!(
                "`{redacted}`: [rabbitmq.tls] is set but the URL is not amqps://"
            ));
        }
        let (closed, _) = watch::channel(false);
        let options = |role: &str| LinkOptions {
            name: format!("{connection_name} ({role})"),
            heartbeat: config.heartbeat,
            min_backoff: config.reconnect_min_backoff,
            max_backoff: config.reconnect_max_backoff,
            connect_timeout: config.connect_timeout,
            tls: tls.clone(),
        };
        let link = |role: &str| {
            Link::new(url, options(role), closed.clone())
                .map(Arc::new)
                .map_err(|e| format!("`{redacted}`: {e}"))
        };
        let publish_link = link("publish")?;
        let consume_link = link("topology")?;
        // Fail now on a wrong host or credentials rather than at the first
        // publish.
        publish_link.connection().await.map_err(|e| e.to_string())?;
        let publisher = Arc::new(Publisher::new(
            publish_link.clone(),
            config.publisher_channels,
            config.confirm_timeout,
            config.operation_timeout,
            closed.subscribe(),
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                topology: Arc::new(
                    Topology::new(config.queue_type).with_delivery_limit(config.delivery_limit),
                ),
                config,
                url: url.to_owned(),
                publish_link,
                consume_link,
                members: Mutex::default(),
                counters: Arc::default(),
                publisher,
                closed,
                connection_name: connection_name.to_owned(),
            }),
        })
    }

    /// The name its connections show in the management UI, followed by
    /// ` (publish)`, ` (topology)` or, one per subscription, ` (consume)`.
    pub fn connection_name(&self) -> &str {
        &self.inner.connection_name
    }

    /// The backend's tuning.
    pub fn config(&self) -> &RabbitConfig {
        &self.inner.config
    }

    /// What its consumers have seen so far: connection losses, losses to
    /// messages lapin cannot parse, messages seen parked.
    pub fn stats(&self) -> RabbitStats {
        self.inner.counters.snapshot()
    }

    fn is_closed(&self) -> bool {
        *self.inner.closed.borrow()
    }

    /// A connection of its own for one subscription's consumer.
    fn member_link(&self) -> Result<Arc<Link>, String> {
        let c = &self.inner.config;
        let options = LinkOptions {
            name: format!("{} (consume)", self.inner.connection_name),
            heartbeat: c.heartbeat,
            min_backoff: c.reconnect_min_backoff,
            max_backoff: c.reconnect_max_backoff,
            connect_timeout: c.connect_timeout,
            tls: c.tls.load()?,
        };
        let inner = &self.inner;
        let link = Arc::new(Link::new(&inner.url, options, inner.closed.clone())?);
        let mut members = inner.members.lock().unwrap_or_else(|p| p.into_inner());
        members.retain(|m| m.strong_count() > 0);
        members.push(Arc::downgrade(&link));
        Ok(link)
    }

    fn publish_error(&self, topic: &str, failure: Failure) -> PublishError {
        let kind = match &failure {
            Failure::Closed => PublishErrorKind::Closed,
            _ if self.is_closed() => PublishErrorKind::Closed,
            Failure::Connection(_) => PublishErrorKind::Connection,
            Failure::Rejected => PublishErrorKind::Rejected,
            Failure::Unroutable(_) => PublishErrorKind::Unroutable,
            Failure::Timeout => PublishErrorKind::Timeout,
            Failure::NotFound(_) => {
                self.inner.topology.forget_exchange(topic);
                PublishErrorKind::Connection
            }
        };
        PublishError::new(kind, topic).with_source(failure)
    }

    async fn ensure_exchange(&self, topic: &str) -> Result<ShortString, PublishError> {
        if self.is_closed() {
            return Err(PublishError::new(PublishErrorKind::Closed, topic));
        }
        let exchange = topology::exchange_name(topic)
            .map_err(|e| PublishError::new(PublishErrorKind::InvalidEnvelope, topic).with_source(e))?;
        let declared = tokio::time::timeout(
            self.inner.config.operation_timeout,
            self.inner
                .topology
                .ensure_exchange(&self.inner.publish_link, topic),
        )
        .await
        .map_err(|_| {
            let kind = if self.is_closed() {
                PublishErrorKind::Closed
            } else {
                PublishErrorKind::Timeout
            };
            PublishError::new(kind, topic)
        })?;
        declared.map_err(|e| {
            let kind = match &e {
                TopologyError::Link(LinkError::Closed) => PublishErrorKind::Closed,
                TopologyError::InvalidName(_) => PublishErrorKind::InvalidEnvelope,
                _ => PublishErrorKind::Connection,
            };
            PublishError::new(kind, topic).with_source(e)
        })?;
        Ok(exchange)
    }

    fn outgoing<'a>(
        &self,
        topic: &str,
        exchange: &ShortString,
        event: &'a RawEvent,
    ) -> Result<Outgoing<'a>, PublishError> {
        let invalid = |e: Box<dyn std::error::Error + Send + Sync>| {
            PublishError::new(PublishErrorKind::InvalidEnvelope, topic).with_source(e)
        };
        let properties = headers::encode(event).map_err(|e| invalid(e.into()))?;
        let routing_key = ShortString::try_new(event.event_type.as_str())
            .map_err(|_| invalid("the event type is longer than 255 bytes".into()))?;
        Ok(Outgoing {
            exchange: exchange.clone(),
            routing_key,
            properties,
            body: &event.data.bytes,
            mandatory: self.inner.config.mandatory,
        })
    }

    /// A topology call under the configured `operation_timeout`; running
    /// past it reads as a connection failure.
    async fn within_operation_timeout(
        &self,
        topic: &str,
        what: &str,
        call: impl std::future::Future<Output = Result<(), TopologyError>>,
    ) -> Result<(), SubscribeError> {
        tokio::time::timeout(self.inner.config.operation_timeout, call)
            .await
            .map_err(|_| {
                Self::subscribe_error(
                    topic,
                    TopologyError::Link(LinkError::Connect(format!("{what} timed out"))),
                )
            })?
            .map_err(|e| Self::subscribe_error(topic, e))
    }

    fn subscribe_error(topic: &str, e: TopologyError) -> SubscribeError {
        let kind = match &e {
            TopologyError::InvalidName(_) => SubscribeErrorKind::InvalidName,
            TopologyError::Link(LinkError::Closed) => SubscribeErrorKind::Closed,
            TopologyError::Link(LinkError::Connect(_)) => SubscribeErrorKind::Connection,
            TopologyError::Broker(_) | TopologyError::Mismatch { .. } => SubscribeErrorKind::Topology,
        };
        SubscribeError::new(kind, topic).with_source(e)
    }
}

#[async_trait]
impl EventBus for RabbitBus {
    fn capabilities(&self) -> Capabilities {
        // Competing consumers with prefetch > 1 and requeues reorder events,
        // and the broker does not deduplicate by message id. A release is a
        // copy with the same attempt number, not a requeue.
        Capabilities::none()
            .with_persistent(true)
            .with_release_keeps_attempt(true)
    }

    async fn publish(&self, topic: &str, event: RawEvent) -> Result<(), PublishError> {
        let exchange = self.ensure_exchange(topic).await?;
        let message = self.outgoing(topic, &exchange, &event)?;
        self.inner
            .publisher
            .publish(message)
            .await
            .map_err(|f| self.publish_error(topic, f))
    }

    async fn publish_batch(&self, topic: &str, events: Vec<RawEvent>) -> Result<(), PublishError> {
        if events.is_empty() {
            return Ok(());
        }
        let exchange = self.ensure_exchange(topic).await?;
        let messages = events
            .iter()
            .map(|e| self.outgoing(topic, &exchange, e))
            .collect::<Result<Vec<_>, _>>()?;
        let publisher = &self.inner.publisher;
        let pending = publisher
            .send_all(messages)
            .await
            .map_err(|f| self.publish_error(topic, f))?;
        // Every confirmation is awaited, so none is left pending when the
        // first failure is reported.
        publisher
            .confirm_all(pending)
            .await
            .map_err(|f| self.publish_error(topic, f))
    }

    async fn provision(&self, topic: &str, group: &str) -> Result<(), SubscribeError> {
        if self.is_closed() {
            return Err(SubscribeError::new(SubscribeErrorKind::Closed, topic));
        }
        let declared = self
            .inner
            .topology
            .provision(&self.inner.consume_link, topic, group);
        self.within_operation_timeout(topic, "declaring the topology", declared)
            .await
    }

    async fn remove_group(&self, topic: &str, group: &str) -> Result<(), SubscribeError> {
        if self.is_closed() {
            return Err(SubscribeError::new(SubscribeErrorKind::Closed, topic));
        }
        let retry = RetryTuning::new(&self.inner.config);
        let removed = self
            .inner
            .topology
            .remove(&self.inner.consume_link, topic, group, &retry);
        self.within_operation_timeout(topic, "removing the group", removed)
            .await
    }

    fn connection_state(&self) -> ConnectionState {
        // The first connection of the bus that is not connected speaks for
        // it: publishing, declaring, or a subscription's own.
        let members: Vec<Arc<Link>> = {
            let members = self.inner.members.lock().unwrap_or_else(|p| p.into_inner());
            members.iter().filter_map(Weak::upgrade).collect()
        };
        let state = [&self.inner.publish_link, &self.inner.consume_link]
            .into_iter()
            .chain(members.iter())
            .map(|link| link.connection_state())
            .find(|state| *state != ConnectionState::Connected)
            .unwrap_or(ConnectionState::Connected);
        state
    }

    async fn list_topics(&self) -> Result<Vec<TopicInfo>, InspectError> {
        self.management()
            .map_err(|(kind, e)| InspectError::topics(kind).with_source(e))?
            .topics()
            .await
    }

    async fn list_groups(&self, topic: &str) -> Result<Vec<GroupInfo>, InspectError> {
        self.management()
            .map_err(|(kind, e)| InspectError::groups(kind, topic).with_source(e))?
            .groups(topic)
            .await
    }

    async fn subscribe(
        &self,
        topic: &str,
        group: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, SubscribeError> {
        self.provision(topic, group).await?;
        let names = topology::queue_name(topic, group)
            .and_then(|q| Ok((q, topology::retry_queue_name(topic, group)?)))
            .map_err(|e| Self::subscribe_error(topic, e))?;
        let parking = match self.inner.config.queue_type {
            crate::QueueType::Quorum => Some(
                topology::unparseable_queue_name(topic, group)
                    .map_err(|e| Self::subscribe_error(topic, e))?,
            ),
            crate::QueueType::Classic => None,
        };
        let link = self
            .member_link()
            .map_err(|e| SubscribeError::new(SubscribeErrorKind::Connection, topic).with_source(e))?;
        let config = &self.inner.config;
        let member = Member {
            link,
            topology: self.inner.topology.clone(),
            group_name: group.into(),
            group: Arc::new(GroupContext {
                topic: topic.into(),
                group: group.into(),
                queue: names.0,
                retry_queue: names.1,
                retry: RetryTuning::new(&self.inner.config),
                publisher: self.inner.publisher.clone(),
                topology: self.inner.topology.clone(),
                link: self.inner.consume_link.clone(),
                operation_timeout: self.inner.config.operation_timeout,
                closed: self.inner.closed.subscribe(),
            }),
            prefetch: config.prefetch_for(options.max_in_flight),
            losses: LossPolicy {
                max_unparseable: config.max_unparseable_losses,
                min_backoff: config.reconnect_min_backoff,
                max_backoff: config.reconnect_max_backoff,
            },
            parking,
            counters: self.inner.counters.clone(),
        };
        member.start().await.map_err(|e| {
            let kind = if self.is_closed() {
                SubscribeErrorKind::Closed
            } else {
                SubscribeErrorKind::Connection
            };
            SubscribeError::new(kind, topic).with_source(e)
        })
    }

    async fn shutdown(&self) {
        if self.inner.closed.send_replace(true) {
            return;
        }
        // Publishes already sent get their confirmations; new ones fail.
        // Everything is bounded by one deadline: a broker that does not
        // answer (a frozen network) must not hold shutdown.
        let limit = self.inner.config.shutdown_timeout;
        let deadline = tokio::time::Instant::now() + limit;
        let members: Vec<Arc<Link>> = {
            let members = self.inner.members.lock().unwrap_or_else(|p| p.into_inner());
            members.iter().filter_map(Weak::upgrade).collect()
        };
        let closing = async {
            self.inner.publisher.close(limit / 2).await;
            futures::join!(
                self.inner.publish_link.close(),
                self.inner.consume_link.close(),
                futures::future::join_all(members.iter().map(|m| m.close())),
            );
        };
        if tokio::time::timeout_at(deadline, closing).await.is_err() {
            tracing::warn!(connection = %self.inner.connection_name, ?limit, "shutdown deadline passed; connections abandoned");
        }
    }
}
