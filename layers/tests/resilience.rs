//! Timeout, bulkhead, circuit breaker, rate limit, per-handler retry and
//! the core hooks they use, on the memory bus with tokio's clock paused.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use busline_core::{
    Context, DeadLetterReason, DomainEvent, HandlerError, HandlerOptions, HandlerWithoutStateExt, Layer,
    RetryPolicy, Router, TowerLayer,
};
use busline_layers::{BreakerState, BulkheadLayer, CircuitBreakerLayer, RateLimitLayer};
use busline_testkit::events::Ping;
use busline_testkit::support::{eventually, Collector, WAIT};
use busline_testkit::TestHarness;
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn timeout_fires_and_the_event_is_retried() {
    let h = TestHarness::new();
    let attempts = Collector::new();
    let a = attempts.clone();
    let handler = move |ctx: Context, _e: DomainEvent<Ping>| {
        let a = a.clone();
        async move {
            a.push(ctx.attempt());
            if ctx.attempt() == 1 {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            Ok::<_, HandlerError>(())
        }
    };
    let router = Router::new(h.bus(), "g")
        .with_handler_timeout(None)
        .on(
            "t",
            TowerLayer::new(tower::timeout::TimeoutLayer::new(Duration::from_secs(1)))
                .layer(handler.into_service()),
        )
        .start()
        .await
        .unwrap();
    let start = Instant::now();
    h.bus().publish("t", Ping::new(1)).await.unwrap();
    h.wait_for_handled::<Ping>(WAIT).await;
    assert_eq!(attempts.snapshot(), vec![1, 2], "timed out once, then retried");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let stats = router.shutdown().await.unwrap();
    assert_eq!((stats.retried, stats.handled), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn bulkhead_never_exceeds_its_bound_and_refuses_beyond_the_queue() {
    let h = TestHarness::new();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Collector::new();
    let (r, p, d) = (running.clone(), peak.clone(), done.clone());
    let handler = move |_ctx: Context, e: DomainEvent<Ping>| {
        let (r, p, d) = (r.clone(), p.clone(), d.clone());
        async move {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            r.fetch_sub(1, Ordering::SeqCst);
            d.push(e.data.seq);
            Ok::<_, HandlerError>(())
        }
    };
    // 3 at once, 2 waiting: of 20 concurrent deliveries some are refused
    // (retryable) and come back later.
    let router = Router::new(h.bus(), "g")
        .with_max_in_flight(20)
        .with_retry(RetryPolicy::default().with_max_attempts(100))
        .on(
            "t",
            BulkheadLayer::new(3)
                .with_max_waiting(2)
                .layer(handler.into_service()),
        )
        .start()
        .await
        .unwrap();
    for i in 0..20 {
        h.bus().publish("t", Ping::new(i)).await.unwrap();
    }
    done.wait_len(20, WAIT, "all pings handled").await;
    assert_eq!(
        peak.load(Ordering::SeqCst),
        3,
        "the bulkhead's bound is reached and never passed"
    );
    let stats = router.shutdown().await.unwrap();
    assert_eq!(stats.handled, 20);
    assert!(
        stats.retried > 0,
        "calls beyond the wait queue are refused as retryable"
    );
}

#[tokio::test(start_paused = true)]
async fn circuit_opens_stops_consuming_half_opens_and_closes() {
    let h = TestHarness::new();
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calls = Collector::new();
    let (ok, c) = (healthy.clone(), calls.clone());
    let handler = move |ctx: Context, e: DomainEvent<Ping>| {
        let (ok, c) = (ok.clone(), c.clone());
        async move {
            c.push((e.data.seq, ctx.attempt(), Instant::now()));
            if ok.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(HandlerError::retryable("dependency down"))
            }
        }
    };
    let breaker = CircuitBreakerLayer::new()
        .with_window_size(4)
        .with_minimum_calls(4)
        .with_failure_rate_threshold(0.5)
        .with_open_duration(Duration::from_secs(10))
        .with_half_open_probes(2)
        .layer(handler.into_service());
    let handle = breaker.handle();
    let router = Router::new(h.bus(), "g")
        .with_max_in_flight(1)
        .with_retry(
            RetryPolicy::default()
                .with_max_attempts(100)
                .with_backoff(Duration::from_millis(10), Duration::from_millis(10))
                .with_jitter(0.0),
        )
        .on("t", breaker)
        .start()
        .await
        .unwrap();
    for i in 0..6 {
        h.bus().publish("t", Ping::new(i)).await.unwrap();
    }
    // Four failures open the breaker.
    eventually(WAIT, "breaker open", || handle.state() == BreakerState::Open).await;
    let opened_at = Instant::now();
    let calls_when_open = calls.len();
    assert_eq!(calls_when_open, 4, "the threshold is 4 calls at 50%");
    // While open, nothing is consumed: no attempts burned.
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(calls.len(), calls_when_open, "no calls while open");
    assert_eq!(
        router.stats().retried as usize,
        calls_when_open,
        "only the failures were retried"
    );
    // The dependency recovers; after the open duration, probes close it.
    healthy.store(true, Ordering::SeqCst);
    let handled = h.wait_for_handled_count::<Ping>(6, WAIT).await;
    assert_eq!(handled.len(), 6);
    assert_eq!(handle.state(), BreakerState::Closed);
    let first_after = calls.snapshot()[calls_when_open].2;
    assert!(
        first_after >= opened_at + Duration::from_secs(10) - Duration::from_millis(100),
        "the first probe waits for the open duration"
    );
    let max_attempt = calls.snapshot().iter().map(|c| c.1).max().unwrap();
    assert!(
        max_attempt <= 2,
        "events waited in the broker instead of burning attempts: {max_attempt}"
    );
    let stats = router.shutdown().await.unwrap();
    assert_eq!((stats.handled, stats.dead_lettered), (6, 0));
}

#[tokio::test(start_paused = true)]
async fn failed_probe_opens_the_breaker_again() {
    let h = TestHarness::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let handler = move |_ctx: Context, _e: DomainEvent<Ping>| {
        c.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), _>(HandlerError::retryable("down")) }
    };
    let breaker = CircuitBreakerLayer::new()
        .with_window_size(2)
        .with_minimum_calls(2)
        .with_open_duration(Duration::from_secs(10))
        .with_half_open_probes(1)
        .layer(handler.into_service());
    let handle = breaker.handle();
    let router = Router::new(h.bus(), "g")
        .with_retry(RetryPolicy::default().with_max_attempts(1000).with_jitter(0.0))
        .on("t", breaker)
        .start()
        .await
        .unwrap();
    h.bus().publish("t", Ping::new(1)).await.unwrap();
    eventually(WAIT, "breaker open", || handle.state() == BreakerState::Open).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    tokio::time::sleep(Duration::from_secs(11)).await;
    // One probe ran, failed, and the breaker is open again.
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(handle.state(), BreakerState::Open);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 4, "one probe per open period");
    router.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn rate_limit_holds() {
    let h = TestHarness::new();
    let times = Collector::new();
    let t = times.clone();
    let handler = move |_ctx: Context, _e: DomainEvent<Ping>| {
        t.push(Instant::now());
        async { Ok::<_, HandlerError>(()) }
    };
    let router = Router::new(h.bus(), "g")
        .with_max_in_flight(100)
        .on(
            "t",
            RateLimitLayer::per_second(10.0)
                .with_burst(2)
                .layer(handler.into_service()),
        )
        .start()
        .await
        .unwrap();
    let start = Instant::now();
    for i in 0..30 {
        h.bus().publish("t", Ping::new(i)).await.unwrap();
    }
    let times = times.wait_len(30, WAIT, "30 calls").await;
    // 2 at once (the burst), then one every 100 ms.
    let took = *times.last().unwrap() - start;
    assert!(
        took >= Duration::from_millis(2700) && took <= Duration::from_millis(2900),
        "{took:?}"
    );
    for window in times.windows(3) {
        assert!(
            window[2] - window[0] >= Duration::from_millis(100),
            "no more than 2 in 100 ms"
        );
    }
    router.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn per_handler_retry_overrides_the_router_default() {
    let h = TestHarness::new();
    let router = Router::new(h.bus(), "g")
        .with_retry(RetryPolicy::default().with_max_attempts(5))
        .on_with(
            "t",
            |_c: Context, _e: DomainEvent<Ping>| async { Err::<(), _>(HandlerError::retryable("no")) },
            HandlerOptions::new().with_retry(
                RetryPolicy::default()
                    .with_max_attempts(2)
                    .with_backoff(Duration::from_millis(5), Duration::from_millis(5)),
            ),
        )
        .on(
            "t",
            |_c: Context, _e: DomainEvent<busline_testkit::events::Pong>| async {
                Err::<(), _>(HandlerError::retryable("no"))
            },
        )
        .start()
        .await
        .unwrap();
    h.bus().publish("t", Ping::new(1)).await.unwrap();
    let dl = h.wait_for_dead_letters(1, WAIT).await;
    assert_eq!(dl[0].letter.reason, DeadLetterReason::MaxAttemptsExceeded);
    assert_eq!(dl[0].letter.attempts, 2, "the handler's own policy");
    h.bus()
        .publish("t", busline_testkit::events::Pong { seq: 1 })
        .await
        .unwrap();
    let dl = h.wait_for_dead_letters(2, WAIT).await;
    assert_eq!(
        dl[1].letter.attempts, 5,
        "the router's policy for the other handler"
    );
    router.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn skip_is_acked_and_counted_not_retried() {
    let h = TestHarness::new();
    let router = Router::new(h.bus(), "g")
        .on("t", |_c: Context, _e: DomainEvent<Ping>| async {
            Err::<(), _>(HandlerError::skip("not_mine"))
        })
        .start()
        .await
        .unwrap();
    h.bus().publish("t", Ping::new(1)).await.unwrap();
    eventually(WAIT, "the ping skipped", || router.stats().skipped == 1).await;
    assert!(h.handled::<Ping>().is_empty(), "a skip counted as handled");
    let stats = router.shutdown().await.unwrap();
    assert_eq!(
        (stats.skipped, stats.handled, stats.retried, stats.dead_lettered),
        (1, 0, 0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn router_wide_layers_wrap_every_handler() {
    // A layer after `.on(..)` does not compile (core/tests/ui/layer_after_handler.rs).
    let h = TestHarness::new();
    let attempts = Collector::new();
    let a = attempts.clone();
    let router = Router::new(h.bus(), "g")
        .with_handler_timeout(None)
        .layer(TowerLayer::new(tower::timeout::TimeoutLayer::new(
            Duration::from_millis(50),
        )))
        .on("t", move |ctx: Context, _e: DomainEvent<Ping>| {
            let a = a.clone();
            async move {
                a.push(ctx.attempt());
                if ctx.attempt() < 3 {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
                Ok::<_, HandlerError>(())
            }
        })
        .start()
        .await
        .unwrap();
    h.bus().publish("t", Ping::new(1)).await.unwrap();
    h.wait_for_handled::<Ping>(WAIT).await;
    assert_eq!(attempts.snapshot(), vec![1, 2, 3]);
    router.shutdown().await.unwrap();
}
