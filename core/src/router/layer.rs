//! [`Layer`]: wraps an event service into another, in the style of tower.

use super::{Context, EventService, Gate};
use crate::{DomainEvent, Event};

/// Wraps an [`EventService`] `H` into another: a timeout, a bulkhead, a
/// circuit breaker, tracing, metrics. One small type per idea; layers
/// compose with [`Stack`] (or [`Router::layer`](super::Router::layer) called
/// several times), and `Option<L>` is a layer that may be switched off.
///
/// A layer is applied once per registered handler (to the handler with its
/// state, a [`HandlerService`](super::HandlerService)), so state a layer makes
/// in [`layer`](Self::layer) (a bulkhead's permits, a breaker's window)
/// belongs to that one handler.
///
/// ```
/// use busline_core::{Context, DomainEvent, Event, EventService, HandlerError, Layer};
/// use futures::future::BoxFuture;
///
/// /// Logs every call.
/// struct LogLayer;
/// struct Log<H>(H);
///
/// impl<H> Layer<H> for LogLayer {
///     type Service = Log<H>;
///     fn layer(&self, inner: H) -> Log<H> { Log(inner) }
/// }
///
/// impl<E: Event, H: EventService<E>> EventService<E> for Log<H> {
///     type Future = BoxFuture<'static, Result<(), HandlerError>>;
///     fn call(&self, event: DomainEvent<E>, ctx: Context) -> Self::Future {
///         let id = event.id.clone();
///         let call = self.0.call(event, ctx);
///         Box::pin(async move {
///             let result = call.await;
///             println!("{id}: {}", if result.is_ok() { "ok" } else { "failed" });
///             result
///         })
///     }
///     fn gate(&self) -> Option<busline_core::Gate> { self.0.gate() }
/// }
/// ```
pub trait Layer<H> {
    /// The wrapping service.
    type Service;

    /// Wraps `inner`.
    fn layer(&self, inner: H) -> Self::Service;
}

/// The layer that wraps nothing: a router's default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Identity;

impl<H> Layer<H> for Identity {
    type Service = H;

    fn layer(&self, inner: H) -> H {
        inner
    }
}

/// Two layers in one: `Outer` wraps what `Inner` made.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stack<Inner, Outer> {
    inner: Inner,
    outer: Outer,
}

impl<Inner, Outer> Stack<Inner, Outer> {
    /// `outer` around `inner`.
    pub fn new(inner: Inner, outer: Outer) -> Self {
        Self { inner, outer }
    }
}

impl<H, Inner: Layer<H>, Outer: Layer<Inner::Service>> Layer<H> for Stack<Inner, Outer> {
    type Service = Outer::Service;

    fn layer(&self, inner: H) -> Self::Service {
        self.outer.layer(self.inner.layer(inner))
    }
}

/// A layer that may be switched off: `None` leaves the handler as it is.
impl<H, L: Layer<H>> Layer<H> for Option<L> {
    type Service = Either<L::Service, H>;

    fn layer(&self, inner: H) -> Self::Service {
        match self {
            Some(layer) => Either::Left(layer.layer(inner)),
            None => Either::Right(inner),
        }
    }
}

/// One of two services: what an `Option` layer makes.
#[derive(Debug, Clone)]
pub enum Either<A, B> {
    /// The first.
    Left(A),
    /// The second.
    Right(B),
}

impl<E: Event, A: EventService<E>, B: EventService<E>> EventService<E> for Either<A, B> {
    type Future = futures::future::Either<A::Future, B::Future>;

    fn call(&self, event: DomainEvent<E>, ctx: Context) -> Self::Future {
        match self {
            Either::Left(a) => futures::future::Either::Left(a.call(event, ctx)),
            Either::Right(b) => futures::future::Either::Right(b.call(event, ctx)),
        }
    }

    fn gate(&self) -> Option<Gate> {
        match self {
            Either::Left(a) => a.gate(),
            Either::Right(b) => b.gate(),
        }
    }
}
