//! Calls whose future is dropped (a handler timeout, a `select!` in an outer
//! layer, shutdown) give back what they held: a breaker's probe slot, a rate
//! limiter's reservation. On the memory bus with tokio's clock paused.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use busline_core::{
    Context, DomainEvent, Event, EventService, Gate, HandlerError, HandlerWithoutStateExt, Layer,
    RetryPolicy, Router,
};
use busline_layers::{BreakerState, CircuitBreakerLayer, RateLimitLayer};
use busline_testkit::events::Ping;
use busline_testkit::support::{eventually, Collector, WAIT};
use busline_testkit::TestHarness;
use futures::future::BoxFuture;
use tokio::time::Instant;

/// An outer layer that, while `drop_next` is set, makes its inner call and
/// drops it unpolled (as a `select!` whose other branch won first would),
/// then fails the event as retryable.
struct DropUnpolled<H> {
    inner: H,
    drop_next: Arc<AtomicBool>,
}

impl<E: Event, H: EventService<E>> EventService<E> for DropUnpolled<H> {
    type Future = BoxFuture<'static, Result<(), HandlerError>>;

    fn call(&self, event: DomainEvent<E>, ctx: Context) -> Self::Future {
        let call = self.inner.call(event, ctx);
        if self.drop_next.swap(false, Ordering::SeqCst) {
            drop(call);
            return Box::pin(async { Err(HandlerError::retryable("given up before it ran")) });
        }
        Box::pin(call)
    }

    fn gate(&self) -> Option<Gate> {
        self.inner.gate()
    }
}

fn quick_retry() -> RetryPolicy {
    RetryPolicy::default()
        .with_max_attempts(1000)
        .with_backoff(Duration::from_millis(10), Duration::from_millis(10))
        .with_jitter(0.0)
}

