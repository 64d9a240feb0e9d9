//! What every part of one connection shares: the producer, the topology,
//! the members, and the shutdown state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::producer::FutureProducer;

use crate::attempts::AttemptFloor;
use crate::config::{Bootstrap, KafkaConfig};
use crate::member::MemberShared;
use crate::topology::Topology;

pub(crate) struct Shared {
    pub(crate) producer: FutureProducer,
    pub(crate) topology: Topology,
    pub(crate) config: Arc<KafkaConfig>,
    pub(crate) bootstrap: Bootstrap,
    /// Set by shutdown: new publishes and subscriptions fail `Closed`.
    pub(crate) closed: AtomicBool,
    /// Deliveries of members that left, for the next member's attempt
    /// numbers.
    pub(crate) attempts: AttemptFloor,
    /// The members of this connection, to stop on shutdown.
    pub(crate) members: Mutex<Vec<Arc<MemberShared>>>,
    /// Offset commits of this connection's members that failed.
    pub(crate) commit_failures: AtomicU64,
    /// Rebalances that took partitions from this connection's members.
    pub(crate) revocations: AtomicU64,
    /// Commit points of revoked partitions whose commit the broker refused.
    pub(crate) unsaved: UnsavedPoints,
}

/// Commit points that a member decided and could not commit before its
/// partitions were revoked, by (consumer group, topic, partition).
///
/// The commit on revocation is refused while the group rebalances
/// (librdkafka's mock cluster refuses commits for the whole join phase,
/// Kafka while the new generation syncs). Kept here, the next member of
/// this connection that is assigned such a partition starts at the point
/// and commits it, instead of delivering again what was settled. Another
/// process taking the partition starts at the committed offset
/// (at-least-once).
#[derive(Default)]
pub(crate) struct UnsavedPoints {
    points: Mutex<HashMap<PartitionOf, i64>>,
}

/// (consumer group, topic, partition).
type PartitionOf = (Arc<str>, Arc<str>, i32);

impl UnsavedPoints {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PartitionOf, i64>> {
        self.points.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `point` for `partition` (the furthest one wins).
    pub(crate) fn keep(&self, group_id: &Arc<str>, topic: &Arc<str>, partition: i32, point: i64) {
        let mut points = self.lock();
        let at = points
            .entry((group_id.clone(), topic.clone(), partition))
            .or_insert(point);
        *at = (*at).max(point);
    }

    /// The point kept for `partition`, if any.
    pub(crate) fn get(&self, group_id: &Arc<str>, topic: &Arc<str>, partition: i32) -> Option<i64> {
        let points = self.lock();
        if points.is_empty() {
            return None;
        }
        points.get(&(group_id.clone(), topic.clone(), partition)).copied()
    }

    /// Forgets the point of `partition` once it is committed, unless a
    /// later revocation kept one further on.
    pub(crate) fn saved(&self, group_id: &Arc<str>, topic: &Arc<str>, partition: i32, committed: i64) {
        let mut points = self.lock();
        let key = (group_id.clone(), topic.clone(), partition);
        if points.get(&key).is_some_and(|p| *p <= committed) {
            points.remove(&key);
        }
    }
}

impl Shared {
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn register(&self, member: Arc<MemberShared>) {
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        members.retain(|m| !m.is_done());
        members.push(member);
    }
}
