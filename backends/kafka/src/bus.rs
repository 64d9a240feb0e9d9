//! [`KafkaBus`]: the `EventBus` of the Kafka backend.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use busline_core::backend::async_trait;
use busline_core::{
    BusConfig, Capabilities, ConfigError, ConnectionState, EventBus, GroupInfo, InspectError,
    InspectErrorKind, PublishError, RawEvent, StartFrom, SubscribeError, SubscribeErrorKind,
    SubscribeOptions, Subscription, TopicInfo,
};
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, Producer};

use crate::config::{Bootstrap, KafkaConfig};
use crate::shared::Shared;
use crate::topology::{blocking, Topology, TopologyError};

/// One connection to a Kafka cluster: an idempotent producer shared by all
/// publishes, an admin client, and one consumer per subscription. Cloning
/// shares the connection.
///
/// A topic is a Kafka topic (created with [`KafkaConfig::partitions`] and
/// [`KafkaConfig::replication`] when missing), a group is a consumer
/// group (`group.id`; its dead-letter topics are read in a group of their
/// own, [`consumer_group_id`](crate::consumer_group_id)), the record key is
/// the envelope key, and the envelope travels as CloudEvents `ce_` headers
/// plus `content-type`.
#[derive(Clone)]
pub struct KafkaBus {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("bootstrap", &self.shared.bootstrap)
            .field("config", &self.shared.config)
            .field("closed", &self.shared.is_closed())
            .finish()
    }
}

