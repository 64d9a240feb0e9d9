//! tower interop: a busline [`EventService`] as a `tower::Service`, a tower
//! service as an [`EventService`], and any `tower::Layer` as a busline
//! [`Layer`], so tower's own middleware (timeouts, concurrency limits, load
//! shedding, `ServiceBuilder` stacks) wraps handlers as it is.

use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use futures::future::BoxFuture;
use futures::TryFutureExt;
use tower_service::Service;

use super::{Context, EventService, Gate, HandlerError, Layer};
use crate::{BoxError, DomainEvent, Event};

/// The request of a tower service made from busline handlers: the event and
/// the delivery's context.
#[derive(Debug)]
#[non_exhaustive]
pub struct Incoming<E> {
    /// The decoded event.
    pub event: DomainEvent<E>,
    /// The delivery's context.
    pub ctx: Context,
}

impl<E> Incoming<E> {
    /// An event with its context.
    pub fn new(event: DomainEvent<E>, ctx: Context) -> Self {
        Self { event, ctx }
    }
}

/// An [`EventService`] as a `tower::Service<Incoming<E>>`: always ready,
/// cheap to clone (one `Arc`). Its error is a [`BoxError`] (what tower's
/// middleware expects) holding the [`HandlerError`], whose kind
/// [`FromTower`] takes back out, so a permanent failure or a skip stays one
/// through a tower stack.
#[derive(Debug)]
pub struct TowerService<S>(Arc<S>);

impl<S> TowerService<S> {
    /// `service` as a tower service.
    pub fn new(service: S) -> Self {
        Self(Arc::new(service))
    }
}

impl<S> Clone for TowerService<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<E: Event, S: EventService<E>> Service<Incoming<E>> for TowerService<S> {
    type Response = ();
    type Error = BoxError;
    type Future = futures::future::MapErr<S::Future, fn(HandlerError) -> BoxError>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Incoming<E>) -> Self::Future {
        self.0
            .call(request.event, request.ctx)
            .map_err(Failed::boxed as fn(HandlerError) -> BoxError)
    }
}

/// A [`HandlerError`] inside a tower stack.
#[derive(Debug)]
struct Failed(HandlerError);

impl Failed {
    fn boxed(error: HandlerError) -> BoxError {
        Box::new(Failed(error))
    }

    /// The handler's own error if `error` is one, else a retryable failure
    /// (tower's `Elapsed`, `Overloaded`, ...).
    fn unboxed(error: BoxError) -> HandlerError {
        match error.downcast::<Failed>() {
            Ok(failed) => failed.0,
            Err(other) => HandlerError::retryable(other),
        }
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Failed {}

/// A tower service over `Incoming<E>` as an [`EventService`]: each event
/// readies a clone of it and calls that (axum's way), so middleware whose
/// clones share their state (a concurrency limit's semaphore) applies across
/// calls. `H` is the busline service inside, whose [`gate`](EventService::gate)
/// is forwarded.
pub struct FromTower<T, H> {
    service: T,
    inner: Arc<H>,
}

impl<T: std::fmt::Debug, H> std::fmt::Debug for FromTower<T, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FromTower")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl<E, T, H> EventService<E> for FromTower<T, H>
where
    E: Event,
    T: Service<Incoming<E>, Response = ()> + Clone + Send + Sync + 'static,
    T::Error: Into<BoxError>,
    T::Future: Send + 'static,
    H: EventService<E>,
{
    type Future = BoxFuture<'static, Result<(), HandlerError>>;

    fn call(&self, event: DomainEvent<E>, ctx: Context) -> Self::Future {
        let mut service = self.service.clone();
        Box::pin(async move {
            let unboxed = |e: T::Error| Failed::unboxed(e.into());
            std::future::poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(unboxed)?;
            service.call(Incoming::new(event, ctx)).await.map_err(unboxed)
        })
    }

    fn gate(&self) -> Option<Gate> {
        self.inner.gate()
    }
}

/// Any `tower::Layer` (or a `tower::ServiceBuilder` stack) as a busline
/// [`Layer`]: for [`Router::layer`](super::Router::layer) or one handler.
/// The tower service it makes must be `Clone` (put `tower::buffer` in front
/// of one that is not). A handler's own [`HandlerError`] comes out as it went
/// in; the errors of tower's middleware (`Elapsed`, `Overloaded`) are
/// retryable failures.
///
/// ```
/// use std::time::Duration;
/// use busline_core::{DomainEvent, Event, Layer, TowerLayer, HandlerWithoutStateExt};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Ping;
/// # impl Event for Ping { const TYPE: &'static str = "ping"; }
/// async fn pong(_ping: DomainEvent<Ping>) {}
/// let limited = TowerLayer::new(tower::limit::ConcurrencyLimitLayer::new(4)).layer(pong.into_service());
/// # let _ = limited;
/// ```
#[derive(Debug, Clone)]
pub struct TowerLayer<L>(L);

impl<L> TowerLayer<L> {
    /// `layer`, usable where busline takes a [`Layer`].
    pub fn new(layer: L) -> Self {
        Self(layer)
    }
}

impl<H, L: tower_layer::Layer<TowerService<H>>> Layer<H> for TowerLayer<L> {
    type Service = FromTower<L::Service, H>;

    fn layer(&self, inner: H) -> Self::Service {
        let inner = TowerService::new(inner);
        FromTower {
            inner: inner.0.clone(),
            service: self.0.layer(inner),
        }
    }
}
