//! Typed handlers: plain async functions or types implementing [`Handler`].

use std::fmt;
use std::future::Future;

use crate::{BoxError, Context, DomainEvent, Event};

/// Handles events of type `E`.
///
/// Any `async fn(DomainEvent<E>, Context) -> Result<(), HandlerError>` (or a
/// closure of that shape) is a handler. Implement the trait on a type for
/// handlers with state.
///
/// ```
/// use busline_core::{Context, DomainEvent, Event, HandlerError};
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// # struct OrderCreated { order_id: String }
/// # impl Event for OrderCreated { const TYPE: &'static str = "order.created"; }
/// async fn reserve_items(event: DomainEvent<OrderCreated>, _ctx: Context) -> Result<(), HandlerError> {
///     if event.data.order_id.is_empty() {
///         return Err(HandlerError::permanent("order without id"));
///     }
///     Ok(())
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a busline handler for events of type `{E}`",
    label = "not a handler of `{E}`",
    note = "a handler is an `async fn(DomainEvent<{E}>, Context) -> Result<(), HandlerError>`, a closure of that shape, or a type implementing `Handler<{E}>`",
    note = "check the argument types (`DomainEvent<{E}>` then `Context`, both by value) and that the future is `Send + 'static`"
)]
pub trait Handler<E: Event>: Send + Sync + 'static {
    /// The future a call returns.
    type Future: Future<Output = Result<(), HandlerError>> + Send + 'static;

    /// Handles one event.
    fn call(&self, event: DomainEvent<E>, ctx: Context) -> Self::Future;
}

impl<E, F, Fut> Handler<E> for F
where
    E: Event,
    F: Fn(DomainEvent<E>, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    type Future = Fut;

    fn call(&self, event: DomainEvent<E>, ctx: Context) -> Fut {
        self(event, ctx)
    }
}

/// Whether a failure may pass if the event is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Try again after the retry policy's backoff (the default for `?`).
    Retryable,
    /// Trying again cannot help: dead-letter now.
    Permanent,
}

/// A handler's failure: retryable (redelivered with backoff, then
/// dead-lettered) or permanent (dead-lettered at once).
///
/// Any `std::error::Error` converts into a retryable `HandlerError`, so `?`
/// works in handlers; wrap with [`HandlerError::permanent`] for errors that
/// retrying cannot fix.
pub struct HandlerError {
    kind: FailureKind,
    error: BoxError,
}

impl HandlerError {
    /// A failure that may pass on another attempt.
    pub fn retryable(error: impl Into<BoxError>) -> Self {
        Self {
            kind: FailureKind::Retryable,
            error: error.into(),
        }
    }

    /// A failure that another attempt cannot fix.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        Self {
            kind: FailureKind::Permanent,
            error: error.into(),
        }
    }

    /// Retryable or permanent.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// Whether it is permanent.
    pub fn is_permanent(&self) -> bool {
        self.kind == FailureKind::Permanent
    }

    /// The underlying error.
    pub fn error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self.error.as_ref()
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(error: E) -> Self {
        Self::retryable(error)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("kind", &self.kind)
            .field("error", &self.error)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)?;
        let mut source = self.error.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}