#[tokio::test(start_paused = true)]
async fn a_breaker_probe_dropped_before_it_ran_gives_its_slot_back() {
    let h = TestHarness::new();
    let healthy = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let (ok, c) = (healthy.clone(), calls.clone());
    let handler = move |_ctx: Context, _e: DomainEvent<Ping>| {
        let (ok, c) = (ok.clone(), c.clone());
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            if ok.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(HandlerError::retryable("dependency down"))
            }
        }
    };
    let breaker = CircuitBreakerLayer::new()
        .with_window_size(2)
        .with_minimum_calls(2)
        .with_open_duration(Duration::from_secs(10))
        .with_half_open_probes(1)
        .layer(handler.into_service());
    let handle = breaker.handle();
    let drop_next = Arc::new(AtomicBool::new(false));
    let router = Router::new(h.bus(), "g")
        .with_max_in_flight(1)
        .with_retry(quick_retry())
        .on(
            "t",
            DropUnpolled {
                inner: breaker,
                drop_next: drop_next.clone(),
            },
        )
        .start()
        .await
        .unwrap();
    h.bus().publish("t", Ping::new(1)).await.unwrap();
    eventually(WAIT, "breaker open", || handle.state() == BreakerState::Open).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // The first call after the open time is admitted as the only probe (the
    // gate closes behind it) and dropped before it runs.
    drop_next.store(true, Ordering::SeqCst);
    healthy.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(10)).await;
    eventually(WAIT, "the probe was taken and dropped", || {
        !drop_next.load(Ordering::SeqCst)
    })
    .await;
    // Its slot is free again: the redelivered event probes, passes, and
    // closes the breaker.
    h.wait_for_handled::<Ping>(WAIT).await;
    assert_eq!(handle.state(), BreakerState::Closed);
    assert_eq!(calls.load(Ordering::SeqCst), 3, "the dropped probe never ran");
    let stats = router.shutdown().await.unwrap();
    assert_eq!((stats.handled, stats.dead_lettered), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_breaker_probe_cancelled_mid_call_counts_neither_way() {
    let h = TestHarness::new();
    let failing = Arc::new(AtomicBool::new(true));
    let calls = Collector::new();
    let (f, c) = (failing.clone(), calls.clone());
    let handler = move |_ctx: Context, _e: DomainEvent<Ping>| {
        let n = c.len();
        c.push(Instant::now());
        let failing = f.load(Ordering::SeqCst);
        async move {
            if failing {
                return Err(HandlerError::retryable("dependency down"));
            }
            if n == 2 {
                // The first probe hangs past the router's handler timeout.
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Ok(())
        }
    };
    let breaker = CircuitBreakerLayer::new()
        .with_window_size(2)
        .with_minimum_calls(2)
        .with_open_duration(Duration::from_secs(10))
        .with_half_open_probes(1)
        .layer(handler.into_service());
    let handle = breaker.handle();
    let router = Router::new(h.bus(), "g")
        .with_max_in_flight(1)
        .with_handler_timeout(Some(Duration::from_secs(1)))
        .with_retry(quick_retry())
        .on("t", breaker)
        .start()
        .await
        .unwrap();
    h.bus().publish("t", Ping::new(1)).await.unwrap();
    eventually(WAIT, "breaker open", || handle.state() == BreakerState::Open).await;
    failing.store(false, Ordering::SeqCst);
    h.wait_for_handled::<Ping>(WAIT).await;
    let calls = calls.snapshot();
    assert_eq!(
        calls.len(),
        4,
        "two failures, the cancelled probe, the probe that passed"
    );
    // The cancelled probe did not open the breaker again for 10 s: the
    // redelivery probed as soon as the handler timeout and backoff allowed.
    let gap = calls[3] - calls[2];
    assert!(
        gap < Duration::from_secs(2),
        "the next probe came {gap:?} after the cancelled one"
    );
    assert_eq!(handle.state(), BreakerState::Closed);
    let stats = router.shutdown().await.unwrap();
    assert_eq!((stats.handled, stats.dead_lettered), (1, 0));
}

/// An outer layer that gives up on the call of event `seq` after `after`
/// (dropping it, as a `select!` or timeout would) and skips that event.
struct GiveUpOn<H> {
    inner: H,
    seq: u64,
    after: Duration,
}

impl<H: EventService<Ping>> EventService<Ping> for GiveUpOn<H> {
    type Future = BoxFuture<'static, Result<(), HandlerError>>;

    fn call(&self, event: DomainEvent<Ping>, ctx: Context) -> Self::Future {
        let give_up = event.data.seq == self.seq;
        let after = self.after;
        let call = self.inner.call(event, ctx);
        Box::pin(async move {
            if !give_up {
                return call.await;
            }
            match tokio::time::timeout(after, call).await {
                Ok(result) => result,
                Err(_) => Err(HandlerError::skip("given up")),
            }
        })
    }

    fn gate(&self) -> Option<Gate> {
        self.inner.gate()
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_waiting_call_gives_its_rate_limit_slot_back() {
    let h = TestHarness::new();
    let calls = Collector::new();
    let c = calls.clone();
    let handler = move |_ctx: Context, e: DomainEvent<Ping>| {
        c.push((e.data.seq, Instant::now()));
        async { Ok::<_, HandlerError>(()) }
    };
    let router = Router::new(h.bus(), "g")
        .with_max_in_flight(10)
        .with_handler_timeout(None)
        .on(
            "t",
            GiveUpOn {
                inner: RateLimitLayer::per_second(1.0).layer(handler.into_service()),
                seq: 1,
                after: Duration::from_millis(500),
            },
        )
        .start()
        .await
        .unwrap();
    let start = Instant::now();
    for i in 0..4 {
        h.bus().publish("t", Ping::new(i)).await.unwrap();
    }
    // Event 0 starts at once; event 1 waits for the slot at 1 s and is given
    // up at 0.5 s; events 2 and 3 take the slots at 1 s and 2 s.
    let seen = calls.wait_len(3, WAIT, "3 calls").await;
    let at: Vec<(u64, Duration)> = seen.iter().map(|(seq, t)| (*seq, *t - start)).collect();
    assert_eq!(
        at.iter().map(|c| c.0).collect::<Vec<_>>(),
        vec![0, 2, 3],
        "{at:?}"
    );
    let slack = Duration::from_millis(50);
    for (i, (seq, took)) in at.iter().enumerate() {
        let slot = Duration::from_secs(i as u64);
        assert!(
            *took >= slot && *took <= slot + slack,
            "event {seq} started at {took:?}, its slot is at {slot:?}: {at:?}"
        );
    }
    // Later calls keep the rate: the next slot is a second after the last.
    h.bus().publish("t", Ping::new(4)).await.unwrap();
    let (seq, t) = calls.wait_len(4, WAIT, "4 calls").await[3];
    let took = t - start;
    assert_eq!(seq, 4);
    assert!(
        took >= Duration::from_secs(3) && took <= Duration::from_secs(3) + slack,
        "{took:?}"
    );
    let stats = router.shutdown().await.unwrap();
    assert_eq!((stats.handled, stats.skipped), (4, 1));
}

#[tokio::test(start_paused = true)]
async fn a_late_probe_from_an_earlier_half_open_round_is_not_counted() {
    let h = TestHarness::new();
    let start = Instant::now();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let handler = move |_ctx: Context, _e: DomainEvent<Ping>| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move {
            match n {
                // Two failures open the breaker at 0 s, until 10 s.
                0 | 1 | 3 => Err(HandlerError::retryable("dependency down")),
                // The first probe of the round at 10 s: it answers at 25 s,
                // after its round ended (the second probe, 3, failed).
                2 => {
                    tokio::time::sleep(Duration::from_secs(15)).await;
                    Ok(())
                }
                // The second probe of the round at 20 s, until 30 s.
                5 => {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    Ok(())
                }
                _ => Ok(()),
            }
        }
    };
    let breaker = CircuitBreakerLayer::new()
        .with_window_size(2)
        .with_minimum_calls(2)
        .with_open_duration(Duration::from_secs(10))
        .with_half_open_probes(2)
        .layer(handler.into_service());
    let handle = breaker.handle();
    let router = Router::new(h.bus(), "g")
        .with_max_in_flight(4)
        .with_handler_timeout(None)
        .with_retry(quick_retry())
        .on("t", breaker)
        .start()
        .await
        .unwrap();
    for i in 0..3 {
        h.bus().publish("t", Ping::new(i)).await.unwrap();
    }
    eventually(WAIT, "six calls", || calls.load(Ordering::SeqCst) == 6).await;
    assert!(
        start.elapsed() >= Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    tokio::time::sleep_until(start + Duration::from_secs(27)).await;
    // Call 4 passed and call 2's late success came in; call 5 is still out.
    assert_eq!(
        handle.state(),
        BreakerState::HalfOpen,
        "a probe from the earlier round closed the breaker"
    );
    h.wait_for_handled_count::<Ping>(3, WAIT).await;
    assert!(start.elapsed() >= Duration::from_secs(30));
    assert_eq!(handle.state(), BreakerState::Closed);
    let stats = router.shutdown().await.unwrap();
    assert_eq!((stats.handled, stats.dead_lettered), (3, 0));
}
