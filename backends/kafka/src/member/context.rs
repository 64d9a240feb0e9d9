//! Rebalances of one member, handled on its poller thread: an assignment
//! starts each partition at its committed offset (or, for a partition the
//! group never committed, where the group starts, committed at once); a
//! revocation commits up to the lowest undecided offset and drops the
//! partition's records, whose deliveries in flight then change nothing.

use std::sync::Arc;

use busline_core::StartFrom;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::poller;
use super::MemberShared;
use crate::topology::start_offsets;

pub(crate) struct MemberContext {
    member: Arc<MemberShared>,
}

impl MemberContext {
    pub(crate) fn new(member: Arc<MemberShared>) -> Self {
        Self { member }
    }

    /// Explicit start offsets for the partitions of `tpl`.
    fn resolve(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) -> Vec<(i32, Option<i64>)> {
        let m = &self.member;
        let topic = &*m.topic;
        let timeout = m.bus.config.operation_timeout;
        let partitions: Vec<i32> = tpl
            .elements_for_topic(topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        let committed = match consumer.committed_offsets(tpl.clone(), timeout) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(topic, group = %m.group, error = %e, "cannot read committed offsets; starting where the broker says");
                return partitions.into_iter().map(|p| (p, None)).collect();
            }
        };
        let mut starts: Vec<(i32, Option<i64>)> = Vec::with_capacity(partitions.len());
        let mut fresh = Vec::new();
        for p in &partitions {
            let at = committed
                .find_partition(topic, *p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            match at {
                Some(o) => starts.push((*p, Some(o))),
                None => match m.bus.topology.hint(&m.group, topic, *p) {
                    Some(o) => {
                        fresh.push((*p, o));
                        starts.push((*p, Some(o)));
                    }
                    None => starts.push((*p, None)),
                },
            }
        }
        let unknown: Vec<i32> = starts
            .iter()
            .filter(|(_, o)| o.is_none())
            .map(|(p, _)| *p)
            .collect();
        if !unknown.is_empty() {
            let start = if m.start == StartFrom::Earliest {
                StartFrom::Earliest
            } else {
                StartFrom::New
            };
            match start_offsets(consumer, topic, &unknown, start, timeout) {
                Ok(found) => {
                    for (p, o) in found {
                        fresh.push((p, o));
                        if let Some(s) = starts.iter_mut().find(|(q, _)| *q == p) {
                            s.1 = Some(o);
                        }
                    }
                }
                Err(e) => tracing::warn!(topic, error = %e, "cannot resolve start offsets"),
            }
        }
        if !fresh.is_empty() {
            // Record where the group starts, so a member that takes over
            // before anything is committed starts there too.
            let mut tpl = TopicPartitionList::new();
            for (p, o) in &fresh {
                let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(*o));
            }
            if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                m.commit_failed(
                    "commit of the group's start offsets",
                    &poller::partitions(&tpl, topic),
                    &e,
                );
            }
        }
        starts
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList, cooperative: bool) {
        let m = &self.member;
        let starts = self.resolve(consumer, tpl);
        tracing::debug!(topic = %m.topic, group = %m.group, ?starts, "assigned");
        let rewind = i64::from(m.bus.config.fetch_rewind);
        let mut explicit = TopicPartitionList::new();
        for (p, o) in &starts {
            // Records before the start are skipped by the member's state.
            let offset = o.map_or(Offset::Invalid, |o| Offset::Offset((o - rewind).max(0)));
            let _ = explicit.add_partition_offset(&m.topic, *p, offset);
        }
        let result: KafkaResult<()> = if cooperative {
            consumer.incremental_assign(&explicit)
        } else {
            consumer.assign(&explicit)
        };
        if let Err(e) = result {
            tracing::error!(topic = %m.topic, group = %m.group, error = %e, "assignment failed");
            return;
        }
        {
            let mut state = m.state();
            for (p, o) in starts {
                state.assign(p, o);
            }
        }
        m.joined.send_replace(true);
        m.wake();
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, partitions: &[i32]) {
        let m = &self.member;
        let mut tpl = TopicPartitionList::new();
        {
            let mut state = m.state();
            for p in partitions {
                let Some((point, abandoned)) = state.revoke(*p) else {
                    continue;
                };
                if let Some(point) = point {
                    let _ = tpl.add_partition_offset(&m.topic, *p, Offset::Offset(point));
                }
                for a in abandoned {
                    m.bus
                        .attempts
                        .abandoned(m.record_id(a.partition, a.offset), a.delivered);
                }
            }
        }
        tracing::debug!(topic = %m.topic, group = %m.group, ?partitions, "revoked");
        if tpl.count() > 0 {
            if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                // The partitions are gone: the next owner may redeliver.
                m.commit_failed("commit on revocation", partitions, &e);
            }
        }
        m.wake();
    }
}

impl ClientContext for MemberContext {}

impl ConsumerContext for MemberContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, tpl, cooperative),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let partitions: Vec<i32> = tpl
                    .elements_for_topic(&self.member.topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect();
                self.revoke(consumer, &partitions);
                let _ = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
            }
            other => {
                tracing::warn!(topic = %self.member.topic, error = ?other, "rebalance error; giving up the assignment");
                let owned = self.member.state().owned();
                self.revoke(consumer, &owned);
                let _ = consumer.unassign();
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        let m = &self.member;
        let failed: Vec<i32> = match &result {
            // Nothing to commit is not a failure.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => return,
            Err(_) => poller::partitions(offsets, &m.topic),
            // A request that succeeded can still refuse single partitions.
            Ok(()) => offsets
                .elements_for_topic(&m.topic)
                .iter()
                .filter(|e| e.error().is_err())
                .map(|e| e.partition())
                .collect(),
        };
        if let Err(e) = &result {
            m.commit_failed("offset commit", &failed, e);
        } else if !failed.is_empty() {
            m.commit_failed("offset commit", &failed, &"refused for some partitions");
        }
    }
}
