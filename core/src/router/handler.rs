//! Typed handlers: plain async functions or types implementing [`Handler`].

use std::fmt;
use std::future::Future;

use super::Gate;
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

    /// A gate the router awaits before it takes the next delivery from this
    /// handler's subscription (the topic the handler is registered on), or
    /// `None` (the default) for a handler that never holds consumption back.
    ///
    /// A consumer circuit breaker closes its gate while open, so that events
    /// wait in the broker instead of using up retry attempts. Asked once,
    /// when the router starts. A handler that wraps another (a
    /// [`Layer`](super::Layer)'s handler) forwards its inner handler's gate
    /// unless it has one of its own.
    fn gate(&self) -> Option<Gate> {
        None
    }
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
    /// Not a failure: the handler declined the event on purpose (an
    /// idempotent consumer's duplicate, say). The event is acknowledged and
    /// counted as skipped, never retried or dead-lettered.
    Skipped,
}

/// A handler's failure: retryable (redelivered with backoff, then
/// dead-lettered) or permanent (dead-lettered at once); or a deliberate
/// [`skip`](HandlerError::skip) (acknowledged and counted as skipped).
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

    /// Declines the event without failing: the router acknowledges it and
    /// counts it as skipped with `reason` (a short, stable, snake_case label
    /// such as `"duplicate"`, used as a metrics label).
    ///
    /// ```
    /// use busline_core::{FailureKind, HandlerError};
    /// let skip = HandlerError::skip("duplicate");
    /// assert_eq!(skip.kind(), FailureKind::Skipped);
    /// assert_eq!(skip.skip_reason(), Some("duplicate"));
    /// assert_eq!(HandlerError::permanent("bad").skip_reason(), None);
    /// ```
    pub fn skip(reason: &'static str) -> Self {
        Self {
            kind: FailureKind::Skipped,
            error: Box::new(Skip(reason)),
        }
    }

    /// Retryable, permanent or skipped.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// Whether it is permanent.
    pub fn is_permanent(&self) -> bool {
        self.kind == FailureKind::Permanent
    }

    /// Whether it is retryable.
    pub fn is_retryable(&self) -> bool {
        self.kind == FailureKind::Retryable
    }

    /// The reason of a [`skip`](HandlerError::skip), `None` for failures.
    pub fn skip_reason(&self) -> Option<&'static str> {
        match self.kind {
            FailureKind::Skipped => Some(self.error.downcast_ref::<Skip>().map_or("skipped", |s| s.0)),
            _ => None,
        }
    }

    /// The underlying error.
    pub fn error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self.error.as_ref()
    }
}

/// The error inside a skip: its reason.
#[derive(Debug)]
struct Skip(&'static str);

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "skipped: {}", self.0)
    }
}

impl std::error::Error for Skip {}

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