impl KafkaBus {
    /// Connects to the brokers of a `kafka://host:port[,host:port]` or
    /// `kafkas://[user:pass@]host:port[?mechanism=SCRAM-SHA-512]` URL (TLS;
    /// SASL_SSL with credentials) and checks that they answer; see the
    /// crate documentation for how the URL picks `security.protocol`.
    pub async fn connect(config: &BusConfig, kafka: KafkaConfig) -> Result<Self, ConfigError> {
        kafka.validate()?;
        let bootstrap = Bootstrap::from_url(config)?;
        bootstrap.warn_if_plaintext_credentials();
        let connect_error = |e: String| ConfigError::Connect {
            url: config.url.redacted(),
            source: e.into(),
        };
        let producer: FutureProducer = kafka
            .producer_config(&bootstrap)
            .create()
            .map_err(|e| connect_error(format!("producer: {e}")))?;
        let admin: AdminClient<DefaultClientContext> = kafka
            .admin_config(&bootstrap)
            .create()
            .map_err(|e| connect_error(format!("admin client: {e}")))?;
        let probe = producer.clone();
        let timeout = kafka.operation_timeout;
        blocking(move || {
            probe
                .client()
                .fetch_metadata(None, timeout)
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(connect_error)?;
        let config = Arc::new(kafka);
        Ok(Self {
            shared: Arc::new(Shared {
                topology: Topology::new(admin, producer.clone(), bootstrap.clone(), config.clone()),
                producer,
                config,
                bootstrap,
                closed: Default::default(),
                attempts: crate::attempts::AttemptFloor::new(),
                members: Default::default(),
                commit_failures: Default::default(),
                revocations: Default::default(),
                unsaved: Default::default(),
            }),
        })
    }

    /// The backend configuration in use.
    pub fn config(&self) -> &KafkaConfig {
        &self.shared.config
    }

    /// Offset commits of this connection's members that failed since it
    /// connected (refused by the broker, or not answered). Each failure is
    /// logged at WARN and the offsets are sent again by the member's next
    /// commit; until one succeeds, a member that takes over the partitions
    /// redelivers what was acked meanwhile.
    pub fn commit_failures(&self) -> u64 {
        self.shared.commit_failures.load(Ordering::Relaxed)
    }

    /// Rebalances that took partitions from this connection's members
    /// while they were running (a member leaving is not counted), since it
    /// connected: each one makes the partitions' next owner read again
    /// from the committed offsets, and with the default eager assignment
    /// every member of the group is revoked when any member joins or
    /// leaves.
    pub fn revocations(&self) -> u64 {
        self.shared.revocations.load(Ordering::Relaxed)
    }

    /// The producer, e.g. for plain Kafka interop.
    pub fn producer(&self) -> &FutureProducer {
        &self.shared.producer
    }

    /// Creates `topic` if it is missing, with the configured partitions
    /// and replication.
    pub async fn ensure_topic(&self, topic: &str) -> Result<(), SubscribeError> {
        self.shared
            .topology
            .ensure_topic(topic)
            .await
            .map_err(|e| subscribe_error(&self.shared, topic, e))
    }
}

fn subscribe_error(shared: &Shared, topic: &str, e: TopologyError) -> SubscribeError {
    let kind = match (&e, shared.is_closed()) {
        (_, true) => SubscribeErrorKind::Closed,
        (TopologyError::InvalidName(_), _) => SubscribeErrorKind::InvalidName,
        (TopologyError::Broker(_), _) => SubscribeErrorKind::Topology,
    };
    SubscribeError::new(kind, topic).with_source(e)
}

#[async_trait]
impl EventBus for KafkaBus {
    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
            .with_order_per_key(true)
            .with_persistent(true)
            .with_replay_from_start(true)
            // Kafka counts no deliveries: a released record keeps its
            // number through the state, and across members through the
            // connection's attempt memory.
            .with_release_keeps_attempt(true)
    }

    async fn publish(&self, topic: &str, event: RawEvent) -> Result<(), PublishError> {
        crate::publisher::publish(&self.shared, topic, std::slice::from_ref(&event)).await
    }

    async fn publish_batch(&self, topic: &str, events: Vec<RawEvent>) -> Result<(), PublishError> {
        crate::publisher::publish(&self.shared, topic, &events).await
    }

    async fn provision(&self, topic: &str, group: &str) -> Result<(), SubscribeError> {
        if self.shared.is_closed() {
            return Err(SubscribeError::new(SubscribeErrorKind::Closed, topic));
        }
        self.shared
            .topology
            .provision(topic, group, StartFrom::New)
            .await
            .map_err(|e| subscribe_error(&self.shared, topic, e))
    }

    async fn remove_group(&self, topic: &str, group: &str) -> Result<(), SubscribeError> {
        if self.shared.is_closed() {
            return Err(SubscribeError::new(SubscribeErrorKind::Closed, topic));
        }
        if topic.is_empty() || group.is_empty() {
            return Err(SubscribeError::new(SubscribeErrorKind::InvalidName, topic));
        }
        crate::removal::remove_group(&self.shared, topic, group)
            .await
            .map_err(|e| {
                let kind = match e {
                    crate::removal::RemovalError::Unsupported => SubscribeErrorKind::Unsupported,
                    crate::removal::RemovalError::Broker(_) => SubscribeErrorKind::Topology,
                };
                SubscribeError::new(kind, topic).with_source(e)
            })?;
        tracing::debug!(topic, group, "group removed");
        Ok(())
    }

    fn connection_state(&self) -> ConnectionState {
        // librdkafka reconnects inside and tells its brokers' states only
        // through its statistics.
        if self.shared.is_closed() {
            ConnectionState::Closed
        } else {
            ConnectionState::Unknown
        }
    }

    async fn list_topics(&self) -> Result<Vec<TopicInfo>, InspectError> {
        if self.shared.is_closed() {
            return Err(InspectError::topics(InspectErrorKind::Closed));
        }
        let shared = &self.shared;
        crate::inventory::topics(&shared.producer, shared.config.clone(), shared.bootstrap.clone()).await
    }

    async fn list_groups(&self, topic: &str) -> Result<Vec<GroupInfo>, InspectError> {
        if self.shared.is_closed() {
            return Err(InspectError::groups(InspectErrorKind::Closed, topic));
        }
        let shared = &self.shared;
        crate::inventory::groups(
            &shared.producer,
            shared.config.clone(),
            shared.bootstrap.clone(),
            topic,
        )
        .await
    }

    async fn subscribe(
        &self,
        topic: &str,
        group: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, SubscribeError> {
        if self.shared.is_closed() {
            return Err(SubscribeError::new(SubscribeErrorKind::Closed, topic));
        }
        self.shared
            .topology
            .provision(topic, group, options.start_from)
            .await
            .map_err(|e| subscribe_error(&self.shared, topic, e))?;
        crate::member::join(
            self.shared.clone(),
            topic,
            group,
            options.start_from,
            options.max_in_flight,
            options.order_per_key,
        )
        .await
    }

    async fn shutdown(&self) {
        let shared = &self.shared;
        if shared.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        // Members stop fetching, let deliveries in flight settle, commit and
        // leave their groups; then what the producer holds is delivered.
        let members: Vec<_> = shared
            .members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for m in &members {
            m.leave();
        }
        let limit = shared.config.drain_timeout + Duration::from_secs(10);
        for m in &members {
            if tokio::time::timeout(limit, m.finished()).await.is_err() {
                tracing::warn!(topic = %m.topic, group = %m.group, "member did not close in time");
            }
        }
        let producer = shared.producer.clone();
        let timeout = shared.config.operation_timeout;
        if let Err(e) = blocking(move || producer.flush(timeout).map_err(|e| e.to_string())).await {
            tracing::warn!(error = %e, "producer flush at shutdown failed; unconfirmed publishes failed");
        }
    }
}
