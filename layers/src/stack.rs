//! [`DefaultStack`]: the layers a router applies in one line.

use std::sync::Arc;
use std::time::Duration;

use busline_core::{Bus, Layer, Router, Stack, TowerLayer};

use crate::{
    BulkheadLayer, CircuitBreakerLayer, DedupLayer, DedupStore, MetricsBus, MetricsLayer, MetricsObserver,
    RateLimitLayer, TracingBus, TracingLayer,
};

/// The layers of a [`DefaultStack`], innermost first.
type Chain = Stack<
    Option<TowerLayer<tower::timeout::TimeoutLayer>>,
    Stack<
        Option<CircuitBreakerLayer>,
        Stack<
            Option<BulkheadLayer>,
            Stack<Option<RateLimitLayer>, Stack<Option<DedupLayer>, Stack<MetricsLayer, TracingLayer>>>,
        >,
    >,
>;

/// The usual stack around every handler of a router, outermost first:
///
/// 1. [`TracingLayer`]: a span per handle, continuing the publisher's trace;
/// 2. [`MetricsLayer`]: duration, lag, in flight;
/// 3. [`DedupLayer`] (if set): duplicates are skipped before anything else
///    is spent on them;
/// 4. [`RateLimitLayer`] (if set);
/// 5. [`BulkheadLayer`] (if set);
/// 6. [`CircuitBreakerLayer`] (if set): it sees only calls that run, so a
///    full bulkhead does not open it, and a time-out inside it counts as a
///    failure;
/// 7. tower's [`TimeoutLayer`](tower::timeout::TimeoutLayer) (if set): a
///    call that runs out of time is cancelled and fails as retryable.
///
/// [`default_stack`] has tracing and metrics only: the resilience layers
/// need settings that only the application knows. Build it once and apply
/// it with [`RouterExt::with_stack`] (which also registers the
/// [`MetricsObserver`]); each handler gets its own bulkhead, breaker and
/// limiter.
#[derive(Debug, Clone, Default)]
pub struct DefaultStack {
    timeout: Option<TowerLayer<tower::timeout::TimeoutLayer>>,
    breaker: Option<CircuitBreakerLayer>,
    bulkhead: Option<BulkheadLayer>,
    rate_limit: Option<RateLimitLayer>,
    dedup: Option<DedupLayer>,
}

/// Tracing and metrics around every handler; add resilience layers with the
/// `with_*` methods.
pub fn default_stack() -> DefaultStack {
    DefaultStack::default()
}

impl DefaultStack {
    /// Adds tower's [`TimeoutLayer`](tower::timeout::TimeoutLayer) of
    /// `limit` per call (the router's `handler_timeout` is one limit for
    /// every handler; this one can differ per stack).
    pub fn with_timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(TowerLayer::new(tower::timeout::TimeoutLayer::new(limit)));
        self
    }

    /// Adds a circuit breaker.
    pub fn with_circuit_breaker(mut self, breaker: CircuitBreakerLayer) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Adds a bulkhead.
    pub fn with_bulkhead(mut self, bulkhead: BulkheadLayer) -> Self {
        self.bulkhead = Some(bulkhead);
        self
    }

    /// Adds a rate limit.
    pub fn with_rate_limit(mut self, limit: RateLimitLayer) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Adds the idempotent consumer over `store`.
    pub fn with_dedup(mut self, store: Arc<dyn DedupStore>) -> Self {
        self.dedup = Some(DedupLayer::from_arc(store));
        self
    }

    fn chain(&self) -> Chain {
        Stack::new(
            self.timeout.clone(),
            Stack::new(
                self.breaker,
                Stack::new(
                    self.bulkhead,
                    Stack::new(
                        self.rate_limit,
                        Stack::new(self.dedup.clone(), Stack::new(MetricsLayer, TracingLayer)),
                    ),
                ),
            ),
        )
    }
}

impl<H> Layer<H> for DefaultStack
where
    Chain: Layer<H>,
{
    type Service = <Chain as Layer<H>>::Service;

    fn layer(&self, inner: H) -> Self::Service {
        self.chain().layer(inner)
    }
}

/// One-line setup of a router.
pub trait RouterExt<S, L> {
    /// Applies `stack` to every handler (call it before the first `.on`) and
    /// counts the router's decisions with a [`MetricsObserver`].
    fn with_stack(self, stack: DefaultStack) -> Router<S, Stack<DefaultStack, L>>;

    /// [`with_stack`](RouterExt::with_stack) with [`default_stack`].
    fn with_default_stack(self) -> Router<S, Stack<DefaultStack, L>>;
}

impl<S: Clone + Send + Sync + 'static, L> RouterExt<S, L> for Router<S, L> {
    fn with_stack(self, stack: DefaultStack) -> Router<S, Stack<DefaultStack, L>> {
        self.observe(MetricsObserver::new()).layer(stack)
    }

    fn with_default_stack(self) -> Router<S, Stack<DefaultStack, L>> {
        self.with_stack(default_stack())
    }
}

/// The same bus with traced and counted publishes ([`TracingBus`] inside
/// [`MetricsBus`]). Routers built on it publish follow-ups the same way.
/// Wrap with [`GuardedBus`](crate::GuardedBus) too for timeouts, retries
/// and the publisher circuit breaker.
pub fn instrument(bus: &Bus) -> Bus {
    MetricsBus::wrap(&TracingBus::wrap(bus))
}
