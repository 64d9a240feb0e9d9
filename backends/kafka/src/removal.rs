//! `remove_group` on Kafka. A busline group of a topic is a consumer group
//! (`group` on the topic, `<group>.dlq` on its dead-letter topics,
//! [`consumer_group_id`]) and its dead-letter topics. Kafka deletes a
//! consumer group whole, with its offsets on every topic, so a group that
//! also reads other topics is refused rather than reset there too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use busline_core::dead_letter_topic;
use rdkafka::admin::AdminOptions;
use rdkafka::consumer::Consumer;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::Producer;
use rdkafka::TopicPartitionList;

use crate::shared::Shared;
use crate::topology::{blocking, consumer_group_id, group_client};

/// Dead-letter levels below a topic that are removed with the group: its
/// DLQ, and the DLQs a member reading its own DLQ leaves
/// (`<topic>.<group>.dlq.<group>.dlq`, ...). Deeper chains are not made by
/// anything busline does.
const DEAD_LETTER_LEVELS: usize = 4;

/// Why a group could not be removed; the kinds the bus reports.
#[derive(Debug)]
pub(crate) enum RemovalError {
    /// The broker cannot delete groups (`admin_delete_groups = false`).
    Unsupported,
    /// The broker refused or failed, or the group cannot be removed alone.
    Broker(String),
}

impl std::fmt::Display for RemovalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unsupported => f.write_str(
                "`[kafka] admin_delete_groups` is false: the brokers do not take DeleteGroups and DeleteTopics",
            ),
            Self::Broker(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for RemovalError {}

pub(crate) async fn remove_group(shared: &Arc<Shared>, topic: &str, group: &str) -> Result<(), RemovalError> {
    if !shared.config.admin_delete_groups {
        return Err(RemovalError::Unsupported);
    }
    let levels: Vec<String> =
        std::iter::successors(Some(topic.to_owned()), |t| Some(dead_letter_topic(t, group)))
            .take(1 + DEAD_LETTER_LEVELS)
            .collect();
    let mut group_ids: Vec<String> = levels.iter().map(|t| consumer_group_id(t, group)).collect();
    group_ids.sort();
    group_ids.dedup();

    end_own_members(shared, &levels, group).await;
    refuse_if_offsets_elsewhere(shared, &levels, &group_ids).await?;
    delete_groups(shared, &group_ids).await?;
    delete_topics(shared, &levels[1..]).await?;
    for t in &levels {
        shared.topology.forget_group(&consumer_group_id(t, group), t);
    }
    for t in &levels[1..] {
        shared.topology.forget_topic(t);
    }
    Ok(())
}

/// Ends this process's members of the group and waits (within the
/// operation timeout) until they have left: Kafka deletes only a group
/// without members.
async fn end_own_members(shared: &Arc<Shared>, levels: &[String], group: &str) {
    let own: Vec<_> = shared
        .members
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|m| &*m.group == group && levels.iter().any(|t| *t == *m.topic))
        .cloned()
        .collect();
    for m in &own {
        m.leave();
    }
    let deadline = Instant::now() + shared.config.operation_timeout;
    while own.iter().any(|m| !m.is_done()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Refuses when one of the consumer groups has committed offsets on a
/// topic outside `levels`: deleting it would reset it there too.
async fn refuse_if_offsets_elsewhere(
    shared: &Arc<Shared>,
    levels: &[String],
    group_ids: &[String],
) -> Result<(), RemovalError> {
    let producer = shared.producer.clone();
    let config = shared.config.clone();
    let bootstrap = shared.bootstrap.clone();
    let levels = levels.to_vec();
    let group_ids = group_ids.to_vec();
    let elsewhere = blocking(move || {
        let timeout = config.operation_timeout;
        let md = producer
            .client()
            .fetch_metadata(None, timeout)
            .map_err(|e| format!("metadata: {e}"))?;
        let mut others = TopicPartitionList::new();
        for t in md.topics() {
            if t.name().starts_with("__") || levels.iter().any(|l| l == t.name()) {
                continue;
            }
            for p in t.partitions() {
                others.add_partition(t.name(), p.id());
            }
        }
        if others.count() == 0 {
            return Ok(Vec::new());
        }
        let mut found = Vec::new();
        for id in &group_ids {
            let reader = group_client(&config, &bootstrap, id)?;
            let committed = reader
                .committed_offsets(others.clone(), timeout)
                .map_err(|e| format!("committed offsets of `{id}`: {e}"))?;
            let mut topics: Vec<String> = committed
                .elements()
                .iter()
                .filter(|e| matches!(e.offset(), rdkafka::Offset::Offset(_)))
                .map(|e| e.topic().to_owned())
                .collect();
            topics.sort();
            topics.dedup();
            if !topics.is_empty() {
                found.push(format!("`{id}` on {}", topics.join(", ")));
            }
        }
        Ok(found)
    })
    .await
    .map_err(RemovalError::Broker)?;
    if elsewhere.is_empty() {
        return Ok(());
    }
    Err(RemovalError::Broker(format!(
        "consumer group {} has committed offsets: Kafka deletes a consumer group whole, so removing it \
         would reset it there too; remove_group leaves it",
        elsewhere.join("; ")
    )))
}

fn options(shared: &Shared) -> AdminOptions {
    let timeout = shared.config.operation_timeout;
    AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout))
}

async fn delete_groups(shared: &Arc<Shared>, group_ids: &[String]) -> Result<(), RemovalError> {
    let ids: Vec<&str> = group_ids.iter().map(String::as_str).collect();
    let results = shared
        .topology
        .admin()
        .delete_groups(&ids, &options(shared))
        .await
        .map_err(|e| RemovalError::Broker(format!("DeleteGroups: {e}")))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::GroupIdNotFound)) => {}
            Err((id, RDKafkaErrorCode::NonEmptyGroup)) => {
                return Err(RemovalError::Broker(format!(
                    "consumer group `{id}` still has members (in another process); stop them first"
                )))
            }
            Err((id, code)) => {
                return Err(RemovalError::Broker(format!(
                    "deleting consumer group `{id}`: {code}"
                )))
            }
        }
    }
    Ok(())
}

async fn delete_topics(shared: &Arc<Shared>, topics: &[String]) -> Result<(), RemovalError> {
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let results = shared
        .topology
        .admin()
        .delete_topics(&names, &options(shared))
        .await
        .map_err(|e| RemovalError::Broker(format!("DeleteTopics: {e}")))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((name, code)) => {
                return Err(RemovalError::Broker(format!("deleting topic `{name}`: {code}")))
            }
        }
    }
    Ok(())
}
