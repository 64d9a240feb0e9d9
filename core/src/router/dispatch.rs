//! One delivery from arrival to settlement: the outcome table of DESIGN.md.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use super::running::{RouteTable, Shared};
use super::{Context, HandlerError};
use crate::{Acker, DeadLetterReason, Delivery, RetryDecision, UnknownEventAction};

/// How a delivery is settled.
enum Decision {
    Ack,
    Skip,
    Retry { after: Duration, error: String },
    DeadLetter { reason: DeadLetterReason, error: String },
    Abandon,
}

/// How a handler call ended, other than `Ok`.
enum Failure {
    Handler(HandlerError),
    Panic(String),
    Timeout(Duration),
}

pub(crate) async fn process(
    delivery: Delivery,
    topic: Arc<str>,
    routes: Arc<RouteTable>,
    shared: Arc<Shared>,
) {
    let (event, acker) = delivery.into_parts();
    let decision = match event {
        Err(e) => Decision::DeadLetter {
            reason: DeadLetterReason::MalformedEnvelope,
            error: e.to_string(),
        },
        Ok(raw) => match routes.get(raw.event_type.as_str()) {
            None => match shared.settings.dead_letter.unknown_event {
                UnknownEventAction::Ack => Decision::Skip,
                UnknownEventAction::DeadLetter => Decision::DeadLetter {
                    reason: DeadLetterReason::UnknownEventType,
                    error: format!("no handler for `{}` in group `{}`", raw.event_type, shared.group),
                },
            },
            Some(route) => {
                let ctx = Context::new(
                    shared.bus.clone(),
                    topic,
                    shared.group.clone(),
                    acker.attempt(),
                    raw.id.clone(),
                    raw.correlation_id.clone(),
                );
                match route.prepare(raw, shared.bus.codecs(), ctx) {
                    Err((reason, error)) => Decision::DeadLetter { reason, error },
                    Ok(call) => run(call, acker.attempt(), &shared).await,
                }
            }
        },
    };
    settle(acker, decision, &shared).await;
}

async fn run(
    call: futures::future::BoxFuture<'static, Result<(), HandlerError>>,
    attempt: u32,
    shared: &Shared,
) -> Decision {
    let guarded = AssertUnwindSafe(call).catch_unwind();
    let timed = async {
        match shared.settings.handler_timeout {
            Some(limit) => match tokio::time::timeout(limit, guarded).await {
                Ok(result) => (result, None),
                Err(_) => (Ok(Ok(())), Some(limit)),
            },
            None => (guarded.await, None),
        }
    };
    let mut abandon = shared.abandon.clone();
    let outcome = tokio::select! {
        biased;
        done = timed => done,
        _ = abandon.wait_for(|a| *a) => return Decision::Abandon,
    };
    let failure = match outcome {
        (_, Some(limit)) => Failure::Timeout(limit),
        (Ok(Ok(())), None) => return Decision::Ack,
        (Ok(Err(e)), None) => Failure::Handler(e),
        (Err(panic), None) => Failure::Panic(panic_message(panic.as_ref())),
    };
    match failure {
        Failure::Handler(e) if e.is_permanent() => Decision::DeadLetter {
            reason: DeadLetterReason::PermanentError,
            error: e.to_string(),
        },
        failure => {
            let error = match failure {
                Failure::Handler(e) => e.to_string(),
                Failure::Panic(msg) => format!("handler panicked: {msg}"),
                Failure::Timeout(limit) => format!("handler timed out after {limit:?}"),
            };
            match shared.settings.retry.decide(attempt) {
                RetryDecision::RetryAfter(after) => Decision::Retry { after, error },
                RetryDecision::GiveUp => Decision::DeadLetter {
                    reason: DeadLetterReason::MaxAttemptsExceeded,
                    error,
                },
            }
        }
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

async fn settle(acker: Acker, decision: Decision, shared: &Shared) {
    let counters = &shared.counters;
    let (topic, group, attempt) = (acker.topic().to_owned(), shared.group.clone(), acker.attempt());
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
}
