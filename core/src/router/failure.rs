//! How a handler fails: [`HandlerError`] and what a handler may return.

use std::fmt;

use crate::BoxError;

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
/// Anything that converts into a [`BoxError`] converts into a retryable
/// `HandlerError`: every `std::error::Error`, `anyhow::Error`, `String` and
/// `&str`. So `?` works in handlers, and a handler may return
/// `anyhow::Result<()>`; wrap with [`HandlerError::permanent`] for errors
/// that retrying cannot fix.
///
/// ```
/// use busline_core::{FailureKind, HandlerError};
/// fn parse(s: &str) -> Result<u32, HandlerError> {
///     Ok(s.parse::<u32>()?)
/// }
/// assert_eq!(parse("x").unwrap_err().kind(), FailureKind::Retryable);
/// let from_anyhow: HandlerError = anyhow::anyhow!("pool exhausted").into();
/// assert_eq!(from_anyhow.to_string(), "pool exhausted");
/// ```
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

// Not `From<E: std::error::Error>`: that bound leaves out `anyhow::Error`,
// which is no `std::error::Error` but converts into a `BoxError`.
impl<E: Into<BoxError>> From<E> for HandlerError {
    fn from(error: E) -> Self {
        Self::retryable(error)
    }
}

/// What a handler may return: `()` (handled), or `Result<(), E>` for any
/// `E` that converts into a [`HandlerError`] (`HandlerError` itself,
/// `anyhow::Error`, any `std::error::Error`).
#[diagnostic::on_unimplemented(
    message = "a busline handler cannot return `{Self}`",
    label = "returns `{Self}`",
    note = "a handler returns `()` or `Result<(), E>` where `E` converts into `HandlerError` (`HandlerError`, `anyhow::Error`, any `std::error::Error`)"
)]
pub trait IntoHandlerResult {
    /// The result the router settles the delivery by.
    fn into_handler_result(self) -> Result<(), HandlerError>;
}

impl IntoHandlerResult for () {
    fn into_handler_result(self) -> Result<(), HandlerError> {
        Ok(())
    }
}

impl<E: Into<HandlerError>> IntoHandlerResult for Result<(), E> {
    fn into_handler_result(self) -> Result<(), HandlerError> {
        self.map_err(Into::into)
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
        // The whole chain: this text is the dead letter's error.
        fmt::Display::fmt(&crate::ErrorChain(&*self.error), f)
    }
}
