//! [`Handler`]: plain async fns and closures whose arguments are extractors,
//! in axum's model.

use std::future::Future;
use std::marker::PhantomData;

use futures::future::{Either, Map, Ready};
use futures::FutureExt;

use super::extract::{FromContext, FromEvent};
use super::{Context, EventService, Gate, HandlerError, IntoHandlerResult};
use crate::{DomainEvent, Event};

/// Handles events of type `E` with state `S`; `T` only tells the blanket
/// implementations apart (the extractor types).
///
/// Any async fn or closure is a handler whose arguments are
/// [extractors](super::FromContext) — [`Context`], [`State<T>`](super::State),
/// [`Attempt`](super::Attempt), [`Topic`](super::Topic) — followed by the event,
/// [`DomainEvent<E>`], last, and which returns `()` or `Result<(), E>` for
/// any `E` that converts into [`HandlerError`] (`anyhow::Result<()>` too).
/// A closure must be `Clone`: it is cloned for each call, so a `move`
/// closure may move what it captured into its `async move` block.
///
/// ```
/// use std::sync::Arc;
/// use busline_core::{Context, DomainEvent, Event, HandlerError, State};
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// # struct OrderCreated { order_id: String }
/// # impl Event for OrderCreated { const TYPE: &'static str = "order.created"; }
/// # #[derive(Clone, Default)] struct Pool;
/// # impl Pool { async fn insert(&self, _: &str) -> Result<(), std::io::Error> { Ok(()) } }
///
/// // An async fn: the event alone.
/// async fn log_order(event: DomainEvent<OrderCreated>) {
///     println!("order {}", event.data.order_id);
/// }
///
/// // State from the router (`Router::with_state`), an error type of its own.
/// async fn store_order(State(pool): State<Pool>, event: DomainEvent<OrderCreated>) -> Result<(), HandlerError> {
///     if event.data.order_id.is_empty() {
///         return Err(HandlerError::permanent("order without id"));
///     }
///     pool.insert(&event.data.order_id).await?;
///     Ok(())
/// }
///
/// // A closure capturing an `Arc`, returning `anyhow::Result`.
/// let pool = Arc::new(Pool);
/// let closure = move |ctx: Context, event: DomainEvent<OrderCreated>| {
///     let pool = pool.clone();
///     async move {
///         pool.insert(&event.data.order_id).await?;
///         ctx.attempt();
///         anyhow::Ok(())
///     }
/// };
/// # fn is_handler<T, S, E, H: busline_core::Handler<T, S, E>>(_: &H) {}
/// # is_handler::<_, (), OrderCreated, _>(&log_order);
/// # is_handler::<_, Pool, OrderCreated, _>(&store_order);
/// # is_handler::<_, (), OrderCreated, _>(&closure);
/// ```
// rustc shows these notes, not the one failed bound, for an async fn (the
// arities and `IsService` are all candidates); for a closure it names the
// failed bound itself. The `ui` tests pin both.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a busline handler",
    label = "not a handler",
    note = "the event, `DomainEvent<E>`, is a handler's last argument (busline 0.1 took `(DomainEvent<E>, Context)`: put `Context` first)",
    note = "the arguments before it are extractors: `Context`, `State<T>` (given by `Router::with_state`), `Attempt`, `Topic`, or types implementing `FromContext`",
    note = "a handler returns `()` or `Result<(), E>` where `E` converts into `HandlerError` (`anyhow::Error` and every `std::error::Error` do)",
    note = "its future must be `Send + 'static`: hold no `Rc`, `RefCell` borrow or `std::sync::MutexGuard` across an `.await`",
    note = "a closure must be `Clone` (it is cloned per event): capture `Arc`s, not values that cannot be cloned"
)]
pub trait Handler<T, S, E>: Send + Sync + Sized + 'static {
    /// The future a call returns.
    type Future: Future<Output = Result<(), HandlerError>> + Send + 'static;

    /// Handles one event, with the router's state.
    fn call(&self, event: DomainEvent<E>, ctx: Context, state: &S) -> Self::Future;

    /// The consumption gate of a handler that is an [`EventService`] (see
    /// [`EventService::gate`]); `None` for functions.
    fn gate(&self) -> Option<Gate> {
        None
    }

    /// This handler with its state bound: an [`EventService`], which
    /// layers wrap and any router runs, whatever its own state.
    fn with_state(self, state: S) -> HandlerService<Self, T, S> {
        HandlerService {
            handler: self,
            state,
            _extractors: PhantomData,
        }
    }
}

