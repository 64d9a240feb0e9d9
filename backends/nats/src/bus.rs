//! [`NatsBus`]: the `EventBus` of the NATS JetStream backend.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use busline_core::backend::async_trait;
use busline_core::{
    Capabilities, ConfigError, ConnectionState, EventBus, GroupInfo, InspectError, InspectErrorKind,
    PublishError, RawEvent, RetryPolicy, SubscribeError, SubscribeErrorKind, SubscribeOptions, Subscription,
    TopicInfo,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::advisory::{self, Watched};
use crate::config::{NatsConfig, Storage};
use crate::consumer::Member;
use crate::naming::consumer_name;
use crate::reconnect::StormGuard;
use crate::shared::{group_key, Shared};
use crate::topology::{Topology, TopologyError};

/// One connection to a NATS server (or cluster) with JetStream. Cloning
/// shares the connection.
///
/// A topic is a stream capturing `<token>.>`, where the token is the topic
/// escaped into one subject token ([`escape`](crate::escape)); an event goes
/// to `<token>.<event_type>`; a group is a durable pull consumer of the
/// stream.
#[derive(Clone)]
pub struct NatsBus {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("config", &self.shared.config)
            .field("closed", &self.shared.is_closed())
            .finish()
    }
}

impl NatsBus {
    /// Connects to the servers of a `nats://` or `tls://` URL (credentials
    /// in the URL, or `creds_file` in `nats`).
    pub async fn connect(config: &busline_core::BusConfig, nats: NatsConfig) -> Result<Self, ConfigError> {
        let nats = nats.resolved(config.retry.max_attempts)?;
        let endpoint = crate::config::endpoint(config, &nats).await?;
        // Well under ack_wait: the connection must be back before the
        // server's next redelivery or max-deliveries advisory.
        let guard =
            StormGuard::new((nats.ack_wait / 4).clamp(Duration::from_millis(100), Duration::from_secs(2)));
        let client = endpoint
            .options
            .reconnect_delay_callback(move |attempts| guard.delay(attempts))
            .connect(endpoint.servers)
            .await
            .map_err(|e| ConfigError::Connect {
                url: config.url.redacted(),
                source: Box::new(e),
            })?;
        Ok(Self::from_client(client, nats))
    }

    /// A bus over an already connected client. A derived `max_deliver`
    /// (`0`) is resolved for the default retry policy (an explicit one is
    /// taken as it is: [`connect`](Self::connect) checks it against the
    /// configured policy); the client's own reconnect delays stay as they
    /// are.
    pub fn from_client(client: async_nats::Client, mut nats: NatsConfig) -> Self {
        if nats.max_deliver == 0 {
            nats.max_deliver = i64::from(RetryPolicy::default().max_attempts) + crate::MAX_DELIVER_MARGIN;
        }
        let config = Arc::new(nats);
        let js = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            // Publishers wait for room rather than fail when many acks are
            // outstanding.
            .backpressure_on_inflight(true)
            .build(client.clone());
        Self {
            shared: Arc::new(Shared {
                topology: Topology::new(js.clone(), config.clone()),
                client,
                js,
                config,
                closed: CancellationToken::new(),
                settling: TaskTracker::new(),
                in_flight: Default::default(),
                attempts: Default::default(),
                wire: Default::default(),
                groups: Default::default(),
                stats: Default::default(),
            }),
        }
    }

    /// The underlying client, e.g. for plain NATS interop.
    pub fn client(&self) -> &async_nats::Client {
        &self.shared.client
    }

    /// The backend configuration in use.
    pub fn config(&self) -> &NatsConfig {
        &self.shared.config
    }

    /// What this connection has seen so far.
    pub fn stats(&self) -> NatsStats {
        let s = &self.shared.stats;
        NatsStats {
            reconnects: self
                .shared
                .client
                .statistics()
                .connects
                .load(Ordering::Relaxed)
                .saturating_sub(1),
            unparseable_moved_aside: s.unparseable.load(Ordering::Relaxed),
            max_delivered_moved_aside: s.max_delivered.load(Ordering::Relaxed),
        }
    }

    /// The streams this connection declared (for tests and tools that clean
    /// up after themselves).
    pub fn declared_streams(&self) -> Vec<String> {
        self.shared.topology.declared()
    }
}

/// Counts of one connection, from [`NatsBus::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatsStats {
    /// Times the client connected again after losing its connection (a
    /// server restart, a network fault, or a message it could not parse).
    pub reconnects: u64,
    /// Messages the client could not parse, dead-lettered as
    /// `unparseable_message` after the server stopped delivering them.
    pub unparseable_moved_aside: u64,
    /// Readable messages the server stopped delivering before the group
    /// settled them, dead-lettered as `max_attempts_exceeded`.
    pub max_delivered_moved_aside: u64,
}

