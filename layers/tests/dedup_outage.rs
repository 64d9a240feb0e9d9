//! The dedup layer waits out an unreachable store instead of failing: on the
//! memory bus with tokio's clock paused, over a store that can be switched
//! off. (The same on a real PostgreSQL behind a proxy: `pg_outage.rs`.)

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use busline_core::backend::async_trait;
use busline_core::{
    BoxError, Context, DomainEvent, EventService, HandlerError, HandlerWithoutStateExt, Layer, RetryPolicy,
    Router,
};
use busline_layers::{BreakerState, CircuitBreakerLayer, DedupLayer, DedupStore, MemoryDedupStore};
use busline_testkit::events::Ping;
use busline_testkit::support::{eventually, Collector, WAIT};
use busline_testkit::TestHarness;
use tokio::time::Instant;

/// A memory store that answers with an error while `down` is set, and
/// counts the calls it refused.
#[derive(Clone)]
struct Switchable {
    marks: Arc<MemoryDedupStore>,
    down: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
    /// How long each call takes, in milliseconds.
    latency_ms: Arc<AtomicUsize>,
}

impl Switchable {
    fn new() -> Self {
        Self {
            marks: Arc::new(MemoryDedupStore::new(Duration::from_secs(3600), 10_000)),
            down: Arc::default(),
            refused: Arc::default(),
            latency_ms: Arc::default(),
        }
    }

    async fn check(&self) -> Result<(), BoxError> {
        let latency = self.latency_ms.load(Ordering::SeqCst) as u64;
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        if self.down.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err("connection refused".into());
        }
        Ok(())
    }
}

#[async_trait]
impl DedupStore for Switchable {
    async fn seen(&self, group: &str, event_id: &str) -> Result<bool, BoxError> {
        self.check().await?;
        self.marks.seen(group, event_id).await
    }

