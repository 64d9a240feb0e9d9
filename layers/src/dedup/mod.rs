//! [`DedupLayer`]: the idempotent consumer. Events whose id this group has
//! already handled are skipped.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use busline_core::{BoxError, Context, DomainEvent, Event, EventService, Gate, HandlerError, Layer};
use futures::future::BoxFuture;

mod memory;
mod outage;

pub use memory::MemoryDedupStore;
use outage::Outage;

/// The skip reason of a duplicate (a metrics label).
pub const SKIP_DUPLICATE: &str = "duplicate";

/// Remembers which events each group has handled, by (group, event id).
///
/// A mark is recorded only after the handler succeeded, so an event whose
/// handler failed is tried again. Two deliveries of one event that run at
/// the same time may both be handled (at-least-once stays the floor); the
/// store makes later repeats cheap and harmless.
#[async_trait]
pub trait DedupStore: Send + Sync + 'static {
    /// Whether `event_id` was marked handled for `group`.
    async fn seen(&self, group: &str, event_id: &str) -> Result<bool, BoxError>;

    /// Marks `event_id` handled for `group`.
    async fn mark(&self, group: &str, event_id: &str) -> Result<(), BoxError>;
}

/// Skips events already handled by this group, as told by a
/// [`DedupStore`]: the handler is not called and the event is acknowledged
/// and counted as skipped ([`HandlerError::skip`] with reason
/// [`SKIP_DUPLICATE`]). After the handler succeeds, the event is marked; a
/// failed mark is logged and does not fail the (handled) event.
///
/// **When the store cannot be asked** (an error, or no answer within the
/// store timeout, 5 s by default) the call does not fail: handling without
/// knowing could handle twice, and failing would use up the event's
/// attempts and dead-letter it within seconds of an outage. Instead the
/// handler's [`Gate`] closes, so the router takes no more deliveries and
/// events wait in the broker; one call probes the store with backoff
/// (100 ms doubling to 5 s by default) while the calls already taken wait;
/// when the store answers, the gate reopens and they all go on. A call
/// that waits longer than the router's handler timeout is cancelled and
/// retried like any timed-out call (the router has no way to hand a
/// delivery back without counting an attempt), so only deliveries already
/// in flight when an outage begins can use up attempts, one per handler
/// timeout.
///
/// The gate is the inner handler's if it has one (a circuit breaker
/// inside): it is closed during an outage and handed back as found.
///
/// ```
/// use std::time::Duration;
/// use busline_layers::{DedupLayer, MemoryDedupStore};
/// let layer = DedupLayer::new(MemoryDedupStore::new(Duration::from_secs(3600), 100_000))
///     .with_store_timeout(Duration::from_secs(2))
///     .with_probe_backoff(Duration::from_millis(200), Duration::from_secs(10));
/// ```
#[derive(Clone)]
pub struct DedupLayer {
    store: Arc<dyn DedupStore>,
    store_timeout: Duration,
    probe_backoff: (Duration, Duration),
}

impl std::fmt::Debug for DedupLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupLayer")
            .field("store_timeout", &self.store_timeout)
            .field("probe_backoff", &self.probe_backoff)
            .finish_non_exhaustive()
    }
}

impl DedupLayer {
    /// Deduplicates through `store`.
    pub fn new(store: impl DedupStore) -> Self {
        Self::from_arc(Arc::new(store))
    }

    /// Deduplicates through a shared store.
    pub fn from_arc(store: Arc<dyn DedupStore>) -> Self {
        Self {
            store,
            store_timeout: Duration::from_secs(5),
            probe_backoff: (Duration::from_millis(100), Duration::from_secs(5)),
        }
    }

    /// Longest a store call may take before the store counts as unreachable
    /// (at least 1 ms).
    pub fn with_store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Delay before the first probe of an unreachable store, doubling up to
    /// `max` (each ±20%).
    pub fn with_probe_backoff(mut self, first: Duration, max: Duration) -> Self {
        let first = first.max(Duration::from_millis(1));
        self.probe_backoff = (first, max.max(first));
        self
    }
}

impl<H> Layer<H> for DedupLayer {
    type Service = Dedup<H>;

    fn layer(&self, inner: H) -> Dedup<H> {
        Dedup {
            inner: Arc::new(inner),
            store: self.store.clone(),
            outage: Arc::new(Outage::new(self.store_timeout, self.probe_backoff)),
            gate: OnceLock::new(),
        }
    }
}

/// An idempotent handler; made by [`DedupLayer`].
pub struct Dedup<H> {
    inner: Arc<H>,
    store: Arc<dyn DedupStore>,
    outage: Arc<Outage>,
    /// The gate closed during a store outage, and whether it is the inner
    /// handler's; chosen on first use, since only then is the event type
    /// (and so the inner handler's `gate`) known.
    gate: OnceLock<(Gate, bool)>,
}

impl<H> std::fmt::Debug for Dedup<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedup")
            .field("store_down", &self.outage.is_down())
            .finish_non_exhaustive()
    }
}

impl<H> Dedup<H> {
    /// Whether the store is taken as unreachable now (consumption paused).
    pub fn store_down(&self) -> bool {
        self.outage.is_down()
    }
}

/// The gate a [`Dedup`] closes, and whether it is the inner handler's.
fn gate_of<E: Event, H: EventService<E>>(dedup: &Dedup<H>) -> &(Gate, bool) {
    dedup.gate.get_or_init(|| match dedup.inner.gate() {
        Some(gate) => (gate, true),
        None => (Gate::new(), false),
    })
}

impl<E: Event, H: EventService<E>> EventService<E> for Dedup<H> {
    type Future = BoxFuture<'static, Result<(), HandlerError>>;

    fn call(&self, event: DomainEvent<E>, ctx: Context) -> Self::Future {
        let (gate, shared) = gate_of(self).clone();
        let (inner, store, outage) = (self.inner.clone(), self.store.clone(), self.outage.clone());
        Box::pin(async move {
            let (group, id) = (ctx.group().to_owned(), event.id.clone());
            let seen = outage.ask(&gate, shared, || store.seen(&group, &id)).await;
            if seen {
                tracing::debug!(%group, event_id = %id, "duplicate event skipped");
                return Err(HandlerError::skip(SKIP_DUPLICATE));
            }
            inner.call(event, ctx).await?;
            if let Err(e) = outage.call(store.mark(&group, &id)).await {
                tracing::warn!(%group, event_id = %id, error = %e, "handled event could not be marked; a repeat would be handled again");
                // Pause before the next event runs into the same outage.
                outage.failed(&gate, shared, false, &e);
            }
            Ok(())
        })
    }

    fn gate(&self) -> Option<Gate> {
        Some(gate_of(self).0.clone())
    }
}
