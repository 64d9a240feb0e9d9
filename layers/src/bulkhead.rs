//! [`BulkheadLayer`]: at most N concurrent calls of one handler, with a
//! bounded wait queue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use busline_core::{Context, DomainEvent, Event, EventService, Gate, HandlerError, Layer};
use futures::future::BoxFuture;
use tokio::sync::Semaphore;

/// The error of a call refused because the bulkhead's wait queue was full
/// (retryable: the event comes back after the retry policy's backoff).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bulkhead full: {max_concurrent} calls running and {max_waiting} waiting")]
pub struct BulkheadFull {
    /// The bound on concurrent calls.
    pub max_concurrent: usize,
    /// The bound on waiting calls.
    pub max_waiting: usize,
}

/// Lets at most `max_concurrent` calls of the wrapped handler run at once,
/// independent of other handlers on the same subscription. Further calls
/// wait, up to `max_waiting` of them; a call beyond that fails at once with a
/// retryable [`BulkheadFull`].
///
/// Each handler the layer wraps gets a bulkhead of its own.
///
/// ```
/// use busline_layers::BulkheadLayer;
/// let layer = BulkheadLayer::new(4).with_max_waiting(16);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct BulkheadLayer {
    max_concurrent: usize,
    max_waiting: usize,
}

impl BulkheadLayer {
    /// At most `max_concurrent` (at least 1) concurrent calls; by default as
    /// many may wait.
    pub fn new(max_concurrent: usize) -> Self {
        let max_concurrent = max_concurrent.max(1);
        Self {
            max_concurrent,
            max_waiting: max_concurrent,
        }
    }

    /// Sets how many calls may wait for a slot (0: none wait, a call that
    /// finds no free slot fails at once).
    pub fn with_max_waiting(mut self, max_waiting: usize) -> Self {
        self.max_waiting = max_waiting;
        self
    }
}

impl<H> Layer<H> for BulkheadLayer {
    type Service = Bulkhead<H>;

    fn layer(&self, inner: H) -> Bulkhead<H> {
        Bulkhead {
            inner: Arc::new(inner),
            permits: Arc::new(Semaphore::new(self.max_concurrent)),
            waiting: Arc::new(AtomicUsize::new(0)),
            max_concurrent: self.max_concurrent,
            max_waiting: self.max_waiting,
        }
    }
}

/// A handler behind a bulkhead; made by [`BulkheadLayer`].
#[derive(Debug)]
pub struct Bulkhead<H> {
    inner: Arc<H>,
    permits: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    max_concurrent: usize,
    max_waiting: usize,
}

impl<H> Bulkhead<H> {
    /// Calls running now.
    pub fn running(&self) -> usize {
        self.max_concurrent - self.permits.available_permits()
    }

    /// Calls waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}

/// Takes a place in the wait queue, if there is one; gives it back on drop.
struct Waiting(Arc<AtomicUsize>);

impl Waiting {
    fn enter(count: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Waiting(count.clone()))
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<E: Event, H: EventService<E>> EventService<E> for Bulkhead<H> {
    type Future = BoxFuture<'static, Result<(), HandlerError>>;

    fn call(&self, event: DomainEvent<E>, ctx: Context) -> Self::Future {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            let call = self.inner.call(event, ctx);
            return Box::pin(async move {
                let result = call.await;
                drop(permit);
                result
            });
        }
        let Some(place) = Waiting::enter(&self.waiting, self.max_waiting) else {
            let full = BulkheadFull {
                max_concurrent: self.max_concurrent,
                max_waiting: self.max_waiting,
            };
            return Box::pin(std::future::ready(Err(HandlerError::retryable(full))));
        };
        let (inner, permits) = (self.inner.clone(), self.permits.clone());
        Box::pin(async move {
            let permit = permits.acquire_owned().await.map_err(HandlerError::retryable)?;
            drop(place);
            let result = inner.call(event, ctx).await;
            drop(permit);
            result
        })
    }

    fn gate(&self) -> Option<Gate> {
        self.inner.gate()
    }
}
