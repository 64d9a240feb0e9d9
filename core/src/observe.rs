//! [`RouterObserver`]: what a router decided for each delivery, for metrics,
//! audit layers and the test harness. Its own module, below both the router
//! and the bus (which carries observers for every router built on it).

use std::time::Duration;

use crate::{DeadLetterReason, RawEvent};

/// Sees every settlement decision a router makes, as it makes it. Register
/// with [`Router::observe`](crate::Router::observe) for one router, or
/// [`Bus::observed_by`](crate::Bus::observed_by) for every router built on
/// a bus; the metrics layer and the test harness are the main users.
///
/// Called inline on the consumer's hot path: keep it cheap and never block.
pub trait RouterObserver: Send + Sync + 'static {
    /// A delivery was settled as `settled` says.
    fn on_settled(&self, settled: &Settled<'_>);

    /// Whether this observer wants [`on_handled`](Self::on_handled). It
    /// costs a copy of every event (and an encoding of every upcast one),
    /// so it is off unless asked for; asked once, when a router starts.
    fn wants_handled_events(&self) -> bool {
        false
    }

    /// A handler returned `Ok` for `handled.event`, as the handler saw it:
    /// an upcast event at the handled version, its payload encoded again
    /// from the upcast value. Called before the delivery is acknowledged.
    fn on_handled(&self, handled: &Handled<'_>) {
        let _ = handled;
    }
}

/// An event a handler handled ([`RouterObserver::on_handled`]).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Handled<'a> {
    /// The topic it came from.
    pub topic: &'a str,
    /// The group that handled it.
    pub group: &'a str,
    /// The event as the handler saw it (type and version of the handler's
    /// `DomainEvent<E>`).
    pub event: &'a RawEvent,
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
    /// [`HandlerError::skip`](crate::HandlerError::skip) reason (such as
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
