//! Topics and group start offsets: created through the admin API when
//! missing (some brokers do not auto-create), and a new group's starting
//! point recorded as committed offsets before its first member runs; the
//! consumer group a busline group reads a topic in.

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
    /// starts on both (on the DLQ, for the group's DLQ readers,
    /// [`consumer_group_id`]) unless it already has committed offsets there.
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

    /// Records where a *new* consumer group of `group` on `topic` starts,
    /// by committing it. A group with offsets on some partitions of the
    /// topic is left alone: its members start the others at the earliest
    /// offset (see `member::context`). A new DLQ-reader group takes the
    /// offsets that readers under the main group id had committed there
    /// (before DLQ readers had a group id of their own), so an upgrade
    /// neither skips nor re-reads letters.
    async fn ensure_group_start(
        &self,
        topic: &str,
        group: &str,
        start: StartFrom,
    ) -> Result<(), TopologyError> {
        let group_id = consumer_group_id(topic, group);
        let id = (group_id.clone(), topic.to_owned());
        if self
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
        {
            return Ok(());
        }
        let partitions = self.await_metadata(topic).await.map_err(TopologyError::Broker)?;
        let client =
            |group: &str| group_client(&self.config, &self.bootstrap, group).map_err(TopologyError::Broker);
        let consumer = client(&group_id)?;
        let legacy = if group_id != group {
            Some(client(group)?)
        } else {
            None
        };
        let timeout = self.config.operation_timeout;
        let (topic_owned, group_owned) = (topic.to_owned(), group_id.clone());
        let outcome = blocking(move || {
            if !committed(&consumer, &topic_owned, &partitions, timeout)?.is_empty() {
                // Not new: its members start a partition without an
                // offset at the earliest.
                return Ok(None);
            }
            let inherited = match &legacy {
                Some(old) => committed(old, &topic_owned, &partitions, timeout)?,
                None => Vec::new(),
            };
            let starts = if inherited.is_empty() {
                start_offsets(&consumer, &topic_owned, &partitions, start, timeout)?
            } else {
                tracing::info!(group = %group_owned, topic = %topic_owned, offsets = ?inherited, "DLQ readers get a consumer group of their own; it starts where the readers under the main group id had got to");
                inherited
            };
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

    /// Forgets what this connection declared for consumer group
    /// `group_id` on `topic` (the group is gone), so provisioning it again
    /// records its start afresh.
    pub(crate) fn forget_group(&self, group_id: &str, topic: &str) {
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(group_id.to_owned(), topic.to_owned()));
        self.forget_hints(group_id, topic);
    }

    /// Forgets that `topic` exists (it was deleted).
    pub(crate) fn forget_topic(&self, topic: &str) {
        self.topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(topic);
    }

    /// The admin client, for removals.
    pub(crate) fn admin(&self) -> &AdminClient<DefaultClientContext> {
        &self.admin
    }

    /// Drops the start offsets kept for consumer group `group_id` on
    /// `topic`: a member committed them.
    pub(crate) fn forget_hints(&self, group_id: &str, topic: &str) {
        let mut hints = self.hints.lock().unwrap_or_else(|p| p.into_inner());
        if !hints.is_empty() {
            hints.remove(&(group_id.to_owned(), topic.to_owned()));
        }
    }

    /// Where a member of consumer group `group_id` starts on `topic`
    /// partition `partition` that has no committed offset, if provisioning
    /// recorded it.
    pub(crate) fn hint(&self, group_id: &str, topic: &str, partition: i32) -> Option<i64> {
        let hints = self.hints.lock().unwrap_or_else(|p| p.into_inner());
        if hints.is_empty() {
            return None;
        }
        hints
            .get(&(group_id.to_owned(), topic.to_owned()))?
            .iter()
            .find(|(p, _)| *p == partition)
            .map(|(_, o)| *o)
    }
}

/// The Kafka consumer group (`group.id`) in which busline group `group`
/// reads `topic`: `group` itself, except on the group's dead-letter topics
/// (`topic` is `<t>.<group>.dlq`, [`dead_letter_topic`]), which its DLQ
/// readers (a reader of the letters, a replay) read as `<group>.dlq`, a
/// consumer group of their own, so that they joining or leaving never
/// rebalances the group's main subscriptions. The busline group stays
/// `group` (deliveries and dead letters name it; other brokers declare DLQ
/// queues per group).
///
/// ```
/// assert_eq!(busline_kafka::consumer_group_id("orders", "billing"), "billing");
/// assert_eq!(busline_kafka::consumer_group_id("orders.billing.dlq", "billing"), "billing.dlq");
/// assert_eq!(busline_kafka::consumer_group_id("orders.shipping.dlq", "billing"), "billing");
/// ```
pub fn consumer_group_id(topic: &str, group: &str) -> String {
    let is_dlq = topic
        .strip_suffix(".dlq")
        .and_then(|t| t.strip_suffix(group))
        .and_then(|t| t.strip_suffix('.'))
        .is_some_and(|t| !t.is_empty());
    if is_dlq {
        format!("{group}.dlq")
    } else {
        group.to_owned()
    }
}

/// A consumer that never joins `group_id`, for reading and committing the
/// group's offsets (librdkafka asks for the offsets of a consumer's own
/// group).
pub(crate) fn group_client(
    config: &KafkaConfig,
    bootstrap: &Bootstrap,
    group_id: &str,
) -> Result<BaseConsumer, String> {
    config
        .consumer_config(bootstrap, group_id)
        .create()
        .map_err(|e| format!("group client of `{group_id}`: {e}"))
}

/// The committed offsets of the consumer's group on `partitions` of
/// `topic`, where it has one.
pub(crate) fn committed<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> Result<Vec<(i32, i64)>, String> {
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
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}

/// Whether the consumer's group has a committed offset on a partition of
/// `topic` other than `except`.
pub(crate) fn has_offsets_elsewhere<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    except: &[i32],
    timeout: Duration,
) -> Result<bool, String> {
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| format!("metadata of `{topic}`: {e}"))?;
    let others: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .filter(|p| !except.contains(p))
        .collect();
    if others.is_empty() {
        return Ok(false);
    }
    Ok(!committed(consumer, topic, &others, timeout)?.is_empty())
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

