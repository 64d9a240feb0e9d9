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

use super::shared::{RouteTable, Shared};
use super::{Context, FailureKind, HandlerError};
use crate::observe::{Outcome, Settled, SKIP_UNKNOWN_EVENT_TYPE};
use crate::{
    Acker, DeadLetterReason, Delivery, EnvelopeError, RetryDecision, RetryPolicy, UnknownEventAction,
};

/// How a delivery is settled.
pub(crate) enum Decision {
    Ack,
    Skip { reason: &'static str },
    Retry { after: Duration, error: String },
    DeadLetter { reason: DeadLetterReason, error: String },
    Abandon,
}

/// What a delivery needs next.
pub(crate) enum Start {
    /// Settled without running a handler (poison, unknown type, refused).
    Settle(Acker, Decision),
    /// Run this handler call, then settle by its outcome (under the route's
    /// own retry policy, if it has one).
    Run(
        Acker,
        BoxFuture<'static, Result<(), HandlerError>>,
        Option<Arc<RetryPolicy>>,
    ),
}

/// The result of a handler call that ended: its own result or its panic.
type Ended = Result<Result<(), HandlerError>, Box<dyn Any + Send>>;

/// Reads, routes and decodes a delivery.
pub(crate) fn begin(delivery: Delivery, topic: &Arc<str>, routes: &RouteTable, shared: &Shared) -> Start {
    let (event, acker) = delivery.into_parts();
    let raw = match event {
        Ok(raw) => raw,
        Err(e) => {
            let reason = match &e {
                EnvelopeError::Refused { reason, .. } => *reason,
                _ => DeadLetterReason::MalformedEnvelope,
            };
            let decision = Decision::DeadLetter {
                reason,
                error: e.to_string(),
            };
            return Start::Settle(acker, decision);
        }
    };
    if raw
        .extensions
        .get(crate::REPLAY_GROUP)
        .is_some_and(|g| **g != *shared.group)
    {
        return Start::Settle(
            acker,
            Decision::Skip {
                reason: crate::SKIP_REPLAYED_FOR_OTHER_GROUP,
            },
        );
    }
    let Some(route) = routes.get(raw.event_type.as_str()) else {
        let decision = match shared.settings.dead_letter.unknown_event {
            UnknownEventAction::Ack => Decision::Skip {
                reason: SKIP_UNKNOWN_EVENT_TYPE,
            },
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
    // Decoding and upcasting run user code (serde impls, upcasters, a
    // closure's synchronous part); a panic there is data-dependent, so the
    // event is poison, not a reason to retry or to lose the consumer.
    let prepared = std::panic::catch_unwind(AssertUnwindSafe(|| {
        route.prepare(raw, shared.bus.codecs(), ctx, &shared.witnesses)
    }));
    match prepared {
        Ok(Err((reason, error))) => Start::Settle(acker, Decision::DeadLetter { reason, error }),
        Ok(Ok(call)) => Start::Run(acker, call, route.retry().cloned()),
        Err(panic) => Start::Settle(
            acker,
            Decision::DeadLetter {
                reason: DeadLetterReason::Panic,
                error: format!(
                    "decoding or upcasting panicked: {}",
                    panic_message(panic.as_ref())
                ),
            },
        ),
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
    retry: Option<Arc<RetryPolicy>>,
    shared: Arc<Shared>,
) {
    let retry = retry.as_deref();
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
            Ok(ended) => decide(ended, acker.attempt(), retry, &shared),
            Err(limit) => retry_or_give_up(format!("handler timed out after {limit:?}"), acker.attempt(), retry, &shared),
        },
        _ = abandon.wait_for(|a| *a) => Decision::Abandon,
    };
    settle(acker, decision, shared).await;
}

/// The decision for a handler call that ended; `retry` is the route's own
/// policy, if it overrides the router's.
pub(crate) fn decide(ended: Ended, attempt: u32, retry: Option<&RetryPolicy>, shared: &Shared) -> Decision {
    match ended {
        Ok(Ok(())) => Decision::Ack,
        Ok(Err(e)) => match e.kind() {
            FailureKind::Permanent => Decision::DeadLetter {
                reason: DeadLetterReason::PermanentError,
                error: e.to_string(),
            },
            FailureKind::Skipped => Decision::Skip {
                reason: e.skip_reason().unwrap_or("skipped"),
            },
            FailureKind::Retryable => retry_or_give_up(e.to_string(), attempt, retry, shared),
        },
        Err(panic) => retry_or_give_up(
            format!("handler panicked: {}", panic_message(panic.as_ref())),
            attempt,
            retry,
            shared,
        ),
    }
}

fn retry_or_give_up(error: String, attempt: u32, retry: Option<&RetryPolicy>, shared: &Shared) -> Decision {
    match retry.unwrap_or(&shared.settings.retry).decide(attempt) {
        RetryDecision::RetryAfter(after) => Decision::Retry { after, error },
        RetryDecision::GiveUp => Decision::DeadLetter {
            reason: DeadLetterReason::MaxAttemptsExceeded,
            error,
        },
    }
}

pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Tells the router's observers about a decision.
fn observe(shared: &Shared, topic: &str, attempt: u32, outcome: Outcome) {
    if shared.observers.is_empty() {
        return;
    }
    let settled = Settled {
        topic,
        group: &shared.group,
        attempt,
        outcome,
    };
    for observer in shared.observers.iter() {
        observer.on_settled(&settled);
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
        Decision::Ack => {
            if !shared.observers.is_empty() {
                observe(shared, acker.topic(), acker.attempt(), Outcome::Handled);
            }
            match acker.ack_now() {
                Ok(result) => {
                    shared.counters.handled.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = result {
                        shared.counters.settle_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(group = %shared.group, error = %crate::ErrorChain(&e), "acknowledging failed; the broker will redeliver");
                    }
                    return None;
                }
                Err(acker) => (acker, Decision::Ack),
            }
        }
        other => {
            observe_decision(shared, &acker, &other);
            (acker, other)
        }
    };
    Some(settle_observed(acker, decision, shared.clone()))
}

fn observe_decision(shared: &Shared, acker: &Acker, decision: &Decision) {
    if shared.observers.is_empty() {
        return;
    }
    let outcome = match decision {
        Decision::Ack => Outcome::Handled,
        Decision::Skip { reason } => Outcome::Skipped { reason },
        Decision::Retry { after, .. } => Outcome::Retried { after: *after },
        Decision::DeadLetter { reason, .. } => Outcome::DeadLettered { reason: *reason },
        Decision::Abandon => Outcome::Abandoned,
    };
    observe(shared, acker.topic(), acker.attempt(), outcome);
}

/// Settles a delivery as decided and counts it.
pub(crate) fn settle(
    acker: Acker,
    decision: Decision,
    shared: Arc<Shared>,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    observe_decision(&shared, &acker, &decision);
    settle_observed(acker, decision, shared)
}

/// Settles a delivery whose decision the observers have seen.
fn settle_observed(
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
            Decision::Skip { reason } => {
                counters.skipped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%topic, %group, attempt, reason, "event skipped");
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
                acker.release().await
            }
        };
        if let Err(e) = result {
            counters.settle_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%topic, %group, attempt, error = %crate::ErrorChain(&e), "settling a delivery failed; the broker will redeliver it");
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use async_trait::async_trait;
    use tokio::sync::watch;

