//! [`RateLimitLayer`]: at most so many calls per second of one handler.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use busline_core::{Context, DomainEvent, Event, EventService, Gate, HandlerError, Layer};
use futures::future::BoxFuture;
use tokio::time::Instant;

/// Starts calls of the wrapped handler at most `per_second` times a second
/// on average, with bursts of up to `burst` calls (default 1: evenly
/// spaced). A call over the rate waits for its slot (it does not fail), so
/// the subscription's in-flight bound applies backpressure to the broker.
/// Waiting calls start in arrival order; one that is cancelled while it
/// waits (a handler timeout, shutdown) gives its slot back, so the calls
/// after it are not held back by it.
///
/// Each handler the layer wraps gets a limiter of its own; it limits one
/// process (one group member), not the group.
///
/// ```
/// use busline_layers::RateLimitLayer;
/// let layer = RateLimitLayer::per_second(100.0).with_burst(10);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct RateLimitLayer {
    interval: Duration,
    burst: u32,
}

impl RateLimitLayer {
    /// At most `per_second` calls a second (must be positive).
    pub fn per_second(per_second: f64) -> Self {
        assert!(
            per_second > 0.0 && per_second.is_finite(),
            "a rate limit must be positive"
        );
        Self {
            interval: Duration::from_secs_f64(1.0 / per_second),
            burst: 1,
        }
    }

    /// Allows bursts of up to `burst` calls (at least 1) after a quiet
    /// time.
    pub fn with_burst(mut self, burst: u32) -> Self {
        self.burst = burst.max(1);
        self
    }
}

impl<H> Layer<H> for RateLimitLayer {
    type Service = RateLimit<H>;

    fn layer(&self, inner: H) -> RateLimit<H> {
        RateLimit {
            inner: Arc::new(inner),
            limiter: Arc::new(Limiter {
                interval: self.interval,
                burst: self.burst,
                next: Mutex::new(None),
                queue: tokio::sync::Mutex::new(()),
            }),
        }
    }
}

/// A rate-limited handler; made by [`RateLimitLayer`].
#[derive(Debug)]
pub struct RateLimit<H> {
    inner: Arc<H>,
    limiter: Arc<Limiter>,
}

#[derive(Debug)]
struct Limiter {
    interval: Duration,
    burst: u32,
    /// The theoretical start of the next call (GCRA); `None` before the
    /// first.
    next: Mutex<Option<Instant>>,
    /// Calls that have to wait queue here in arrival order (tokio's mutex
    /// is fair), and only the head holds a reservation. A waiting call that
    /// is dropped thus holds at most the latest slot, which it can give
    /// back without shifting anyone else's.
    queue: tokio::sync::Mutex<()>,
}

/// A reservation taken: the slot's start and the state to restore if it
/// goes unused.
struct Slot {
    start: Instant,
    before: Option<Instant>,
    after: Instant,
}

impl Limiter {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.next.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the next slot if it starts now.
    fn try_now(&self) -> bool {
        let now = Instant::now();
        let mut next = self.lock();
        let (start, after) = self.next_slot(*next, now);
        if start > now {
            return false;
        }
        *next = Some(after);
        true
    }

    /// Reserves the next slot, however late it starts.
    fn reserve(&self) -> Slot {
        let now = Instant::now();
        let mut next = self.lock();
        let (start, after) = self.next_slot(*next, now);
        let slot = Slot {
            start,
            before: *next,
            after,
        };
        *next = Some(after);
        slot
    }

    /// The next slot's start and the theoretical arrival time after it.
    fn next_slot(&self, next: Option<Instant>, now: Instant) -> (Instant, Instant) {
        // GCRA: a call may start `tolerance` ahead of the theoretical
        // arrival time, which is what allows a burst.
        let tolerance = self.interval * (self.burst - 1);
        let tat = next.unwrap_or(now);
        let start = tat.checked_sub(tolerance).map_or(now, |t| t.max(now));
        (start, tat.max(start) + self.interval)
    }

    /// Gives back a slot whose call never started, unless a later
    /// reservation was made on top of it.
    fn release(&self, slot: &Slot) {
        let mut next = self.lock();
        if *next == Some(slot.after) {
            *next = slot.before;
        }
    }
}

/// Holds a waiting call's slot; dropped before the slot starts (the call
/// cancelled while it waits), it gives the slot back.
struct Reserved<'a> {
    limiter: &'a Limiter,
    slot: Option<Slot>,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if let Some(slot) = &self.slot {
            self.limiter.release(slot);
        }
    }
}

impl<E: Event, H: EventService<E>> EventService<E> for RateLimit<H> {
    type Future = BoxFuture<'static, Result<(), HandlerError>>;

    fn call(&self, event: DomainEvent<E>, ctx: Context) -> Self::Future {
        if self.limiter.try_now() {
            return Box::pin(self.inner.call(event, ctx));
        }
        let (inner, limiter) = (self.inner.clone(), self.limiter.clone());
        Box::pin(async move {
            {
                let _turn = limiter.queue.lock().await;
                let slot = limiter.reserve();
                let start = slot.start;
                let mut reserved = Reserved {
                    limiter: &limiter,
                    slot: Some(slot),
                };
                tokio::time::sleep_until(start).await;
                // The slot has started: it is used.
                reserved.slot = None;
            }
            inner.call(event, ctx).await
        })
    }

    fn gate(&self) -> Option<Gate> {
        self.inner.gate()
    }
}
