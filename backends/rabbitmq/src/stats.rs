//! What the consumers of one bus have seen, for [`RabbitBus::stats`](crate::RabbitBus::stats).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts of one bus's consumers since it connected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RabbitStats {
    /// Times a subscription's consumer lost its connection or channel (any
    /// cause: a broker restart, a network fault, a frame lapin cannot
    /// parse) and opened it again or gave up.
    pub consumer_losses: u64,
    /// Of those, losses caused by a frame lapin cannot parse: a message
    /// whose header-table key or `content_type` is not UTF-8, which a
    /// foreign producer can write and the broker passes on.
    pub unparseable_losses: u64,
    /// Messages seen arriving in a group's parking queue
    /// `<topic>::<group>::unparseable` after such losses: the broker moved
    /// them there at the quorum queue's delivery limit. busline cannot read
    /// them; see [`RabbitConfig::delivery_limit`](crate::RabbitConfig::delivery_limit)
    /// for how an operator inspects them. Every bus consuming the group
    /// counts what it sees, so two processes both count one message.
    pub parked: u64,
    /// Subscriptions that gave up with `ConsumeErrorKind::Unparseable`
    /// after [`RabbitConfig::max_unparseable_losses`](crate::RabbitConfig::max_unparseable_losses)
    /// such losses in a row.
    pub unparseable_failures: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) consumer_losses: AtomicU64,
    pub(crate) unparseable_losses: AtomicU64,
    pub(crate) parked: AtomicU64,
    pub(crate) unparseable_failures: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> RabbitStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RabbitStats {
            consumer_losses: get(&self.consumer_losses),
            unparseable_losses: get(&self.unparseable_losses),
            parked: get(&self.parked),
            unparseable_failures: get(&self.unparseable_failures),
        }
    }
}
