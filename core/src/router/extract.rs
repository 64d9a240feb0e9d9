//! Extractors: what a handler's arguments take from a delivery.

use std::sync::Arc;

use super::{Context, HandlerError};
use crate::DomainEvent;

/// Takes a handler argument from the delivery's [`Context`] and the router's
/// state: every argument before the last. A refusal settles the delivery
/// by the error's kind, as a handler's failure would (dead-lettered at once
/// if permanent), without running the handler.
///
/// ```
/// use busline_core::{Context, FromContext, HandlerError};
///
/// /// The tenant named by the topic `tenant.<name>.orders`.
/// struct Tenant(String);
///
/// impl<S> FromContext<S> for Tenant {
///     fn from_context(ctx: &Context, _state: &S) -> Result<Self, HandlerError> {
///         match ctx.topic().split('.').nth(1) {
///             Some(name) => Ok(Tenant(name.to_owned())),
///             None => Err(HandlerError::permanent(format!("no tenant in topic `{}`", ctx.topic()))),
///         }
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a handler argument before the last: it is not an extractor",
    label = "not an extractor",
    note = "a handler's arguments are extractors (`Context`, `State<T>`, `Attempt`, `Topic`, or a type implementing `FromContext`), and the event, `DomainEvent<E>`, comes last"
)]
pub trait FromContext<S>: Sized {
    /// The argument, or why the handler cannot run.
    fn from_context(ctx: &Context, state: &S) -> Result<Self, HandlerError>;
}

/// Takes a handler's last argument: the event, [`DomainEvent<E>`]. Every
/// handler takes the event last, which is also how the router knows its
/// event type.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a handler's last argument: the last argument is the event, `DomainEvent<E>`",
    label = "not `DomainEvent<E>`",
    note = "a handler takes extractors (`Context`, `State<T>`, `Attempt`, `Topic`) first and the event, `DomainEvent<E>`, last"
)]
pub trait FromEvent<E, S>: Sized {
    /// The argument, or why the handler cannot run.
    fn from_event(event: DomainEvent<E>, ctx: Context, state: &S) -> Result<Self, HandlerError>;
}

impl<E, S> FromEvent<E, S> for DomainEvent<E> {
    fn from_event(event: DomainEvent<E>, _ctx: Context, _state: &S) -> Result<Self, HandlerError> {
        Ok(event)
    }
}

impl<S> FromContext<S> for Context {
    fn from_context(ctx: &Context, _state: &S) -> Result<Self, HandlerError> {
        Ok(ctx.clone())
    }
}

/// Part of the router's state ([`Router::with_state`](super::Router::with_state)),
/// cloned for the call: the whole state, or any `T: FromRef<S>` taken from it.
///
/// ```
/// use busline_core::{DomainEvent, Event, FromRef, State};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Ping;
/// # impl Event for Ping { const TYPE: &'static str = "ping"; }
/// #[derive(Clone)]
/// struct AppState { pool: Pool, service_name: &'static str }
/// #[derive(Clone)]
/// struct Pool;
///
/// impl FromRef<AppState> for Pool {
///     fn from_ref(state: &AppState) -> Pool { state.pool.clone() }
/// }
///
/// async fn record(State(_pool): State<Pool>, _ping: DomainEvent<Ping>) {}
/// async fn greet(State(app): State<AppState>, _ping: DomainEvent<Ping>) {
///     println!("{} got a ping", app.service_name);
/// }
/// # fn is_handler<T, S, E, H: busline_core::Handler<T, S, E>>(_: &H) {}
/// # is_handler::<_, AppState, Ping, _>(&record);
/// # is_handler::<_, AppState, Ping, _>(&greet);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct State<T>(pub T);

impl<S, T: FromRef<S>> FromContext<S> for State<T> {
    fn from_context(_ctx: &Context, state: &S) -> Result<Self, HandlerError> {
        Ok(State(T::from_ref(state)))
    }
}

/// Takes a part of the router's state `S` for a [`State`] extractor.
/// Every `Clone` state is its own part.
#[diagnostic::on_unimplemented(
    message = "`State<{Self}>` needs a router whose state has a `{Self}`, and this router's state is `{S}`",
    label = "no `{Self}` in state `{S}`",
    note = "give the router its state with `Router::new(bus, group).with_state(state)` before registering handlers that use it, and implement `FromRef<{S}> for {Self}` if `{Self}` is a part of it"
)]
pub trait FromRef<S> {
    /// The part, taken (cloned) from `state`.
    fn from_ref(state: &S) -> Self;
}

impl<T: Clone> FromRef<T> for T {
    fn from_ref(state: &T) -> Self {
        state.clone()
    }
}

/// Which delivery of the event this is: 1 for the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt(pub u32);

impl<S> FromContext<S> for Attempt {
    fn from_context(ctx: &Context, _state: &S) -> Result<Self, HandlerError> {
        Ok(Attempt(ctx.attempt()))
    }
}

/// The topic the event came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic(pub Arc<str>);

impl<S> FromContext<S> for Topic {
    fn from_context(ctx: &Context, _state: &S) -> Result<Self, HandlerError> {
        Ok(Topic(ctx.topic_arc()))
    }
}
