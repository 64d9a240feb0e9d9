//! What every part of one connection shares: the producer, the topology,
//! the members, and the shutdown state.

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
