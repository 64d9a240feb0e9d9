//! Topics and groups as the cluster reports them: a busline topic is a
//! Kafka topic of the same name; a group of it is a consumer group with
//! committed offsets on it, under the id [`consumer_group_id`] gives.
//!
//! Sizes come from ListOffsets (the watermarks). tansu 0.6 answers the
//! latest offset with its newest batch's base offset + 1, so on tansu a
//! topic whose last batch held several records shows fewer messages and
//! less lag than it has; Kafka answers the high watermark.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use busline_core::{GroupInfo, InspectError, InspectErrorKind, TopicInfo};
use rdkafka::consumer::BaseConsumer;
use rdkafka::consumer::Consumer;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{Bootstrap, KafkaConfig};
use crate::topology::{blocking, committed, consumer_group_id, group_client};

/// Offset fetchers of `groups` working at once.
const FETCHERS: usize = 16;

/// Topics the cluster keeps for itself (`__consumer_offsets`, ...).
fn is_internal(topic: &str) -> bool {
    topic.starts_with("__")
}

/// (topic, partition) → (low, high) watermark.
type Watermarks = HashMap<(String, i32), (i64, i64)>;

/// The low and high watermarks of `partitions`, in two ListOffsets
/// requests (timestamps -2 and -1 ask for the earliest and the latest
/// offset) rather than two per partition: a cluster holds thousands.
fn watermarks(
    client: &BaseConsumer,
    partitions: &[(String, i32)],
    timeout: Duration,
) -> Result<Watermarks, String> {
    // `Beginning` and `End` are the raw -2 and -1 librdkafka sends.
    let ask = |at: Offset| -> Result<HashMap<(String, i32), i64>, String> {
        let mut tpl = TopicPartitionList::new();
        for (t, p) in partitions {
            tpl.add_partition_offset(t, *p, at).map_err(|e| e.to_string())?;
        }
        let got = client
            .offsets_for_times(tpl, timeout)
            .map_err(|e| format!("watermarks: {e}"))?;
        Ok(got
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some(((e.topic().to_owned(), e.partition()), o)),
                _ => None,
            })
            .collect())
    };
    if partitions.is_empty() {
        return Ok(HashMap::new());
    }
    let (low, high) = (ask(Offset::Beginning)?, ask(Offset::End)?);
    Ok(high
        .into_iter()
        .map(|(k, h)| {
            let l = low.get(&k).copied().unwrap_or(0);
            (k, (l, h))
        })
        .collect())
}

fn inventory_client(config: &KafkaConfig, bootstrap: &Bootstrap) -> Result<BaseConsumer, String> {
    // A group id it never joins: librdkafka's consumer wants one.
    group_client(config, bootstrap, "busline-inventory")
}

pub(crate) async fn topics(
    producer: &FutureProducer,
    config: Arc<KafkaConfig>,
    bootstrap: Bootstrap,
) -> Result<Vec<TopicInfo>, InspectError> {
    let producer = producer.clone();
    blocking(move || {
        let timeout = config.operation_timeout;
        let md = producer
            .client()
            .fetch_metadata(None, timeout)
            .map_err(|e| e.to_string())?;
        let listed: Vec<_> = md
            .topics()
            .iter()
            .filter(|t| !is_internal(t.name()) && t.error().is_none())
            .collect();
        let partitions: Vec<(String, i32)> = listed
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| (t.name().to_owned(), p.id())))
            .collect();
        let marks = watermarks(&inventory_client(&config, &bootstrap)?, &partitions, timeout)?;
        let mut topics: Vec<TopicInfo> = listed
            .iter()
            .map(|t| {
                let messages: u64 = t
                    .partitions()
                    .iter()
                    .filter_map(|p| marks.get(&(t.name().to_owned(), p.id())))
                    .map(|(low, high)| u64::try_from(high - low).unwrap_or(0))
                    .sum();
                TopicInfo::new(t.name())
                    .with_messages(Some(messages))
                    .with_partitions(Some(t.partitions().len() as u32))
            })
            .collect();
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
        let keyed: Vec<(String, i32)> = partitions.iter().map(|p| (topic.to_owned(), *p)).collect();
        let marks = watermarks(&inventory_client(&config, &bootstrap)?, &keyed, timeout)?;
        let watermarks: Vec<(i32, (i64, i64))> = partitions
            .iter()
            .map(|p| (*p, marks.get(&(topic.to_owned(), *p)).copied().unwrap_or((0, 0))))
            .collect();
        let list = client
            .fetch_group_list(None, timeout)
            .map_err(|e| format!("group list: {e}"))?;
        let candidates: Vec<(String, &str, u32)> = list
            .groups()
            .iter()
            .filter_map(|g| {
                Some((
                    busline_group(topic, g.name())?,
                    g.name(),
                    g.members().len() as u32,
                ))
            })
            .collect();
        // One OffsetFetch per consumer group (a client per group id, as
        // librdkafka asks for its own group's offsets), several at a time:
        // a cluster may hold hundreds of groups.
        let chunk = candidates.len().div_ceil(FETCHERS).max(1);
        let fetched: Vec<Result<Vec<GroupInfo>, String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = candidates
                .chunks(chunk)
                .map(|part| {
                    let (config, bootstrap, partitions, watermarks) =
                        (&config, &bootstrap, &partitions, &watermarks);
                    scope.spawn(move || {
                        let mut found = Vec::new();
                        for (group, id, members) in part {
                            let reader = group_client(config, bootstrap, id)?;
                            let offsets = committed(&reader, topic, partitions, timeout)?;
                            if offsets.is_empty() {
                                // A group of other topics only.
                                continue;
                            }
                            // A partition without a committed offset is read
                            // from its beginning by the group's members (see
                            // `member::context`).
                            let lag: u64 = watermarks
                                .iter()
                                .map(|(p, (low, high))| {
                                    let at = offsets.iter().find(|(q, _)| q == p).map_or(*low, |(_, o)| *o);
                                    u64::try_from(high - at.max(*low)).unwrap_or(0)
                                })
                                .sum();
                            found.push(
                                GroupInfo::new(group.clone())
                                    .with_lag(Some(lag))
                                    .with_members(Some(*members)),
                            );
                        }
                        Ok(found)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("an offset fetcher panicked".into()))
                })
                .collect()
        });
        let mut groups = Vec::new();
        for part in fetched {
            groups.extend(part?);
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