fn subscribe_error(shared: &Shared, topic: &str, e: TopologyError) -> SubscribeError {
    let kind = match (&e, shared.is_closed()) {
        (_, true) => SubscribeErrorKind::Closed,
        (TopologyError::InvalidName, _) => SubscribeErrorKind::InvalidName,
        (TopologyError::Server(_), _) => SubscribeErrorKind::Topology,
    };
    SubscribeError::new(kind, topic).with_source(e)
}

#[async_trait]
impl EventBus for NatsBus {
    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
            .with_persistent(self.shared.config.storage == Storage::File)
            .with_replay_from_start(true)
            .with_dedup_by_id(true)
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
            .provision(topic, group, Default::default())
            .await
            .map(drop)
            .map_err(|e| subscribe_error(&self.shared, topic, e))
    }

    /// Members of the group on this connection end first, with an error,
    /// so that none declares the consumer again on its next pull; members
    /// on other connections do that, though, and bring the group back
    /// (empty, from their `start_from`).
    async fn remove_group(&self, topic: &str, group: &str) -> Result<(), SubscribeError> {
        if self.shared.is_closed() {
            return Err(SubscribeError::new(SubscribeErrorKind::Closed, topic));
        }
        let fail = |e| subscribe_error(&self.shared, topic, e);
        let durable = consumer_name(group).ok_or_else(|| fail(TopologyError::InvalidName))?;
        // The DLQ levels too: a member reading the group's own DLQ would
        // declare it again as well.
        for names in Topology::levels(topic, group).map_err(fail)? {
            self.shared.end_group(&group_key(&names.stream, &durable));
        }
        self.shared.topology.remove(topic, group).await.map_err(fail)?;
        tracing::debug!(topic, group, "group removed");
        Ok(())
    }

    fn connection_state(&self) -> ConnectionState {
        if self.shared.is_closed() {
            return ConnectionState::Closed;
        }
        match self.shared.client.connection_state() {
            async_nats::connection::State::Connected => ConnectionState::Connected,
            async_nats::connection::State::Disconnected => ConnectionState::Reconnecting {
                reason: "disconnected from the server".into(),
            },
            async_nats::connection::State::Pending => ConnectionState::Reconnecting {
                reason: "connecting".into(),
            },
        }
    }

    async fn list_topics(&self) -> Result<Vec<TopicInfo>, InspectError> {
        if self.shared.is_closed() {
            return Err(InspectError::topics(InspectErrorKind::Closed));
        }
        crate::inventory::topics(&self.shared.js).await
    }

    async fn list_groups(&self, topic: &str) -> Result<Vec<GroupInfo>, InspectError> {
        if self.shared.is_closed() {
            return Err(InspectError::groups(InspectErrorKind::Closed, topic));
        }
        crate::inventory::groups(&self.shared.js, topic).await
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
        let (names, consumer) = self
            .shared
            .topology
            .provision(topic, group, options.start_from)
            .await
            .map_err(|e| subscribe_error(&self.shared, topic, e))?;
        let consumer_name = consumer_name(group).unwrap_or_default();
        let key = group_key(&names.stream, &consumer_name);
        let life = advisory::watch(
            &self.shared,
            Watched {
                stream: names.stream.clone(),
                consumer: consumer_name,
                topic: topic.to_owned(),
                group: group.to_owned(),
                names: names.clone(),
            },
        );
        let member = Member::new(
            self.shared.clone(),
            consumer,
            names,
            topic,
            group,
            options.start_from,
            options.max_in_flight,
            (key, life),
        );
        Ok(Subscription::new(futures::stream::unfold(
            member,
            |mut m| async move {
                let item = m.next().await?;
                Some((item, m))
            },
        )))
    }

    async fn shutdown(&self) {
        let shared = &self.shared;
        if shared.closed.is_cancelled() {
            return;
        }
        // Stop pulling and publishing; give deliveries still out there a
        // chance to settle, and background settlements (naks of dropped
        // deliveries) time to be sent, then flush and drain.
        shared.closed.cancel();
        let limit = shared.config.shutdown_timeout;
        if !shared.in_flight.wait_idle(limit).await {
            tracing::warn!("shutdown with deliveries unsettled; the server redelivers them after ack_wait");
        }
        shared.settling.close();
        let _ = tokio::time::timeout(limit, shared.settling.wait()).await;
        let _ = tokio::time::timeout(limit, shared.client.flush()).await;
        let _ = shared.client.drain().await;
    }
}
