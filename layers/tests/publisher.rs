//! The publisher guard: timeout, retries keeping the event id, circuit
//! breaker failing fast.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use busline_core::backend::async_trait;
use busline_core::{
    Bus, Capabilities, ConsumerConfig, EventBus, PublishError, PublishErrorKind, RawEvent, RetryPolicy,
    SubscribeError, SubscribeOptions, Subscription,
};
use busline_layers::{is_circuit_open, GuardedBus, PublishPolicy};
use busline_testkit::events::Ping;
use busline_testkit::{test_settings, TestHarness};
use tokio::time::Instant;

/// A backend whose publishes fail, hang or pass as scripted.
#[derive(Clone, Default)]
struct Flaky {
    script: Arc<Mutex<Vec<Step>>>,
    attempts: Arc<Mutex<Vec<String>>>,
}

#[derive(Clone, Copy)]
enum Step {
    Fail(PublishErrorKind),
    Hang,
}

#[async_trait]
impl EventBus for Flaky {
    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
    }

    async fn publish(&self, topic: &str, event: RawEvent) -> Result<(), PublishError> {
        self.attempts.lock().unwrap().push(event.id.to_string());
        let step = {
            let mut script = self.script.lock().unwrap();
            (!script.is_empty()).then(|| script.remove(0))
        };
        match step {
            None => Ok(()),
            Some(Step::Fail(kind)) => Err(PublishError::new(kind, topic)),
            Some(Step::Hang) => std::future::pending().await,
        }
    }

    async fn provision(&self, _topic: &str, _group: &str) -> Result<(), SubscribeError> {
        Ok(())
    }

    async fn subscribe(
        &self,
        _topic: &str,
        _group: &str,
        _options: SubscribeOptions,
    ) -> Result<Subscription, SubscribeError> {
        Ok(Subscription::new(futures::stream::pending()))
    }

    async fn shutdown(&self) {}
}

fn guarded(flaky: &Flaky, policy: PublishPolicy) -> Bus {
    GuardedBus::wrap(&Bus::new(flaky.clone(), test_settings()), policy)
}