    async fn mark(&self, group: &str, event_id: &str) -> Result<(), BoxError> {
        self.check().await?;
        self.marks.mark(group, event_id).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_store_outage_pauses_consumption_and_uses_up_no_attempt() {
    let h = TestHarness::new();
    let store = Switchable::new();
    let handled = Collector::new();
    let hd = handled.clone();
    let handler = DedupLayer::new(store.clone()).layer(
        (move |ctx: Context, e: DomainEvent<Ping>| {
            hd.push((e.data.seq, ctx.attempt()));
            async { Ok::<_, HandlerError>(()) }
        })
        .into_service(),
    );
    let gate = EventService::<Ping>::gate(&handler).unwrap();
    let router = Router::new(h.bus(), "g")
        .with_max_in_flight(4)
        .with_retry(RetryPolicy::default().with_max_attempts(3))
        .on("t", handler)
        .start()
        .await
        .unwrap();
    for i in 0..5 {
        h.bus().publish("t", Ping::new(i)).await.unwrap();
    }
    handled.wait_len(5, WAIT, "5 events before the outage").await;
    store.down.store(true, Ordering::SeqCst);
    for i in 5..25 {
        h.bus().publish("t", Ping::new(i)).await.unwrap();
    }
    eventually(WAIT, "the gate closed", || !gate.is_open()).await;
    // 20 s: far past what 3 attempts with backoff would last, inside the
    // router's 30 s handler timeout.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(handled.len(), 5, "nothing handled during the outage");
    let probes = store.refused.load(Ordering::SeqCst);
    assert!(
        (5..=40).contains(&probes),
        "one call probes, with backoff up to 5 s: {probes} store calls in 20 s"
    );
    assert!(!gate.is_open());
    store.down.store(false, Ordering::SeqCst);
    let all = handled.wait_len(25, WAIT, "every event after the outage").await;
    assert!(gate.is_open());
    assert!(all.iter().all(|(_, attempt)| *attempt == 1), "{all:?}");
    let seqs: HashSet<u64> = all.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs.len(), 25, "each event once");
    let stats = router.shutdown().await.unwrap();
    assert_eq!((stats.handled, stats.retried, stats.dead_lettered), (25, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn an_inner_breakers_gate_is_shared_and_handed_back() {
    let h = TestHarness::new();
    let store = Switchable::new();
    let failing = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let (f, c) = (failing.clone(), calls.clone());
    let breaker = CircuitBreakerLayer::new()
        .with_window_size(2)
        .with_minimum_calls(2)
        .with_open_duration(Duration::from_secs(10))
        .with_half_open_probes(1)
        .layer(
            (move |_ctx: Context, _e: DomainEvent<Ping>| {
                c.fetch_add(1, Ordering::SeqCst);
                let fail = f.load(Ordering::SeqCst);
                async move {
                    if fail {
                        Err(HandlerError::retryable("dependency down"))
                    } else {
                        Ok(())
                    }
                }
            })
            .into_service(),
        );
    let breaker_handle = breaker.handle();
    let handler = DedupLayer::new(store.clone()).layer(breaker);
    let gate = EventService::<Ping>::gate(&handler).unwrap();
    let router = Router::new(h.bus(), "g")
        .with_max_in_flight(1)
        .with_retry(RetryPolicy::default().with_max_attempts(100).with_jitter(0.0))
        .on("t", handler)
        .start()
        .await
        .unwrap();
    // One gate for both: the breaker's.
    breaker_handle.gate().close();
    assert!(!gate.is_open());
    breaker_handle.gate().open();

    // A store outage closes it and hands it back open.
    store.down.store(true, Ordering::SeqCst);
    h.bus().publish("t", Ping::new(1)).await.unwrap();
    eventually(WAIT, "the gate closed", || !gate.is_open()).await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    store.down.store(false, Ordering::SeqCst);
    h.wait_for_handled::<Ping>(WAIT).await;
    assert!(gate.is_open());

    // The breaker still holds consumption with the same gate.
    failing.store(true, Ordering::SeqCst);
    h.bus().publish("t", Ping::new(2)).await.unwrap();
    eventually(WAIT, "breaker open", || {
        breaker_handle.state() == BreakerState::Open
    })
    .await;
    assert!(!gate.is_open(), "the open breaker holds the subscription");
    failing.store(false, Ordering::SeqCst);
    h.wait_for_handled_count::<Ping>(2, WAIT).await;
    assert_eq!(breaker_handle.state(), BreakerState::Closed);
    let stats = router.shutdown().await.unwrap();
    assert_eq!((stats.handled, stats.dead_lettered), (2, 0));
}

#[tokio::test(start_paused = true)]
async fn cancelled_probers_do_not_leave_consumption_paused() {
    let h = TestHarness::new();
    let store = Switchable::new();
    let handled = Collector::new();
    let hd = handled.clone();
    let handler = DedupLayer::new(store.clone()).layer(
        (move |_ctx: Context, e: DomainEvent<Ping>| {
            hd.push(e.data.seq);
            async { Ok::<_, HandlerError>(()) }
        })
        .into_service(),
    );
    let gate = EventService::<Ping>::gate(&handler).unwrap();
    // A handler timeout shorter than the outage: every waiting call, the
    // probing one included, is cancelled again and again.
    let router = Router::new(h.bus(), "g")
        .with_max_in_flight(2)
        .with_handler_timeout(Some(Duration::from_secs(2)))
        .with_retry(RetryPolicy::default().with_max_attempts(1000))
        .on("t", handler)
        .start()
        .await
        .unwrap();
    store.down.store(true, Ordering::SeqCst);
    for i in 0..5 {
        h.bus().publish("t", Ping::new(i)).await.unwrap();
    }
    eventually(WAIT, "the gate closed", || !gate.is_open()).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(handled.is_empty());
    let refused = store.refused.load(Ordering::SeqCst);
    store.down.store(false, Ordering::SeqCst);
    // Whichever call comes next probes, finds the store back, and reopens.
    let all = handled.wait_len(5, WAIT, "every event after the outage").await;
    assert!(gate.is_open());
    assert!(
        refused >= 6,
        "probing went on through the cancellations: {refused}"
    );
    let seqs: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(seqs.len(), 5);
    let stats = router.shutdown().await.unwrap();
    assert_eq!((stats.handled, stats.dead_lettered), (5, 0));
}

#[tokio::test(start_paused = true)]
async fn calls_failing_together_count_once_for_the_probe_backoff() {
    let h = TestHarness::new();
    let store = Switchable::new();
    store.latency_ms.store(100, Ordering::SeqCst);
    let handled = Collector::new();
    let hd = handled.clone();
    let handler = DedupLayer::new(store.clone()).layer(
        (move |_ctx: Context, e: DomainEvent<Ping>| {
            hd.push(e.data.seq);
            async { Ok::<_, HandlerError>(()) }
        })
        .into_service(),
    );
    let gate = EventService::<Ping>::gate(&handler).unwrap();
    let router = Router::new(h.bus(), "g")
        .with_max_in_flight(8)
        .on("t", handler)
        .start()
        .await
        .unwrap();
    // Eight calls are asking the store when it goes away.
    for i in 0..8 {
        h.bus().publish("t", Ping::new(i)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.down.store(true, Ordering::SeqCst);
    eventually(WAIT, "the gate closed", || !gate.is_open()).await;
    // The eight failures and the first probe's.
    eventually(WAIT, "the first probe", || {
        store.refused.load(Ordering::SeqCst) >= 9
    })
    .await;
    let back_at = Instant::now();
    store.down.store(false, Ordering::SeqCst);
    // The second probe comes after the second backoff step (200 ms ± 20%),
    // not after the 5 s that nine counted failures would give.
    handled.wait_len(8, WAIT, "every event").await;
    let took = back_at.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "resumed {took:?} after the store was back"
    );
    assert!(gate.is_open());
    let stats = router.shutdown().await.unwrap();
    assert_eq!((stats.handled, stats.retried), (8, 0));
}
