//! One delivery from arrival to settlement: the outcome table of DESIGN.md.
//!
//! The work is split so the consumer loop can do the common case inline:
//! [`begin`] decodes and routes (synchronous), the handler is polled once in
//! place, and only a handler that has to wait continues as a task of its own
//! ([`finish`]), under the handler timeout and shutdown's deadline.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::running::{RouteTable, Shared};
use super::{Context, HandlerError};
use crate::{Acker, DeadLetterReason, Delivery, RetryDecision, UnknownEventAction};

/// How a delivery is settled.
pub(crate) enum Decision {
    Ack,
    Skip,
    Retry { after: Duration, error: String },
    DeadLetter { reason: DeadLetterReason, error: String },
    Abandon,
}

/// What a delivery needs next.
pub(crate) enum Start {
    /// Settled without running a handler (poison, unknown type, refused).
    Settle(Acker, Decision),
    /// Run this handler call, then settle by its outcome.
    Run(Acker, BoxFuture<'static, Result<(), HandlerError>>),
}

/// The result of a handler call that ended: its own result or its panic.
type Ended = Result<Result<(), HandlerError>, Box<dyn Any + Send>>;

/// Reads, routes and decodes a delivery.
pub(crate) fn begin(delivery: Delivery, topic: &Arc<str>, routes: &RouteTable, shared: &Shared) -> Start {
    let (event, acker) = delivery.into_parts();
    let raw = match event {
        Ok(raw) => raw,
        Err(e) => {
            let decision = Decision::DeadLetter {
                reason: DeadLetterReason::MalformedEnvelope,
                error: e.to_string(),
            };
            return Start::Settle(acker, decision);
        }
    };
    let Some(route) = routes.get(raw.event_type.as_str()) else {
        let decision = match shared.settings.dead_letter.unknown_event {
            UnknownEventAction::Ack => Decision::Skip,
            UnknownEventAction::DeadLetter => Decision::DeadLetter {
                reason: DeadLetterReason::UnknownEventType,
                error: format!("no handler for `{}` in group `{}`", raw.event_type, shared.group),
            },
        };
        return Start::Settle(acker, decision);
    };
    let ctx = Context::new(
        shared.bus.clone(),
        topic.clone(),
        shared.group.clone(),
        acker.attempt(),
        raw.id.clone(),
        raw.correlation_id.clone(),
    );
    match route.prepare(raw, shared.bus.codecs(), ctx) {
        Err((reason, error)) => Start::Settle(acker, Decision::DeadLetter { reason, error }),
        Ok(call) => Start::Run(acker, call),
    }
}

/// Polls a handler call once, catching a panic; `None` if it has to wait.
pub(crate) async fn poll_once(call: &mut BoxFuture<'static, Result<(), HandlerError>>) -> Option<Ended> {
    std::future::poll_fn(|cx| {
        Poll::Ready(
            match std::panic::catch_unwind(AssertUnwindSafe(|| call.as_mut().poll(cx))) {
                Ok(Poll::Ready(result)) => Some(Ok(result)),
                Ok(Poll::Pending) => None,
                Err(panic) => Some(Err(panic)),
            },
        )
    })
    .await
}

/// Runs the rest of a handler call that had to wait, under the handler
/// timeout and shutdown's deadline, then settles.
pub(crate) async fn finish(
    acker: Acker,
    call: BoxFuture<'static, Result<(), HandlerError>>,
    shared: Arc<Shared>,
) {
    let guarded = AssertUnwindSafe(call).catch_unwind();
    let timed = async {
        match shared.settings.handler_timeout {
            Some(limit) => tokio::time::timeout(limit, guarded).await.map_err(|_| limit),
            None => Ok(guarded.await),
        }
    };
    let mut abandon = shared.abandon.clone();
    let decision = tokio::select! {
        biased;
        done = timed => match done {
            Ok(ended) => decide(ended, acker.attempt(), &shared),
            Err(limit) => retry_or_give_up(format!("handler timed out after {limit:?}"), acker.attempt(), &shared),
        },
        _ = abandon.wait_for(|a| *a) => Decision::Abandon,
    };
    settle(acker, decision, shared).await;
}

/// The decision for a handler call that ended.
pub(crate) fn decide(ended: Ended, attempt: u32, shared: &Shared) -> Decision {
    match ended {
        Ok(Ok(())) => Decision::Ack,
        Ok(Err(e)) if e.is_permanent() => Decision::DeadLetter {
            reason: DeadLetterReason::PermanentError,
            error: e.to_string(),
        },
        Ok(Err(e)) => retry_or_give_up(e.to_string(), attempt, shared),
        Err(panic) => retry_or_give_up(
            format!("handler panicked: {}", panic_message(panic.as_ref())),
            attempt,
            shared,
        ),
    }
}

fn retry_or_give_up(error: String, attempt: u32, shared: &Shared) -> Decision {
    match shared.settings.retry.decide(attempt) {
        RetryDecision::RetryAfter(after) => Decision::Retry { after, error },
        RetryDecision::GiveUp => Decision::DeadLetter {
            reason: DeadLetterReason::MaxAttemptsExceeded,
            error,
        },
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Settles a delivery as decided and counts it: at once where the backend
/// acknowledges without waiting, else through the returned future.
pub(crate) fn settle_now(
    acker: Acker,
    decision: Decision,
    shared: &Arc<Shared>,
) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
    let (acker, decision) = match decision {
        Decision::Ack => match acker.ack_now() {
            Ok(result) => {
                shared.counters.handled.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = result {
                    shared.counters.settle_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(group = %shared.group, error = %e, "acknowledging failed; the broker will redeliver");
                }
                return None;
            }
            Err(acker) => (acker, Decision::Ack),
        },
        other => (acker, other),
    };
    Some(settle(acker, decision, shared.clone()))
}

/// Settles a delivery as decided and counts it.
pub(crate) fn settle(
    acker: Acker,
    decision: Decision,
    shared: Arc<Shared>,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        let counters = &shared.counters;
        let attempt = acker.attempt();
        let topic = acker.topic().to_owned();
        let group = &shared.group;
        let result = match decision {
            Decision::Ack => {
                counters.handled.fetch_add(1, Ordering::Relaxed);
                acker.ack().await
            }
            Decision::Skip => {
                counters.skipped.fetch_add(1, Ordering::Relaxed);
                acker.ack().await
            }
            Decision::Retry { after, error } => {
                counters.retried.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%topic, %group, attempt, ?after, %error, "handler failed; retrying");
                acker.nack(after).await
            }
            Decision::DeadLetter { reason, error } => {
                counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%topic, %group, attempt, %reason, %error, "dead-lettering event");
                let error = shared.settings.dead_letter.truncate_error(error);
                acker.dead_letter(reason, error).await
            }
            Decision::Abandon => {
                counters.abandoned.fetch_add(1, Ordering::Relaxed);
                acker.nack(Duration::ZERO).await
            }
        };
        if let Err(e) = result {
            counters.settle_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%topic, %group, attempt, error = %e, "settling a delivery failed; the broker will redeliver it");
        }
    })
}
