//! One error type with a kind.

use std::fmt;

use busline_core::BoxError;

/// What went wrong in the outbox, the relay or the inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutboxErrorKind {
    /// The database refused a statement or could not be reached.
    Database,
    /// The event could not be encoded or its envelope is invalid.
    Encode,
    /// A table name that is not a plain identifier.
    InvalidTableName,
    /// The relay's task panicked or was cancelled.
    RelayDied,
}

impl fmt::Display for OutboxErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Database => "database error",
            Self::Encode => "the event cannot be encoded",
            Self::InvalidTableName => "invalid table name",
            Self::RelayDied => "the relay task died",
        })
    }
}

/// An outbox, relay or inbox error.
#[derive(Debug, thiserror::Error)]
#[error("outbox: {kind}")]
pub struct OutboxError {
    kind: OutboxErrorKind,
    #[source]
    source: Option<BoxError>,
}

impl OutboxError {
    pub(crate) fn new(kind: OutboxErrorKind) -> Self {
        Self { kind, source: None }
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    pub(crate) fn database(e: sqlx::Error) -> Self {
        Self::new(OutboxErrorKind::Database).with_source(e)
    }

    /// What went wrong.
    pub fn kind(&self) -> OutboxErrorKind {
        self.kind
    }
}
