//! The handler model on the memory bus: the shapes a small shop service
//! writes (state, closures capturing an `Arc`, anyhow errors, extractors),
//! each run for real through a router.

use std::sync::{Arc, Mutex};

use std::time::Duration;

use busline::{
    Attempt, Context, DeadLetterReason, DomainEvent, FromContext, FromRef, HandlerError,
    HandlerWithoutStateExt, Layer, Router, State, Topic, TowerLayer,
};
use busline_testkit::events::{Order, OrderV1, Ping, Pong};
use busline_testkit::support::{eventually, unique, Collector, WAIT};
use busline_testkit::TestHarness;

/// A stand-in for a connection pool: what a handler's state usually holds.
#[derive(Clone, Default)]
struct Pool {
    rows: Arc<Mutex<Vec<u64>>>,
    fail_first: Arc<Mutex<bool>>,
}

impl Pool {
    async fn insert(&self, seq: u64) -> anyhow::Result<()> {
        let mut fail = self.fail_first.lock().unwrap();
        if *fail {
            *fail = false;
            anyhow::bail!("connection reset by peer");
        }
        self.rows.lock().unwrap().push(seq);
        Ok(())
    }
}

#[derive(Clone)]
struct Shop {
    pool: Pool,
    name: &'static str,
}

impl FromRef<Shop> for Pool {
    fn from_ref(shop: &Shop) -> Pool {
        shop.pool.clone()
    }
}

fn ping(seq: u64) -> Ping {
    Ping {
        seq,
        note: String::new(),
    }
}

async fn store(
    State(pool): State<Pool>,
    Attempt(attempt): Attempt,
    e: DomainEvent<Ping>,
) -> anyhow::Result<()> {
    pool.insert(e.data.seq * 10 + u64::from(attempt)).await
}

