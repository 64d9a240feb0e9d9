//! Rebalances of one member, handled on its poller thread.
//!
//! An assignment starts each partition at its committed offset. A
//! partition without one starts where provisioning recorded the group's
//! start, else at the earliest retained offset when the group has
//! committed offsets on other partitions of the topic (a partition added
//! later, or one whose offsets expired: nothing written meanwhile is
//! skipped), else (a group without any offsets: new, or all of its offsets
//! expired) at the subscription's `StartFrom`; the start is committed at
//! once, so a member that takes over starts there too.
//!
//! A revocation stops handing out the partitions' records, waits (at most
//! `revoke_timeout`) for their deliveries in flight to be settled, commits
//! up to the lowest undecided offset and drops the partitions' records;
//! decisions of deliveries that outlast the wait change nothing.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use busline_core::StartFrom;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::poller;
use super::MemberShared;
use crate::topology::{has_offsets_elsewhere, start_offsets};

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
        let mut any_committed = false;
        for p in &partitions {
            let at = committed
                .find_partition(topic, *p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            let unsaved = m.bus.unsaved.get(&m.group_id, &m.topic, *p);
            if at.is_some() {
                any_committed = true;
            }
            match (at, unsaved) {
                // This connection settled further than the group committed
                // (its commit on revocation was refused): start there.
                (at, Some(u)) if at.is_none_or(|o| u > o) => {
                    fresh.push((*p, u));
                    starts.push((*p, Some(u)));
                }
                (Some(o), unsaved) => {
                    if unsaved.is_some() {
                        m.bus.unsaved.saved(&m.group_id, &m.topic, *p, o);
                    }
                    starts.push((*p, Some(o)));
                }
                (None, _) => match m.bus.topology.hint(&m.group_id, topic, *p) {
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
            let exists = any_committed
                || m.start == StartFrom::Earliest
                || has_offsets_elsewhere(consumer, topic, &partitions, timeout).unwrap_or_else(|e| {
                    tracing::warn!(topic, group = %m.group, error = %e, "cannot tell whether the group has offsets; starting at the earliest offset rather than skipping");
                    true
                });
            let start = if exists { StartFrom::Earliest } else { m.start };
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
            match consumer.commit(&tpl, CommitMode::Sync) {
                // Committed: from now on the broker knows, and a hint would
                // only be stale once these offsets expire.
                Ok(()) => {
                    m.bus.topology.forget_hints(&m.group_id, topic);
                    for (p, o) in &fresh {
                        m.bus.unsaved.saved(&m.group_id, &m.topic, *p, *o);
                    }
                }
                Err(e) => m.commit_failed(
                    "commit of the group's start offsets",
                    &poller::partitions(&tpl, topic),
                    &e,
                ),
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

    /// Gives `partitions` up; with `settle`, first waits for their
    /// deliveries in flight (not when leaving: the drain waited already).
    fn revoke(&self, consumer: &BaseConsumer<Self>, partitions: &[i32], settle: bool) {
        let m = &self.member;
        let limit = m.bus.config.revoke_timeout;
        if settle && !partitions.is_empty() && !limit.is_zero() && !m.is_leaving() {
            let started = std::time::Instant::now();
            let left = m.drain_partitions(partitions, limit);
            if left > 0 {
                tracing::warn!(topic = %m.topic, group = %m.group, ?partitions, left, ?limit, "deliveries still in flight when their partitions were revoked; their next owner delivers them again");
            } else {
                tracing::debug!(topic = %m.topic, group = %m.group, ?partitions, waited = ?started.elapsed(), "deliveries of revoked partitions settled");
            }
        }
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
            match consumer.commit(&tpl, CommitMode::Sync) {
                Ok(()) => {
                    for e in tpl.elements_for_topic(&m.topic) {
                        if let Offset::Offset(o) = e.offset() {
                            m.bus.unsaved.saved(&m.group_id, &m.topic, e.partition(), o);
                        }
                    }
                }
                Err(e) => {
                    // The partitions are gone: keep the points for this
                    // connection's next owner of them; another process's
                    // member delivers again from the committed offset.
                    for el in tpl.elements_for_topic(&m.topic) {
                        if let Offset::Offset(o) = el.offset() {
                            m.bus.unsaved.keep(&m.group_id, &m.topic, el.partition(), o);
                        }
                    }
                    m.commit_failed("commit on revocation", partitions, &e);
                }
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
                if !partitions.is_empty() && !self.member.is_leaving() {
                    self.member.bus.revocations.fetch_add(1, Ordering::Relaxed);
                }
                self.revoke(consumer, &partitions, true);
                let _ = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
            }
            other => {
                tracing::warn!(topic = %self.member.topic, error = ?other, "rebalance error; giving up the assignment");
                // The assignment is lost already: waiting would not keep
                // the next owner from starting.
                let owned = self.member.state().owned();
                self.revoke(consumer, &owned, false);
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
