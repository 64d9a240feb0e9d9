//! [`EventService`]: a handler with its state bound, the unit that layers
//! wrap and the router runs.

use std::future::Future;

use super::{Context, Gate, HandlerError};
use crate::{DomainEvent, Event};

/// Handles events of type `E` with everything it needs already bound: what a
/// [`Handler`](super::Handler) becomes with its state
/// ([`Handler::with_state`](super::Handler::with_state)), and what a
/// [`Layer`](super::Layer) wraps (a timeout, a bulkhead, a circuit breaker,
/// tracing, metrics).
///
/// Applications write [`Handler`](super::Handler)s (async fns and closures);
/// implement `EventService` for middleware, or for a handler type that
/// holds its own state. Every `EventService` is also a `Handler`, so it can be
/// given to [`Router::on`](super::Router::on) as it is.
///
/// ```
/// use busline_core::{Context, DomainEvent, Event, EventService, HandlerError};
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Ping;
/// # impl Event for Ping { const TYPE: &'static str = "ping"; }
///
/// /// Counts the pings it sees.
/// struct Counter(Arc<AtomicU64>);
///
/// impl EventService<Ping> for Counter {
///     type Future = std::future::Ready<Result<(), HandlerError>>;
///     fn call(&self, _event: DomainEvent<Ping>, _ctx: Context) -> Self::Future {
///         self.0.fetch_add(1, Ordering::Relaxed);
///         std::future::ready(Ok(()))
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a busline event service for events of type `{E}`",
    label = "not an `EventService<{E}>`",
    note = "a layer wraps an `EventService`: turn a handler into one with `handler.with_state(state)` or, for a handler without state, `handler.into_service()`"
)]
pub trait EventService<E: Event>: Send + Sync + 'static {
    /// The future a call returns.
    type Future: Future<Output = Result<(), HandlerError>> + Send + 'static;

    /// Handles one event.
    fn call(&self, event: DomainEvent<E>, ctx: Context) -> Self::Future;

    /// A gate the router awaits before it takes the next delivery from this
    /// service's subscription (the topic it is registered on), or `None`
    /// (the default) for a service that never holds consumption back.
    ///
    /// A consumer circuit breaker closes its gate while open, so that events
    /// wait in the broker instead of using up retry attempts. Asked once,
    /// when the router starts. A service that wraps another (a
    /// [`Layer`](super::Layer)'s) forwards its inner service's gate unless it
    /// has one of its own.
    fn gate(&self) -> Option<Gate> {
        None
    }
}

impl<E: Event, T: EventService<E> + ?Sized> EventService<E> for std::sync::Arc<T> {
    type Future = T::Future;

    fn call(&self, event: DomainEvent<E>, ctx: Context) -> Self::Future {
        (**self).call(event, ctx)
    }

    fn gate(&self) -> Option<Gate> {
        (**self).gate()
    }
}