#[tokio::test(start_paused = true)]
async fn state_from_the_router_and_anyhow_errors_are_retried() {
    let h = TestHarness::new();
    let shop = Shop {
        pool: Pool::default(),
        name: "shop",
    };
    *shop.pool.fail_first.lock().unwrap() = true;
    let topic = unique("orders");
    let router = Router::new(h.bus(), "g")
        .with_state(shop.clone())
        .on(&topic, store)
        .start()
        .await
        .unwrap();
    h.bus().publish(&topic, ping(7)).await.unwrap();
    h.wait_for_handled::<Ping>(WAIT).await;
    // The first attempt failed with an anyhow error (retryable), the second stored.
    assert_eq!(*shop.pool.rows.lock().unwrap(), vec![72]);
    assert_eq!(shop.name, "shop");
    router.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_closure_moves_its_captured_arc_into_the_future() {
    let h = TestHarness::new();
    let seen = Collector::new();
    let topic = unique("t");
    let sink = seen.clone();
    // `FnOnce + Clone`: no inner `let sink = sink.clone()` needed (E0525 before).
    let router = Router::new(h.bus(), "g")
        .on(&topic, move |Topic(t): Topic, e: DomainEvent<Ping>| async move {
            sink.push((t.to_string(), e.data.seq));
        })
        .start()
        .await
        .unwrap();
    for seq in 0..3 {
        h.bus().publish(&topic, ping(seq)).await.unwrap();
    }
    let got = seen.wait_len(3, WAIT, "three pings handled").await;
    assert_eq!(got, (0..3).map(|s| (topic.clone(), s)).collect::<Vec<_>>());
    router.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn question_mark_on_anyhow_inside_a_handler_error_handler() {
    let h = TestHarness::new();
    let topic = unique("t");
    let attempts = Collector::new();
    let a = attempts.clone();
    let router = Router::new(h.bus(), "g")
        .with_retry(busline::RetryPolicy::default().with_max_attempts(2))
        .on(&topic, move |ctx: Context, _e: DomainEvent<Ping>| async move {
            a.push(ctx.attempt());
            let failed: anyhow::Result<()> = Err(anyhow::anyhow!("upstream said no"));
            failed?;
            Ok::<_, HandlerError>(())
        })
        .start()
        .await
        .unwrap();
    h.bus().publish(&topic, ping(1)).await.unwrap();
    let letters = h.wait_for_dead_letters(1, WAIT).await;
    assert_eq!(letters[0].letter.reason, DeadLetterReason::MaxAttemptsExceeded);
    assert!(
        letters[0].letter.error.contains("upstream said no"),
        "{}",
        letters[0].letter.error
    );
    assert_eq!(attempts.snapshot(), vec![1, 2]);
    router.shutdown().await.unwrap();
}

/// The tenant of a topic named `tenant.<name>.orders`.
struct Tenant(String);

impl<S> FromContext<S> for Tenant {
    fn from_context(ctx: &Context, _state: &S) -> Result<Self, HandlerError> {
        match ctx.topic().split('.').nth(1) {
            Some(name) if ctx.topic().starts_with("tenant.") => Ok(Tenant(name.to_owned())),
            _ => Err(HandlerError::permanent(format!(
                "no tenant in topic `{}`",
                ctx.topic()
            ))),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_extractor_that_refuses_dead_letters_without_running_the_handler() {
    let h = TestHarness::new();
    let ran = Collector::new();
    let r = ran.clone();
    let good = format!("tenant.{}.orders", unique("acme"));
    let bad = unique("orders");
    let handler = move |Tenant(name): Tenant, e: DomainEvent<Ping>| async move { r.push((name, e.data.seq)) };
    let router = Router::new(h.bus(), "g")
        .on(&good, handler.clone())
        .on(&bad, handler)
        .start()
        .await
        .unwrap();
    h.bus().publish(&bad, ping(1)).await.unwrap();
    h.bus().publish(&good, ping(2)).await.unwrap();
    let letters = h.wait_for_dead_letters(1, WAIT).await;
    assert_eq!(letters[0].letter.reason, DeadLetterReason::PermanentError);
    assert!(
        letters[0].letter.error.contains("no tenant in topic"),
        "{}",
        letters[0].letter.error
    );
    let got = ran.wait_len(1, WAIT, "the tenant's ping handled").await;
    assert_eq!(got, vec![(good.split('.').nth(1).unwrap().to_owned(), 2)]);
    // The refused event was published first and is dead-lettered already.
    assert_eq!(ran.snapshot().len(), 1, "the refused event reached the handler");
    router.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_harness_reports_upcast_events_under_the_handled_type_and_skips_as_unhandled() {
    let h = TestHarness::new();
    let topic = unique("orders");
    let router = Router::new(h.bus(), "billing")
        .on(&topic, |_e: DomainEvent<Order>| async {})
        .upcast(|v1: OrderV1| Order::from(v1))
        .start()
        .await
        .unwrap();
    h.bus()
        .publish(
            &topic,
            OrderV1 {
                id: "o-1".into(),
                total: 12,
            },
        )
        .await
        .unwrap();
    // No handler for pongs in this group: acknowledged as a skip.
    h.bus().publish(&topic, Pong { seq: 1 }).await.unwrap();
    let handled = h.wait_for_handled::<Order>(WAIT).await;
    assert_eq!(handled.data.order_id, "o-1");
    assert_eq!(handled.data.total_cents, 1200);
    assert_eq!(handled.version, 2);
    eventually(WAIT, "the pong skipped", || router.stats().skipped == 1).await;
    let stats = router.shutdown().await.unwrap();
    assert_eq!((stats.handled, stats.skipped), (1, 1));
    assert!(
        h.handled::<OrderV1>().is_empty(),
        "the v1 event was handled as an Order"
    );
    assert!(
        h.handled::<Pong>().is_empty(),
        "a skipped pong counted as handled"
    );
}

#[tokio::test(start_paused = true)]
async fn towers_own_timeout_wraps_every_handler_of_a_router() {
    let h = TestHarness::new();
    let topic = unique("t");
    let attempts = Collector::new();
    let a = attempts.clone();
    let router = Router::new(h.bus(), "g")
        .layer(TowerLayer::new(tower::timeout::TimeoutLayer::new(
            Duration::from_millis(50),
        )))
        .on(
            &topic,
            move |Attempt(n): Attempt, _e: DomainEvent<Ping>| async move {
                a.push(n);
                if n == 1 {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
            },
        )
        .start()
        .await
        .unwrap();
    h.bus().publish(&topic, ping(1)).await.unwrap();
    h.wait_for_handled::<Ping>(WAIT).await;
    // tower's `Elapsed` on the first attempt is a retryable failure.
    assert_eq!(attempts.snapshot(), vec![1, 2]);
    let stats = router.shutdown().await.unwrap();
    assert_eq!((stats.retried, stats.handled), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_tower_service_builder_stack_limits_one_handler() {
    let h = TestHarness::new();
    let topic = unique("t");
    let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (r, m) = (running.clone(), most.clone());
    let handler = move |_e: DomainEvent<Ping>| async move {
        use std::sync::atomic::Ordering::SeqCst;
        let now = r.fetch_add(1, SeqCst) + 1;
        m.fetch_max(now, SeqCst);
        tokio::time::sleep(Duration::from_millis(10)).await;
        r.fetch_sub(1, SeqCst);
    };
    let stack = tower::ServiceBuilder::new()
        .concurrency_limit(1)
        .timeout(Duration::from_secs(5));
    let router = Router::new(h.bus(), "g")
        .with_max_in_flight(8)
        .on(&topic, TowerLayer::new(stack).layer(handler.into_service()))
        .start()
        .await
        .unwrap();
    for seq in 0..8 {
        h.bus().publish(&topic, ping(seq)).await.unwrap();
    }
    h.wait_for_handled_count::<Ping>(8, WAIT).await;
    assert_eq!(
        most.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "two calls ran at once"
    );
    router.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_permanent_failure_stays_permanent_through_a_tower_stack() {
    let h = TestHarness::new();
    let topic = unique("t");
    let router = Router::new(h.bus(), "g")
        .layer(TowerLayer::new(tower::limit::ConcurrencyLimitLayer::new(2)))
        .on(&topic, |_e: DomainEvent<Ping>| async {
            Err::<(), _>(HandlerError::permanent("no such customer"))
        })
        .start()
        .await
        .unwrap();
    h.bus().publish(&topic, ping(1)).await.unwrap();
    let letters = h.wait_for_dead_letters(1, WAIT).await;
    assert_eq!(letters[0].letter.reason, DeadLetterReason::PermanentError);
    assert_eq!(letters[0].letter.attempts, 1);
    assert!(letters[0].letter.error.contains("no such customer"));
    router.shutdown().await.unwrap();
}

/// Version 2 of an event whose upcast value cannot be serialized again.
#[derive(Debug, serde::Deserialize)]
struct Unencodable {
    #[allow(dead_code)]
    seq: u64,
}

impl serde::Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("this type is never written"))
    }
}

impl busline::Event for Unencodable {
    const TYPE: &'static str = "test.ping";
    const VERSION: u32 = 2;
}

#[tokio::test(start_paused = true)]
async fn an_upcast_the_harness_cannot_copy_is_still_handled() {
    // The harness asks for handled events, which re-encodes upcast values;
    // that copy failing must not dead-letter the event.
    let h = TestHarness::new();
    let topic = unique("t");
    let router = Router::new(h.bus(), "g")
        .on(&topic, |_e: DomainEvent<Unencodable>| async {})
        .upcast(|p: Ping| Unencodable { seq: p.seq })
        .start()
        .await
        .unwrap();
    h.bus().publish(&topic, ping(3)).await.unwrap();
    eventually(WAIT, "the upcast ping handled", || router.stats().handled == 1).await;
    let stats = router.shutdown().await.unwrap();
    assert_eq!((stats.handled, stats.dead_lettered), (1, 0));
    assert!(h.dead_lettered().is_empty());
}