    use super::*;
    use crate::router::shared::Counters;
    use crate::RouterObserver;
    use crate::{
        Bus, BusSettings, Capabilities, EventBus, PublishError, RawEvent, StartFrom, SubscribeError,
        SubscribeOptions, Subscription,
    };

    struct NoBroker;

    #[async_trait]
    impl EventBus for NoBroker {
        fn capabilities(&self) -> Capabilities {
            Capabilities::none()
        }
        async fn publish(&self, _: &str, _: RawEvent) -> Result<(), PublishError> {
            Ok(())
        }
        async fn provision(&self, _: &str, _: &str) -> Result<(), SubscribeError> {
            Ok(())
        }
        async fn subscribe(
            &self,
            _: &str,
            _: &str,
            _: SubscribeOptions,
        ) -> Result<Subscription, SubscribeError> {
            Ok(Subscription::new(futures::stream::empty()))
        }
        async fn shutdown(&self) {}
    }

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl RouterObserver for Arc<Count> {
        fn on_settled(&self, _: &Settled<'_>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn shared(retry: RetryPolicy) -> Shared {
        let bus = Bus::new(NoBroker, BusSettings::default());
        Shared {
            bus,
            group: "g".into(),
            settings: crate::router::RouterSettings {
                retry,
                dead_letter: Default::default(),
                handler_timeout: None,
                max_in_flight: 1,
                shutdown_deadline: Duration::from_secs(1),
                start_from: StartFrom::New,
            },
            counters: Counters::default(),
            observers: Box::new([]),
            witnesses: Arc::new([]),
            abandon: watch::channel(false).1,
        }
    }

    #[test]
    fn a_skip_is_acknowledged_with_its_reason_never_retried() {
        let shared = shared(RetryPolicy::default());
        let decision = decide(Ok(Err(HandlerError::skip("duplicate"))), 1, None, &shared);
        assert!(matches!(decision, Decision::Skip { reason: "duplicate" }));
        let decision = decide(Ok(Err(HandlerError::skip("duplicate"))), 99, None, &shared);
        assert!(
            matches!(decision, Decision::Skip { .. }),
            "not even after the last attempt"
        );
    }

    #[test]
    fn a_route_policy_overrides_the_router_policy() {
        let shared = shared(RetryPolicy::default().with_max_attempts(5));
        let own = RetryPolicy::default().with_max_attempts(2);
        let fail = || Ok(Err(HandlerError::retryable("no")));
        assert!(matches!(decide(fail(), 2, None, &shared), Decision::Retry { .. }));
        assert!(matches!(
            decide(fail(), 2, Some(&own), &shared),
            Decision::DeadLetter {
                reason: DeadLetterReason::MaxAttemptsExceeded,
                ..
            }
        ));
        assert!(matches!(
            decide(Ok(Ok(())), 1, Some(&own), &shared),
            Decision::Ack
        ));
    }

    #[test]
    fn observers_see_each_decision() {
        let count = Arc::new(Count::default());
        let mut shared = shared(RetryPolicy::default());
        shared.observers = vec![Arc::new(count.clone()) as Arc<dyn RouterObserver>].into_boxed_slice();
        observe(&shared, "t", 1, Outcome::Handled);
        observe(&shared, "t", 2, Outcome::Skipped { reason: "duplicate" });
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
    }
}
