//! Topics and group start offsets: created through the admin API when
//! missing (some brokers do not auto-create), and a group's starting point
//! recorded as committed offsets before its first member runs.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use busline_core::{dead_letter_topic, StartFrom};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{Bootstrap, KafkaConfig};

/// Why a topic or group could not be set up.
#[derive(Debug)]
pub(crate) enum TopologyError {
    /// The broker refused the name.
    InvalidName(String),
    /// Anything else.
    Broker(String),
}

impl std::fmt::Display for TopologyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidName(e) => write!(f, "invalid topic name: {e}"),
            Self::Broker(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for TopologyError {}

/// Start offsets of (group, topic) partitions that could not be committed
/// (the group already had members), for the group's next member.
type StartHints = HashMap<(String, String), Vec<(i32, i64)>>;

pub(crate) struct Topology {
    admin: AdminClient<DefaultClientContext>,
    producer: FutureProducer,
    bootstrap: Bootstrap,
    config: Arc<KafkaConfig>,
    topics: Mutex<HashSet<String>>,
    groups: Mutex<HashSet<(String, String)>>,
    hints: Mutex<StartHints>,
    creating: tokio::sync::Mutex<()>,
}

impl Topology {
    pub(crate) fn new(
        admin: AdminClient<DefaultClientContext>,
        producer: FutureProducer,
        bootstrap: Bootstrap,
        config: Arc<KafkaConfig>,
    ) -> Self {
        Self {
            admin,
            producer,
            bootstrap,
            config,
            topics: Mutex::default(),
            groups: Mutex::default(),
            hints: Mutex::default(),
            creating: tokio::sync::Mutex::new(()),
        }
    }

    fn known(&self, topic: &str) -> bool {
        self.topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(topic)
    }

    /// Makes sure `topic` exists.
    pub(crate) async fn ensure_topic(&self, topic: &str) -> Result<(), TopologyError> {
        if self.known(topic) {
            return Ok(());
        }
        let _one_at_a_time = self.creating.lock().await;
        if self.known(topic) {
            return Ok(());
        }
        if topic.is_empty() || topic.len() > 249 {
            return Err(TopologyError::InvalidName(topic.into()));
        }
        let created = if self.config.admin_create_topics {
            self.create(topic).await?
        } else {
            Err("admin topic creation disabled".to_owned())
        };
        self.await_metadata(topic).await.map_err(|e| match created {
            Err(c) => TopologyError::Broker(format!("cannot create topic `{topic}`: {c}; {e}")),
            Ok(()) => TopologyError::Broker(e),
        })?;
        self.topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_owned());
        Ok(())
    }

    /// Asks the cluster to create `topic`.
    async fn create(&self, topic: &str) -> Result<Result<(), String>, TopologyError> {
        let c = &self.config;
        let mut new = NewTopic::new(topic, c.partitions, TopicReplication::Fixed(c.replication));
        for (k, v) in &c.topic_config {
            new = new.set(k, v);
        }
        let options = AdminOptions::new()
            .operation_timeout(Some(c.operation_timeout))
            .request_timeout(Some(c.operation_timeout));
        Ok(match self.admin.create_topics([&new], &options).await {
            Ok(results) => match results.into_iter().next() {
                Some(Ok(_)) | Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) | None => Ok(()),
                Some(Err((_, RDKafkaErrorCode::InvalidTopic))) => {
                    return Err(TopologyError::InvalidName(topic.into()))
                }
                Some(Err((_, code))) => Err(code.to_string()),
            },
            Err(e) => Err(e.to_string()),
        })
    }

    /// Waits until the cluster's metadata shows `topic` with partitions.
    async fn await_metadata(&self, topic: &str) -> Result<Vec<i32>, String> {
        let deadline = Instant::now() + self.config.operation_timeout;
        loop {
            let partitions = self.partitions(topic).await;
            match partitions {
                Ok(p) if !p.is_empty() => return Ok(p),
                Ok(_) if Instant::now() < deadline => {}
                Err(_) if Instant::now() < deadline => {}
                Ok(_) => return Err(format!("topic `{topic}` has no partitions")),
                Err(e) => return Err(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The partitions of `topic` as the cluster's metadata shows them.
    pub(crate) async fn partitions(&self, topic: &str) -> Result<Vec<i32>, String> {
        let producer = self.producer.clone();
        let topic = topic.to_owned();
        let timeout = self.config.operation_timeout;
        blocking(move || {
            let md = producer
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .map_err(|e| e.to_string())?;
            let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
                return Ok(Vec::new());
            };
            if let Some(e) = t.error() {
                return Err(format!("topic `{topic}`: {:?}", RDKafkaErrorCode::from(e)));
            }
            Ok(t.partitions().iter().map(|p| p.id()).collect())
        })
        .await
    }

    /// Creates `topic` and its dead-letter topic, and records where `group`
    /// starts on both unless it already has committed offsets there.
    pub(crate) async fn provision(
        &self,
        topic: &str,
        group: &str,
        start: StartFrom,
    ) -> Result<(), TopologyError> {
        let dlq = dead_letter_topic(topic, group);
        self.ensure_topic(topic).await?;
        self.ensure_topic(&dlq).await?;
        for t in [topic, dlq.as_str()] {
            self.ensure_group_start(t, group, start).await?;
        }
        Ok(())
    }

    async fn ensure_group_start(
        &self,
        topic: &str,
        group: &str,
        start: StartFrom,
    ) -> Result<(), TopologyError> {
        let id = (group.to_owned(), topic.to_owned());
        if self
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
        {
            return Ok(());
        }
        let partitions = self.await_metadata(topic).await.map_err(TopologyError::Broker)?;
        let consumer: BaseConsumer = self
            .config
            .consumer_config(&self.bootstrap, group)
            .create()
            .map_err(|e| TopologyError::Broker(format!("group client: {e}")))?;
        let timeout = self.config.operation_timeout;
        let (topic_owned, group_owned) = (topic.to_owned(), group.to_owned());
        let outcome = blocking(move || {
            let missing = uncommitted(&consumer, &topic_owned, &partitions, timeout)?;
            if missing.is_empty() {
                return Ok(None);
            }
            let starts = start_offsets(&consumer, &topic_owned, &missing, start, timeout)?;
            let mut tpl = TopicPartitionList::new();
            for (p, o) in &starts {
                tpl.add_partition_offset(&topic_owned, *p, Offset::Offset(*o))
                    .map_err(|e| e.to_string())?;
            }
            match consumer.commit(&tpl, rdkafka::consumer::CommitMode::Sync) {
                Ok(()) => Ok(None),
                Err(e) => {
                    // A group with members takes commits only from them:
                    // its next member starts at these offsets instead.
                    tracing::debug!(group = %group_owned, topic = %topic_owned, error = %e, "cannot commit start offsets; keeping them for the next member");
                    Ok(Some(starts))
                }
            }
        })
        .await
        .map_err(TopologyError::Broker)?;
        if let Some(starts) = outcome {
            self.hints
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.clone(), starts);
        }
        self.groups.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
        Ok(())
    }

    /// Where a member of `group` starts on `topic` partition `partition`
    /// that has no committed offset, if provisioning recorded it.
    pub(crate) fn hint(&self, group: &str, topic: &str, partition: i32) -> Option<i64> {
        self.hints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(group.to_owned(), topic.to_owned()))?
            .iter()
            .find(|(p, _)| *p == partition)
            .map(|(_, o)| *o)
    }
}

/// Partitions of `topic` without a committed offset for the consumer's
/// group.
pub(crate) fn uncommitted<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> Result<Vec<i32>, String> {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer
        .committed_offsets(tpl, timeout)
        .map_err(|e| format!("committed offsets of `{topic}`: {e}"))?;
    Ok(committed
        .elements_for_topic(topic)
        .iter()
        .filter(|e| !matches!(e.offset(), Offset::Offset(_)))
        .map(|e| e.partition())
        .collect())
}

/// The offsets a group starts at: each partition's end (`New`) or
/// beginning (`Earliest`).
pub(crate) fn start_offsets<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: &[i32],
    start: StartFrom,
    timeout: Duration,
) -> Result<Vec<(i32, i64)>, String> {
    partitions
        .iter()
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(topic, *p, timeout)
                .map_err(|e| format!("watermarks of `{topic}` [{p}]: {e}"))?;
            Ok((*p, if start == StartFrom::Earliest { low } else { high }))
        })
        .collect()
}

/// Runs blocking client calls off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("client task failed: {e}"))?
}