#[cfg(test)]
mod tests {
    use rdkafka::consumer::CommitMode;
    use rdkafka::mocking::MockCluster;

    use super::*;

    fn consumer(bootstrap: &str, group: &str) -> BaseConsumer {
        KafkaConfig::default()
            .consumer_config(&Bootstrap::servers(bootstrap), group)
            .create()
            .unwrap()
    }

    #[test]
    fn a_group_with_an_offset_on_another_partition_exists() {
        let timeout = Duration::from_secs(10);
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 3, 1).unwrap();
        let bootstrap = cluster.bootstrap_servers();
        let member = consumer(&bootstrap, "g");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("t", 0, Offset::Offset(5)).unwrap();
        member.commit(&tpl, CommitMode::Sync).unwrap();

        // A member assigned partitions 1 and 2 only sees no offset of its
        // own, yet the group exists.
        assert_eq!(
            committed(&member, "t", &[0, 1, 2], timeout).unwrap(),
            vec![(0, 5)]
        );
        assert!(has_offsets_elsewhere(&member, "t", &[1, 2], timeout).unwrap());
        assert!(!has_offsets_elsewhere(&member, "t", &[0, 1, 2], timeout).unwrap());
        let stranger = consumer(&bootstrap, "other");
        assert!(!has_offsets_elsewhere(&stranger, "t", &[1], timeout).unwrap());
    }

    #[test]
    fn dlq_readers_have_a_consumer_group_of_their_own() {
        assert_eq!(consumer_group_id("t", "g"), "g");
        assert_eq!(consumer_group_id("t.g.dlq", "g"), "g.dlq");
        assert_eq!(consumer_group_id("t.g.dlq.g.dlq", "g"), "g.dlq");
        assert_eq!(consumer_group_id(".g.dlq", "g"), "g", "no topic before the group");
        assert_eq!(consumer_group_id("t.xg.dlq", "g"), "g", "another group's DLQ");
        assert_eq!(consumer_group_id("t.g.dlq", "h"), "h");
    }
}
