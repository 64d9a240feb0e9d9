//! [`RateLimitLayer`]: at most so many calls per second of one handler.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use busline_core::{Context, DomainEvent, Event, Gate, Handler, HandlerError, Layer};
use futures::future::BoxFuture;
use tokio::time::Instant;

/// Starts calls of the wrapped handler at most `per_second` times a second
/// on average, with bursts of up to `burst` calls (default 1: evenly
/// spaced). A call over the rate waits for its slot (it does not fail), so
/// the subscription's in-flight bound applies backpressure to the broker.
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
    type Handler = RateLimit<H>;

    fn layer(&self, inner: H) -> RateLimit<H> {
        RateLimit {
            inner: Arc::new(inner),
            interval: self.interval,
            burst: self.burst,
            next: Arc::new(Mutex::new(None)),
        }
    }
}

/// A rate-limited handler; made by [`RateLimitLayer`].
#[derive(Debug)]
pub struct RateLimit<H> {
    inner: Arc<H>,
    interval: Duration,
    burst: u32,
    /// The theoretical start of the next call (GCRA); `None` before the
    /// first.
    next: Arc<Mutex<Option<Instant>>>,
}

impl<H> RateLimit<H> {
    /// Reserves the next slot and returns when it starts.
    fn reserve(&self) -> Instant {
        let now = Instant::now();
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        // GCRA: a call may start `tolerance` ahead of the theoretical
        // arrival time, which is what allows a burst.
        let tolerance = self.interval * (self.burst - 1);
        let tat = next.unwrap_or(now);
        let start = tat.checked_sub(tolerance).map_or(now, |t| t.max(now));
        *next = Some(tat.max(start) + self.interval);
        start
    }
}

impl<E: Event, H: Handler<E>> Handler<E> for RateLimit<H> {
    type Future = BoxFuture<'static, Result<(), HandlerError>>;

    fn call(&self, event: DomainEvent<E>, ctx: Context) -> Self::Future {
        let start = self.reserve();
        if start <= Instant::now() {
            return Box::pin(self.inner.call(event, ctx));
        }
        let inner = self.inner.clone();
        Box::pin(async move {
            tokio::time::sleep_until(start).await;
            inner.call(event, ctx).await
        })
    }

    fn gate(&self) -> Option<Gate> {
        self.inner.gate()
    }
}
