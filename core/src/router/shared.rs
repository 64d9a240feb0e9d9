//! What the consumer loop (`running`) and the settlement of each delivery
//! (`dispatch`) share: the route table, the router's settings and counters.
//! Its own module so that the two import it, not each other.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use super::route::Route;
use super::RouterSettings;
use crate::Bus;
use crate::RouterObserver;

/// Counters of a router since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouterStats {
    /// Handled and acknowledged.
    pub handled: u64,
    /// Sent back for a later attempt.
    pub retried: u64,
    /// Dead-lettered.
    pub dead_lettered: u64,
    /// Acknowledged without handling: an event type with no handler, or a
    /// handler's [`HandlerError::skip`](super::HandlerError::skip) (such as
    /// an idempotent consumer's duplicate).
    pub skipped: u64,
    /// Returned to the broker unhandled because shutdown's deadline passed.
    pub abandoned: u64,
    /// Settle calls that failed (the broker redelivers those events).
    pub settle_failures: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) handled: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) abandoned: AtomicU64,
    pub(crate) settle_failures: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> RouterStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RouterStats {
            handled: get(&self.handled),
            retried: get(&self.retried),
            dead_lettered: get(&self.dead_lettered),
            skipped: get(&self.skipped),
            abandoned: get(&self.abandoned),
            settle_failures: get(&self.settle_failures),
        }
    }
}

/// What every delivery task of one router shares.
pub(crate) struct Shared {
    pub(crate) bus: Bus,
    pub(crate) group: Arc<str>,
    pub(crate) settings: RouterSettings,
    pub(crate) counters: Counters,
    /// Told about every settlement decision.
    pub(crate) observers: Box<[Arc<dyn RouterObserver>]>,
    /// The observers that also want every handled event.
    pub(crate) witnesses: Arc<[Arc<dyn RouterObserver>]>,
    /// Set when shutdown's deadline has passed: handlers still running are
    /// cancelled and their deliveries returned.
    pub(crate) abandon: watch::Receiver<bool>,
}

/// A topic's routes by event type. A topic carries a handful of types
/// (`Router::on` refuses a second handler for one), so a scan of their names
/// beats hashing the name of every delivery (SipHash took about 200
/// instructions per event).
pub(crate) struct RouteTable(Box<[(&'static str, Arc<dyn Route>)]>);

impl RouteTable {
    pub(crate) fn get(&self, event_type: &str) -> Option<&Arc<dyn Route>> {
        self.0
            .iter()
            .find(|(t, _)| *t == event_type)
            .map(|(_, route)| route)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Arc<dyn Route>> {
        self.0.iter().map(|(_, route)| route)
    }
}

impl FromIterator<(&'static str, Arc<dyn Route>)> for RouteTable {
    fn from_iter<I: IntoIterator<Item = (&'static str, Arc<dyn Route>)>>(routes: I) -> Self {
        Self(routes.into_iter().collect())
    }
}
