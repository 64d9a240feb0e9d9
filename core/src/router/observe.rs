//! [`RouterObserver`]: what a router decided for each delivery, for metrics
//! and audit layers.

use std::time::Duration;

use crate::DeadLetterReason;

/// Sees every settlement decision a router makes, as it makes it. Register
/// with [`Router::observe`](super::Router::observe); the metrics layer is
/// the main user.
///
/// Called inline on the consumer's hot path: keep it cheap and never block.
pub trait RouterObserver: Send + Sync + 'static {
    /// A delivery was settled as `settled` says.
    fn on_settled(&self, settled: &Settled<'_>);
}

/// One settlement decision.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Settled<'a> {
    /// The topic the delivery came from.
    pub topic: &'a str,
    /// The group handling it.
    pub group: &'a str,
    /// Its attempt number (1 for the first delivery).
    pub attempt: u32,
    /// What was decided.
    pub outcome: Outcome,
}

/// How a delivery was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Handled and acknowledged.
    Handled,
    /// Acknowledged without handling; `reason` is
    /// [`SKIP_UNKNOWN_EVENT_TYPE`] or a handler's
    /// [`HandlerError::skip`](super::HandlerError::skip) reason (such as
    /// `"duplicate"`).
    Skipped {
        /// Why.
        reason: &'static str,
    },
    /// Sent back for another attempt after `after`.
    Retried {
        /// The backoff.
        after: Duration,
    },
    /// Dead-lettered.
    DeadLettered {
        /// Why.
        reason: DeadLetterReason,
    },
    /// Returned to the broker unhandled at shutdown.
    Abandoned,
}

/// The skip reason of an event type with no handler in the group.
pub const SKIP_UNKNOWN_EVENT_TYPE: &str = "unknown_event_type";
