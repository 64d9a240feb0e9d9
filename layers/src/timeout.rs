//! [`TimeoutLayer`]: a time limit per handler call; a call that runs out of
//! time is a retryable failure.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use busline_core::{Context, DomainEvent, Event, EventService, Gate, HandlerError, Layer};
use pin_project_lite::pin_project;

/// The error of a handler call that ran out of time (retryable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("handler timed out after {0:?}")]
pub struct TimedOut(pub Duration);

/// Limits each call of the wrapped handler to `limit`; on expiry the call is
/// dropped (cancelled) and fails with a retryable [`TimedOut`], so the event
/// is redelivered after the retry policy's backoff.
///
/// The router's own `handler_timeout` only covers calls that did not finish
/// on their first poll; this layer covers every call and can differ per
/// handler.
///
/// ```
/// use std::time::Duration;
/// use busline_layers::TimeoutLayer;
/// let layer = TimeoutLayer::new(Duration::from_secs(5));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    limit: Duration,
}

impl TimeoutLayer {
    /// A time limit of `limit` per call.
    pub fn new(limit: Duration) -> Self {
        Self { limit }
    }
}

impl<H> Layer<H> for TimeoutLayer {
    type Service = Timeout<H>;

    fn layer(&self, inner: H) -> Timeout<H> {
        Timeout {
            inner,
            limit: self.limit,
        }
    }
}

/// A handler under a time limit; made by [`TimeoutLayer`].
#[derive(Debug, Clone)]
pub struct Timeout<H> {
    inner: H,
    limit: Duration,
}

impl<E: Event, H: EventService<E>> EventService<E> for Timeout<H> {
    type Future = TimeoutFuture<H::Future>;

    fn call(&self, event: DomainEvent<E>, ctx: Context) -> Self::Future {
        TimeoutFuture {
            inner: tokio::time::timeout(self.limit, self.inner.call(event, ctx)),
            limit: self.limit,
        }
    }

    fn gate(&self) -> Option<Gate> {
        self.inner.gate()
    }
}

pin_project! {
    /// The future of a [`Timeout`] call.
    pub struct TimeoutFuture<F> {
        #[pin]
        inner: tokio::time::Timeout<F>,
        limit: Duration,
    }
}

impl<F: Future<Output = Result<(), HandlerError>>> Future for TimeoutFuture<F> {
    type Output = Result<(), HandlerError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.poll(cx) {
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            Poll::Ready(Err(_)) => Poll::Ready(Err(HandlerError::retryable(TimedOut(*this.limit)))),
            Poll::Pending => Poll::Pending,
        }
    }
}
