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

/// How a delivery is settled: the [`Outcome`] that observers, the stats
/// and the test harness see, and the error text a retry logs and a dead
/// letter keeps (empty for the other outcomes).
pub(crate) struct Decision {
    pub(crate) outcome: Outcome,
    pub(crate) error: String,
}

impl Decision {
    pub(crate) const ACK: Decision = Decision {
        outcome: Outcome::Handled,
        error: String::new(),
    };
    pub(crate) const ABANDON: Decision = Decision {
        outcome: Outcome::Abandoned,
        error: String::new(),
    };

    pub(crate) fn skip(reason: &'static str) -> Self {
        Self {
            outcome: Outcome::Skipped { reason },
            error: String::new(),
        }
    }

    pub(crate) fn retry(after: Duration, error: String) -> Self {
        Self {
            outcome: Outcome::Retried { after },
            error,
        }
    }

    pub(crate) fn dead_letter(reason: DeadLetterReason, error: String) -> Self {
        Self {
            outcome: Outcome::DeadLettered { reason },
            error,
        }
    }
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
            return Start::Settle(acker, Decision::dead_letter(reason, e.to_string()));
        }
    };
    if raw
        .extensions
        .get(crate::REPLAY_GROUP)
        .is_some_and(|g| **g != *shared.group)
    {
        return Start::Settle(acker, Decision::skip(crate::SKIP_REPLAYED_FOR_OTHER_GROUP));
    }
    let Some(route) = routes.get(raw.event_type.as_str()) else {
        let decision = match shared.settings.dead_letter.unknown_event {
            UnknownEventAction::Ack => Decision::skip(SKIP_UNKNOWN_EVENT_TYPE),
            UnknownEventAction::DeadLetter => Decision::dead_letter(
                DeadLetterReason::UnknownEventType,
                format!("no handler for `{}` in group `{}`", raw.event_type, shared.group),
            ),
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
        Ok(Err((reason, error))) => Start::Settle(acker, Decision::dead_letter(reason, error)),
        Ok(Ok(call)) => Start::Run(acker, call, route.retry().cloned()),
        Err(panic) => Start::Settle(
            acker,
            Decision::dead_letter(
                DeadLetterReason::Panic,
                format!(
                    "decoding or upcasting panicked: {}",
                    panic_message(panic.as_ref())
                ),
            ),
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

/// When a handler call started, if the router limits calls: the handler
/// timeout counts from here, the first poll included.
pub(crate) fn call_started(shared: &Shared) -> Option<tokio::time::Instant> {
    shared
        .settings
        .handler_timeout
        .map(|_| tokio::time::Instant::now())
}

/// Runs the rest of a handler call that had to wait, under the handler
/// timeout (counted from `started`, [`call_started`]) and shutdown's
/// deadline, then settles.
pub(crate) async fn finish(
    acker: Acker,
    call: BoxFuture<'static, Result<(), HandlerError>>,
    retry: Option<Arc<RetryPolicy>>,
    started: Option<tokio::time::Instant>,
    shared: Arc<Shared>,
) {
    let retry = retry.as_deref();
    let guarded = AssertUnwindSafe(call).catch_unwind();
    let timed = async {
        match shared.settings.handler_timeout {
            Some(limit) => {
                let deadline = started.unwrap_or_else(tokio::time::Instant::now) + limit;
                tokio::time::timeout_at(deadline, guarded)
                    .await
                    .map_err(|_| limit)
            }
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
        _ = abandon.wait_for(|a| *a) => Decision::ABANDON,
    };
    if let Some(settling) = settle(acker, decision, &shared) {
        settling.await;
    }
}

/// The decision for a handler call that ended; `retry` is the route's own
/// policy, if it overrides the router's.
pub(crate) fn decide(ended: Ended, attempt: u32, retry: Option<&RetryPolicy>, shared: &Shared) -> Decision {
    match ended {
        Ok(Ok(())) => Decision::ACK,
        Ok(Err(e)) => match e.kind() {
            FailureKind::Permanent => Decision::dead_letter(DeadLetterReason::PermanentError, e.to_string()),
            FailureKind::Skipped => Decision::skip(e.skip_reason().unwrap_or("skipped")),
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
        RetryDecision::RetryAfter(after) => Decision::retry(after, error),
        RetryDecision::GiveUp => Decision::dead_letter(DeadLetterReason::MaxAttemptsExceeded, error),
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

/// Settles a delivery as decided, tells the observers and counts it: at
/// once where the outcome is an acknowledgement the backend makes without
/// waiting, else through the returned future.
pub(crate) fn settle(
    mut acker: Acker,
    decision: Decision,
    shared: &Arc<Shared>,
) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
    observe(shared, acker.topic(), acker.attempt(), decision.outcome);
    if decision.outcome == Outcome::Handled {
        match acker.ack_now() {
            Ok(result) => {
                shared.counters.handled.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = result {
                    shared.counters.settle_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(group = %shared.group, error = %crate::ErrorChain(&e), "acknowledging failed; the broker will redeliver");
                }
                return None;
            }
            Err(waiting) => acker = waiting,
        }
    }
    Some(Box::pin(settle_waiting(acker, decision, shared.clone())))
}

/// The part of [`settle`] that waits on the broker.
async fn settle_waiting(acker: Acker, decision: Decision, shared: Arc<Shared>) {
    let counters = &shared.counters;
    let attempt = acker.attempt();
    let topic = acker.topic().to_owned();
    let group = &shared.group;
    let Decision { outcome, error } = decision;
    let result = match outcome {
        Outcome::Handled => {
            counters.handled.fetch_add(1, Ordering::Relaxed);
            acker.ack().await
        }
        Outcome::Skipped { reason } => {
            counters.skipped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%topic, %group, attempt, reason, "event skipped");
            acker.ack().await
        }
        Outcome::Retried { after } => {
            counters.retried.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%topic, %group, attempt, ?after, %error, "handler failed; retrying");
            acker.nack(after).await
        }
        Outcome::DeadLettered { reason } => {
            counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%topic, %group, attempt, %reason, %error, "dead-lettering event");
            let error = shared.settings.dead_letter.truncate_error(error);
            acker.dead_letter(reason, error).await
        }
        Outcome::Abandoned => {
            counters.abandoned.fetch_add(1, Ordering::Relaxed);
            acker.release().await
        }
    };
    if let Err(e) = result {
        counters.settle_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%topic, %group, attempt, error = %crate::ErrorChain(&e), "settling a delivery failed; the broker will redeliver it");
    }
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
        assert_eq!(decision.outcome, Outcome::Skipped { reason: "duplicate" });
        let decision = decide(Ok(Err(HandlerError::skip("duplicate"))), 99, None, &shared);
        assert!(
            matches!(decision.outcome, Outcome::Skipped { .. }),
            "not even after the last attempt"
        );
    }

    #[test]
    fn a_route_policy_overrides_the_router_policy() {
        let shared = shared(RetryPolicy::default().with_max_attempts(5));
        let own = RetryPolicy::default().with_max_attempts(2);
        let fail = || Ok(Err(HandlerError::retryable("no")));
        assert!(matches!(
            decide(fail(), 2, None, &shared).outcome,
            Outcome::Retried { .. }
        ));
        assert_eq!(
            decide(fail(), 2, Some(&own), &shared).outcome,
            Outcome::DeadLettered {
                reason: DeadLetterReason::MaxAttemptsExceeded
            }
        );
        assert_eq!(
            decide(Ok(Ok(())), 1, Some(&own), &shared).outcome,
            Outcome::Handled
        );
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

    /// Records how a delivery was settled.
    struct Recorded(Arc<std::sync::Mutex<Vec<&'static str>>>);

    #[async_trait]
    impl crate::backend::Acknowledge for Recorded {
        async fn ack(self: Box<Self>) -> Result<(), crate::SettleError> {
            self.0.lock().unwrap().push("ack");
            Ok(())
        }
        async fn nack(self: Box<Self>, _: Duration) -> Result<(), crate::SettleError> {
            self.0.lock().unwrap().push("nack");
            Ok(())
        }
        async fn dead_letter(self: Box<Self>, _: crate::DeadLetter) -> Result<(), crate::SettleError> {
            self.0.lock().unwrap().push("dead_letter");
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_handler_timeout_counts_from_the_start_of_the_call() {
        let mut shared = shared(RetryPolicy::default());
        shared.settings.handler_timeout = Some(Duration::from_secs(5));
        let (_keep_running, abandon) = watch::channel(false);
        shared.abandon = abandon;
        let shared = Arc::new(shared);
        let settled = Arc::new(std::sync::Mutex::new(Vec::new()));
        let delivery = Delivery::new(
            Err(EnvelopeError::Missing {
                attribute: "id".into(),
            }),
            1,
            "t".into(),
            "g".into(),
            Box::new(Recorded(settled.clone())),
        );
        let (_, acker) = delivery.into_parts();
        // The call's first poll took 4 of its 5 seconds (a handler that
        // blocked before its first await); the rest has one second left.
        let started = call_started(&shared);
        tokio::time::advance(Duration::from_secs(4)).await;
        let before = tokio::time::Instant::now();
        finish(
            acker,
            futures::future::pending().boxed(),
            None,
            started,
            shared.clone(),
        )
        .await;
        assert_eq!(
            before.elapsed(),
            Duration::from_secs(1),
            "the limit is the call's, not the rest's"
        );
        assert_eq!(*settled.lock().unwrap(), ["nack"], "a timed-out call is retried");
        assert_eq!(shared.counters.retried.load(Ordering::Relaxed), 1);
    }
}
