//! Errors, one type per operation, each with a kind that says what went wrong
//! and with which topic.

use std::fmt;

use thiserror::Error;

/// A boxed error from a broker client or a codec.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An envelope that cannot be written or read: a missing or malformed
/// attribute. A message that fails to read is a poison message and is
/// dead-lettered with this error as the reason text.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// A required attribute is absent.
    #[error("envelope attribute `{attribute}` is missing")]
    Missing {
        /// Attribute name without prefix.
        attribute: String,
    },
    /// An attribute has a value that cannot be read.
    #[error("envelope attribute `{attribute}` is invalid: {reason}")]
    Invalid {
        /// Attribute name without prefix.
        attribute: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An attribute appears twice.
    #[error("envelope attribute `{attribute}` appears more than once")]
    Duplicate {
        /// Attribute name without prefix.
        attribute: String,
    },
    /// An attribute or extension name outside CloudEvents' `a-z0-9`.
    #[error("`{name}` is not a valid CloudEvents attribute name (lower-case a-z0-9 only)")]
    InvalidName {
        /// The offending name.
        name: String,
    },
    /// A user extension uses a name the envelope sets itself.
    #[error("extension `{name}` is reserved by the envelope")]
    Reserved {
        /// The offending name.
        name: String,
    },
    /// The message claims a CloudEvents version other than 1.0.
    #[error("unsupported CloudEvents specversion `{0}` (expected 1.0)")]
    UnsupportedSpecVersion(String),
    /// A decorator of the bus refused an envelope that reads well (the
    /// signature check of busline-layers' `SignedBus`); the router
    /// dead-letters the delivery under `reason`.
    #[error("{detail}")]
    Refused {
        /// The dead-letter reason the refusal asks for.
        reason: crate::DeadLetterReason,
        /// Why, for the dead letter's error text.
        detail: String,
    },
}

impl EnvelopeError {
    pub(crate) fn invalid(attribute: &str, reason: impl Into<String>) -> Self {
        EnvelopeError::Invalid {
            attribute: attribute.into(),
            reason: reason.into(),
        }
    }
}

/// Why a publish failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishErrorKind {
    /// The payload could not be encoded.
    Encode,
    /// The envelope is invalid (see the source error).
    InvalidEnvelope,
    /// The broker refused the event (negative confirm, reject).
    Rejected,
    /// The broker could not route the event anywhere.
    Unroutable,
    /// No confirmation in time; the event may or may not have been stored.
    Timeout,
    /// The connection to the broker failed.
    Connection,
    /// The bus was shut down.
    Closed,
    /// Anything else the broker client reported.
    Other,
}

impl PublishErrorKind {
    /// Whether a publish that failed this way may pass if tried again: no
    /// confirmation in time, a broken connection, an unclassified broker
    /// error. Encoding errors, invalid envelopes, unroutable events,
    /// rejections and a closed bus are not retried.
    pub fn is_transient(self) -> bool {
        matches!(self, Self::Timeout | Self::Connection | Self::Other)
    }
}

impl fmt::Display for PublishErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Encode => "payload could not be encoded",
            Self::InvalidEnvelope => "invalid envelope",
            Self::Rejected => "rejected by the broker",
            Self::Unroutable => "unroutable",
            Self::Timeout => "no confirmation in time",
            Self::Connection => "connection to the broker failed",
            Self::Closed => "the bus is shut down",
            Self::Other => "broker error",
        })
    }
}

macro_rules! operation_error {
    ($(#[$doc:meta])* $name:ident, $kind:ty, $verb:literal) => {
        $(#[$doc])*
        #[derive(Debug, Error)]
        // The source is not repeated here: `source()` returns it, and
        // reporters (`ErrorChain`, anyhow, eyre) print it from there.
        #[error("{} topic `{topic}` failed: {kind}", $verb)]
        pub struct $name {
            kind: $kind,
            topic: String,
            #[source]
            source: Option<BoxError>,
        }

        impl $name {
            /// An error of `kind` on `topic`.
            pub fn new(kind: $kind, topic: impl Into<String>) -> Self {
                Self { kind, topic: topic.into(), source: None }
            }

            /// Attaches the underlying error.
            pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
                self.source = Some(source.into());
                self
            }

            /// What went wrong.
            pub fn kind(&self) -> $kind {
                self.kind
            }

            /// The topic of the operation.
            pub fn topic(&self) -> &str {
                &self.topic
            }
        }
    };
}

operation_error!(
    /// A publish that did not reach the broker, or whose fate is unknown
    /// (`Timeout`). An `Ok` from publish means the broker has the event.
    PublishError,
    PublishErrorKind,
    "publish to"
);

/// Why a subscription (or provisioning) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscribeErrorKind {
    /// The topic or group name is not acceptable to the broker.
    InvalidName,
    /// Declaring the topology failed.
    Topology,
    /// The connection to the broker failed.
    Connection,
    /// The bus was shut down.
    Closed,
    /// The backend does not offer this operation.
    Unsupported,
    /// Anything else the broker client reported.
    Other,
}