/// [`Handler::with_state`] for handlers that need no state: an
/// [`EventService`] to wrap in a layer by hand.
///
/// ```
/// use std::time::Duration;
/// use busline_core::{DomainEvent, Event, HandlerWithoutStateExt, Layer, Identity};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Ping;
/// # impl Event for Ping { const TYPE: &'static str = "ping"; }
/// async fn pong(_ping: DomainEvent<Ping>) {}
/// let service = Identity.layer(pong.into_service());
/// # let _ = service;
/// ```
pub trait HandlerWithoutStateExt<T, E>: Handler<T, (), E> {
    /// The handler as an [`EventService`].
    fn into_service(self) -> HandlerService<Self, T, ()>;
}

impl<H: Handler<T, (), E>, T, E> HandlerWithoutStateExt<T, E> for H {
    fn into_service(self) -> HandlerService<Self, T, ()> {
        self.with_state(())
    }
}

/// A [`Handler`] with its state: an [`EventService`]. Made by
/// [`Handler::with_state`] and [`HandlerWithoutStateExt::into_service`].
pub struct HandlerService<H, T, S> {
    handler: H,
    state: S,
    _extractors: PhantomData<fn() -> T>,
}

impl<H: Clone, T, S: Clone> Clone for HandlerService<H, T, S> {
    fn clone(&self) -> Self {
        Self {
            handler: self.handler.clone(),
            state: self.state.clone(),
            _extractors: PhantomData,
        }
    }
}

impl<H, T, S> std::fmt::Debug for HandlerService<H, T, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerService")
            .field("handler", &std::any::type_name::<H>())
            .finish_non_exhaustive()
    }
}

impl<H, T, S, E> EventService<E> for HandlerService<H, T, S>
where
    H: Handler<T, S, E>,
    T: 'static,
    S: Send + Sync + 'static,
    E: Event,
{
    type Future = H::Future;

    fn call(&self, event: DomainEvent<E>, ctx: Context) -> Self::Future {
        self.handler.call(event, ctx, &self.state)
    }

    fn gate(&self) -> Option<Gate> {
        self.handler.gate()
    }
}

/// The extractor types of a handler that is an [`EventService`] already.
#[doc(hidden)]
#[derive(Debug)]
pub enum IsService {}

impl<Svc: EventService<E>, S, E: Event> Handler<IsService, S, E> for Svc {
    type Future = Svc::Future;

    fn call(&self, event: DomainEvent<E>, ctx: Context, _state: &S) -> Self::Future {
        EventService::call(self, event, ctx)
    }

    fn gate(&self) -> Option<Gate> {
        EventService::gate(self)
    }
}

/// The future of a function handler: its own future, or the refusal of an
/// extractor.
type FnFuture<Fut, R> = Either<Ready<Result<(), HandlerError>>, Map<Fut, fn(R) -> Result<(), HandlerError>>>;

fn run<Fut: Future<Output = R>, R: IntoHandlerResult>(call: Fut) -> FnFuture<Fut, R> {
    Either::Right(call.map(R::into_handler_result as fn(R) -> Result<(), HandlerError>))
}

fn refuse<Fut, R>(error: HandlerError) -> FnFuture<Fut, R> {
    Either::Left(futures::future::ready(Err(error)))
}

macro_rules! impl_handler {
    ($($arg:ident),*; $last:ident) => {
        impl<F, Fut, R, S, E, $($arg,)* $last> Handler<($($arg,)* $last,), S, E> for F
        where
            F: FnOnce($($arg,)* $last) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = R> + Send + 'static,
            R: IntoHandlerResult + 'static,
            E: Event,
            $($arg: FromContext<S>,)*
            $last: FromEvent<E, S>,
        {
            type Future = FnFuture<Fut, R>;

            #[allow(non_snake_case)]
            fn call(&self, event: DomainEvent<E>, ctx: Context, state: &S) -> Self::Future {
                $(
                    let $arg = match $arg::from_context(&ctx, state) {
                        Ok(value) => value,
                        Err(refusal) => return refuse(refusal),
                    };
                )*
                let $last = match $last::from_event(event, ctx, state) {
                    Ok(value) => value,
                    Err(refusal) => return refuse(refusal),
                };
                run(self.clone()($($arg,)* $last))
            }
        }
    };
}

impl_handler!(; T1);
impl_handler!(T1; T2);
impl_handler!(T1, T2; T3);
impl_handler!(T1, T2, T3; T4);
impl_handler!(T1, T2, T3, T4; T5);
impl_handler!(T1, T2, T3, T4, T5; T6);
impl_handler!(T1, T2, T3, T4, T5, T6; T7);
