//! Topics and groups as the cluster reports them: a busline topic is a
//! Kafka topic of the same name; a group of it is a consumer group with
//! committed offsets on it, under the id [`consumer_group_id`] gives.
//!
//! Sizes come from ListOffsets (the watermarks). tansu 0.6 answers the
//! latest offset with its newest batch's base offset + 1, so on tansu a
//! topic whose last batch held several records shows fewer messages and
//! less lag than it has; Kafka answers the high watermark.

use std::sync::Arc;
use std::time::Duration;

use busline_core::{GroupInfo, InspectError, InspectErrorKind, TopicInfo};
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::{FutureProducer, Producer};

use crate::config::{Bootstrap, KafkaConfig};
use crate::topology::{blocking, committed, consumer_group_id};

/// Topics the cluster keeps for itself (`__consumer_offsets`, ...).
fn is_internal(topic: &str) -> bool {
    topic.starts_with("__")
}

pub(crate) async fn topics(
    producer: &FutureProducer,
    timeout: Duration,
) -> Result<Vec<TopicInfo>, InspectError> {
    let producer = producer.clone();
    blocking(move || {
        let client = producer.client();
        let md = client.fetch_metadata(None, timeout).map_err(|e| e.to_string())?;
        let mut topics = Vec::new();
        for t in md.topics() {
            if is_internal(t.name()) || t.error().is_some() {
                continue;
            }
            let mut messages = 0u64;
            for p in t.partitions() {
                let (low, high) = client
                    .fetch_watermarks(t.name(), p.id(), timeout)
                    .map_err(|e| format!("watermarks of `{}` [{}]: {e}", t.name(), p.id()))?;
                messages += u64::try_from(high - low).unwrap_or(0);
            }
            topics.push(
                TopicInfo::new(t.name())
                    .with_messages(Some(messages))
                    .with_partitions(Some(t.partitions().len() as u32)),
            );
        }
        topics.sort_by(|a, b| a.topic.cmp(&b.topic));
        Ok(topics)
    })
    .await
    .map_err(|e| InspectError::topics(kind_of(&e)).with_source(e))
}

/// The busline group whose consumer group on `topic` is `group_id`, if
/// busline would use that id there.
fn busline_group(topic: &str, group_id: &str) -> Option<String> {
    if let Some(group) = group_id.strip_suffix(".dlq") {
        if !group.is_empty() && consumer_group_id(topic, group) == group_id {
            return Some(group.to_owned());
        }
    }
    (consumer_group_id(topic, group_id) == group_id).then(|| group_id.to_owned())
}

pub(crate) async fn groups(
    producer: &FutureProducer,
    config: Arc<KafkaConfig>,
    bootstrap: Bootstrap,
    topic: &str,
) -> Result<Vec<GroupInfo>, InspectError> {
    let producer = producer.clone();
    let topic_owned = topic.to_owned();
    let timeout = config.operation_timeout;
    let listing = blocking(move || {
        let topic = topic_owned.as_str();
        let client = producer.client();
        let md = client
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| e.to_string())?;
        let partitions: Vec<i32> = match md.topics().iter().find(|t| t.name() == topic) {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                t.partitions().iter().map(|p| p.id()).collect()
            }
            _ => return Ok(None),
        };
        let watermarks = partitions
            .iter()
            .map(|p| {
                client
                    .fetch_watermarks(topic, *p, timeout)
                    .map(|w| (*p, w))
                    .map_err(|e| format!("watermarks of `{topic}` [{p}]: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let list = client
            .fetch_group_list(None, timeout)
            .map_err(|e| format!("group list: {e}"))?;
        let mut groups = Vec::new();
        for g in list.groups() {
            let Some(group) = busline_group(topic, g.name()) else {
                continue;
            };
            let reader: BaseConsumer = config
                .consumer_config(&bootstrap, g.name())
                .create()
                .map_err(|e| format!("group client: {e}"))?;
            let offsets = committed(&reader, topic, &partitions, timeout)?;
            if offsets.is_empty() {
                // A group of other topics only.
                continue;
            }
            // A partition without a committed offset is read from its
            // beginning by the group's members (see `member::context`).
            let lag: u64 = watermarks
                .iter()
                .map(|(p, (low, high))| {
                    let at = offsets.iter().find(|(q, _)| q == p).map_or(*low, |(_, o)| *o);
                    u64::try_from(high - at.max(*low)).unwrap_or(0)
                })
                .sum();
            groups.push(
                GroupInfo::new(group)
                    .with_lag(Some(lag))
                    .with_members(Some(g.members().len() as u32)),
            );
        }
        groups.sort_by(|a, b| a.group.cmp(&b.group));
        Ok(Some(groups))
    });
    match listing.await {
        Ok(Some(groups)) => Ok(groups),
        Ok(None) => Err(InspectError::groups(InspectErrorKind::NotFound, topic)
            .with_source(format!("the cluster has no topic `{topic}`"))),
        Err(e) => Err(InspectError::groups(kind_of(&e), topic).with_source(e)),
    }
}

fn kind_of(e: &str) -> InspectErrorKind {
    if e.contains("timed out") || e.contains("TimedOut") {
        InspectErrorKind::Timeout
    } else if e.contains("Transport") || e.contains("AllBrokersDown") {
        InspectErrorKind::Connection
    } else {
        InspectErrorKind::Other
    }
}

#[cfg(test)]
mod tests {
    use super::busline_group;

    #[test]
    fn group_ids_map_back_to_busline_groups() {
        assert_eq!(busline_group("orders", "billing").as_deref(), Some("billing"));
        assert_eq!(
            busline_group("orders.billing.dlq", "billing.dlq").as_deref(),
            Some("billing")
        );
        // Readers of a DLQ use `<group>.dlq`: the main id there is no group.
        assert_eq!(busline_group("orders.billing.dlq", "billing"), None);
        // Another group's id on someone's DLQ is a group of that topic.
        assert_eq!(
            busline_group("orders.billing.dlq", "audit").as_deref(),
            Some("audit")
        );
        assert_eq!(busline_group("orders", "x.dlq").as_deref(), Some("x.dlq"));
    }
}