impl fmt::Display for SubscribeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidName => "invalid topic or group name",
            Self::Topology => "topology could not be declared",
            Self::Connection => "connection to the broker failed",
            Self::Closed => "the bus is shut down",
            Self::Unsupported => "not supported by this backend",
            Self::Other => "broker error",
        })
    }
}

operation_error!(
    /// Subscribing to or provisioning a (topic, group) failed.
    SubscribeError,
    SubscribeErrorKind,
    "subscribe to"
);

/// Why settling a delivery (ack, nack, dead-letter) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SettleErrorKind {
    /// The dead letter could not be published; the delivery was returned to
    /// the broker instead and will come again.
    DeadLetterPublish,
    /// The connection or channel the delivery came on is gone; the broker
    /// redelivers it.
    Connection,
    /// The bus was shut down.
    Closed,
    /// Anything else the broker client reported.
    Other,
}

impl fmt::Display for SettleErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::DeadLetterPublish => "dead letter could not be published",
            Self::Connection => "connection lost; the broker will redeliver",
            Self::Closed => "the bus is shut down",
            Self::Other => "broker error",
        })
    }
}

operation_error!(
    /// Settling a delivery failed. Settling is at-least-once: a failed ack
    /// means the event may come again, never that it is lost.
    SettleError,
    SettleErrorKind,
    "settling a delivery of"
);

/// Why a running subscription stopped delivering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsumeErrorKind {
    /// The connection failed and could not be restored.
    Connection,
    /// The bus was shut down.
    Closed,
    /// The broker keeps sending a message the client library cannot parse
    /// (e.g. a header name that is not UTF-8 for lapin), and each time the
    /// client drops its connection: the subscription gave up after a
    /// bounded number of such losses in a row instead of reconnecting
    /// forever. The message is still in the queue; the backend's
    /// documentation says how to move it aside.
    Unparseable,
    /// Anything else the broker client reported.
    Other,
}

impl fmt::Display for ConsumeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connection => "connection failed",
            Self::Closed => "the bus is shut down",
            Self::Unparseable => "a message the client cannot parse blocks the queue",
            Self::Other => "broker error",
        })
    }
}

operation_error!(
    /// A subscription's stream failed.
    ConsumeError,
    ConsumeErrorKind,
    "consuming"
);

/// A configuration that cannot be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The URL is not a URL busline understands.
    #[error("invalid bus URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL with credentials redacted.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// No backend for this scheme is compiled in.
    #[error("no backend for URL scheme `{scheme}`: {hint}")]
    UnsupportedScheme {
        /// The scheme.
        scheme: String,
        /// Which cargo feature would provide it.
        hint: String,
    },
    /// A required environment variable is absent.
    #[error("environment variable `{0}` is not set")]
    MissingEnv(String),
    /// The TOML or section could not be read.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// The codec name is unknown or not compiled in.
    #[error("unknown codec `{0}` (built in: json, msgpack with the `msgpack` feature)")]
    UnknownCodec(String),
    /// The backend failed to connect.
    #[error("connecting to {url} failed")]
    Connect {
        /// The URL with credentials redacted.
        url: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
}

/// An error and every error under it as one line, `outer: cause: root`:
/// busline's errors leave their causes out of `Display` and return them from
/// [`source`](std::error::Error::source), as the Rust API guidelines ask, so
/// a log line that shows only `Display` loses them. Log with this, or with
/// a reporter such as anyhow's `{:#}`.
///
/// ```
/// use busline_core::{ErrorChain, PublishError, PublishErrorKind};
/// let io = std::io::Error::other("connection reset");
/// let e = PublishError::new(PublishErrorKind::Connection, "orders").with_source(io);
/// assert_eq!(
///     ErrorChain(&e).to_string(),
///     format!("{e}: connection reset"),
/// );
/// ```
#[derive(Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.0, f)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

impl fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