fn policy() -> PublishPolicy {
    PublishPolicy::default()
        .with_timeout(Some(Duration::from_secs(1)))
        .with_retry(
            RetryPolicy::default()
                .with_max_attempts(3)
                .with_backoff(Duration::from_millis(100), Duration::from_millis(100))
                .with_jitter(0.0),
        )
        .with_breaker(None)
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_with_the_same_id() {
    let flaky = Flaky::default();
    *flaky.script.lock().unwrap() = vec![Step::Fail(PublishErrorKind::Connection), Step::Hang];
    let bus = guarded(&flaky, policy());
    let start = Instant::now();
    let id = bus.publish("t", Ping::new(1)).await.unwrap();
    let attempts = flaky.attempts.lock().unwrap().clone();
    assert_eq!(
        attempts,
        vec![id.clone(), id.clone(), id],
        "one event, three tries"
    );
    // 100 ms backoff, 1 s timeout, 100 ms backoff.
    assert_eq!(start.elapsed(), Duration::from_millis(1200));
}

#[tokio::test(start_paused = true)]
async fn timeouts_and_permanent_errors_surface_typed() {
    let flaky = Flaky::default();
    *flaky.script.lock().unwrap() = vec![Step::Hang, Step::Hang, Step::Hang];
    let bus = guarded(&flaky, policy());
    let err = bus.publish("t", Ping::new(1)).await.unwrap_err();
    assert_eq!(err.kind(), PublishErrorKind::Timeout);
    assert_eq!(flaky.attempts.lock().unwrap().len(), 3);

    *flaky.script.lock().unwrap() = vec![Step::Fail(PublishErrorKind::Rejected)];
    let err = bus.publish("t", Ping::new(2)).await.unwrap_err();
    assert_eq!(err.kind(), PublishErrorKind::Rejected);
    assert_eq!(flaky.attempts.lock().unwrap().len(), 4, "not retried");
}

#[tokio::test(start_paused = true)]
async fn breaker_fails_fast_while_the_broker_is_unreachable_then_recovers() {
    let flaky = Flaky::default();
    *flaky.script.lock().unwrap() = vec![Step::Fail(PublishErrorKind::Connection); 4];
    let bus = guarded(
        &flaky,
        policy()
            .with_retry(RetryPolicy::default().with_max_attempts(1))
            .with_breaker(Some((3, Duration::from_secs(5)))),
    );
    for _ in 0..3 {
        let err = bus.publish("t", Ping::new(1)).await.unwrap_err();
        assert!(!is_circuit_open(&err));
    }
    let err = bus.publish("t", Ping::new(1)).await.unwrap_err();
    assert!(is_circuit_open(&err), "{err}");
    assert_eq!(err.kind(), PublishErrorKind::Connection);
    assert_eq!(
        flaky.attempts.lock().unwrap().len(),
        3,
        "failing fast does not reach the broker"
    );
    // After the open time one probe goes through; it fails and the breaker
    // opens again.
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(!is_circuit_open(
        &bus.publish("t", Ping::new(2)).await.unwrap_err()
    ));
    assert!(is_circuit_open(
        &bus.publish("t", Ping::new(3)).await.unwrap_err()
    ));
    // The broker is back: the next probe closes the breaker.
    tokio::time::advance(Duration::from_secs(5)).await;
    bus.publish("t", Ping::new(4)).await.unwrap();
    bus.publish("t", Ping::new(5)).await.unwrap();
    assert_eq!(flaky.attempts.lock().unwrap().len(), 6);
}

#[tokio::test(start_paused = true)]
async fn guarded_bus_publishes_through_to_the_memory_bus() {
    let h = TestHarness::new();
    let bus = GuardedBus::wrap(&h.bus(), PublishPolicy::default());
    let id = bus.publish("t", Ping::new(1)).await.unwrap();
    assert_eq!(h.published::<Ping>()[0].id, id);
}

#[tokio::test(start_paused = true)]
async fn a_probe_dropped_mid_call_lets_the_next_publish_probe() {
    let flaky = Flaky::default();
    *flaky.script.lock().unwrap() = vec![Step::Fail(PublishErrorKind::Connection), Step::Hang];
    let bus = guarded(
        &flaky,
        policy()
            .with_timeout(Some(Duration::from_secs(10)))
            .with_retry(RetryPolicy::default().with_max_attempts(1))
            .with_breaker(Some((1, Duration::from_secs(5)))),
    );
    bus.publish("t", Ping::new(1)).await.unwrap_err();
    assert!(is_circuit_open(
        &bus.publish("t", Ping::new(2)).await.unwrap_err()
    ));
    tokio::time::advance(Duration::from_secs(5)).await;
    // The probe reaches the broker and hangs; its caller gives up first (as
    // a handler timeout or a `select!` would) and drops the future.
    let dropped = tokio::time::timeout(Duration::from_secs(1), bus.publish("t", Ping::new(3))).await;
    assert!(dropped.is_err(), "the probe was still waiting when dropped");
    assert_eq!(flaky.attempts.lock().unwrap().len(), 2, "the probe went out");
    // The broker works again: the next publish is let through as the new
    // probe, succeeds, and closes the breaker.
    bus.publish("t", Ping::new(4))
        .await
        .expect("the next publish probes instead of failing fast");
    bus.publish("t", Ping::new(5)).await.unwrap();
    assert_eq!(flaky.attempts.lock().unwrap().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn the_default_policy_gives_up_inside_the_default_handler_timeout() {
    let handler_timeout = ConsumerConfig::default().handler_timeout.unwrap();
    let longest = PublishPolicy::default().longest().unwrap();
    assert!(longest < handler_timeout, "{longest:?} vs {handler_timeout:?}");
    assert_eq!(
        longest,
        Duration::from_millis(15_360),
        "3 × 5 s plus 100 ms and 200 ms backoff, 20% jitter each"
    );
    // A broker that never confirms: the default policy returns its error in
    // time for a handler to see it.
    let flaky = Flaky::default();
    *flaky.script.lock().unwrap() = vec![Step::Hang; 3];
    let bus = guarded(&flaky, PublishPolicy::default());
    let start = Instant::now();
    let err = bus.publish("t", Ping::new(1)).await.unwrap_err();
    let took = start.elapsed();
    assert_eq!(err.kind(), PublishErrorKind::Timeout);
    assert_eq!(flaky.attempts.lock().unwrap().len(), 3);
    assert!(took <= longest && took >= Duration::from_secs(15), "{took:?}");
}
