//! The router never hides a dead consumer: panics in decoding or upcasting
//! are poison (dead-lettered `panic`), a consumer whose stream panics, fails
//! or ends on its own fails the router with a typed error, and `health()`
//! says which subscription is alive. Memory bus, tokio's clock paused; the
//! broken backends below are core test doubles wrapping the memory bus.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use busline::backend::{async_trait, BusDecorator};
use busline::memory::MemoryBroker;
use busline::{
    Bus, ConsumeError, ConsumeErrorKind, Context, DeadLetterReason, DomainEvent, EventBus, HandlerError,
    Router, RouterError, SubscribeError, SubscribeOptions, Subscription, SubscriptionState,
};
use busline_testkit::events::{Order, OrderV1, Ping};
use busline_testkit::support::{eventually, within, Collector, WAIT};
use busline_testkit::{test_settings, TestHarness};
use futures::StreamExt;

#[tokio::test(start_paused = true)]
async fn a_panicking_upcaster_dead_letters_its_event_and_the_rest_are_handled() {
    let h = TestHarness::new();
    let handled = Collector::<String>::new();
    let sink = handled.clone();
    let router = Router::new(h.bus(), "g")
        .on("orders", move |_c: Context, e: DomainEvent<Order>| {
            let sink = sink.clone();
            async move {
                sink.push(e.data.order_id);
                Ok::<_, HandlerError>(())
            }
        })
        .upcast(|old: OrderV1| {
            // A data-dependent bug in user code.
            assert!(old.id != "o-bad", "upcaster cannot convert {}", old.id);
            Order::from(old)
        })
        .start()
        .await
        .unwrap();
    let v1 = |id: &str| OrderV1 {
        id: id.into(),
        total: 1,
    };
    h.bus().publish("orders", v1("o-bad")).await.unwrap();
    for id in ["o-1", "o-2", "o-3"] {
        h.bus().publish("orders", v1(id)).await.unwrap();
    }
    handled
        .wait_len(3, WAIT, "the three events after the poison")
        .await;
    let dl = h.wait_for_dead_letters(1, WAIT).await;
    assert_eq!(dl[0].letter.reason, DeadLetterReason::Panic);
    assert!(
        dl[0].letter.error.contains("cannot convert o-bad"),
        "{}",
        dl[0].letter.error
    );
    assert!(router.health().is_ready());
    let stats = router.shutdown().await.unwrap();
    assert_eq!((stats.handled, stats.dead_lettered, stats.retried), (3, 1, 0));
}

/// A payload whose `Deserialize` panics on one value, as a buggy hand-written
/// impl would.
#[derive(serde::Serialize, Debug, Clone)]
struct Fragile(u64);

impl<'de> serde::Deserialize<'de> for Fragile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(d)?;
        assert!(n != 13, "unlucky number");
        Ok(Fragile(n))
    }
}

impl busline::Event for Fragile {
    const TYPE: &'static str = "test.fragile";
}

#[tokio::test(start_paused = true)]
async fn a_panicking_decoder_is_poison_not_a_dead_consumer() {
    let h = TestHarness::new();
    let handled = Collector::<u64>::new();
    let sink = handled.clone();
    let router = Router::new(h.bus(), "g")
        .on("t", move |_c: Context, e: DomainEvent<Fragile>| {
            let sink = sink.clone();
            async move {
                sink.push(e.data.0);
                Ok::<_, HandlerError>(())
            }
        })
        .start()
        .await
        .unwrap();
    for n in [12, 13, 14] {
        h.bus().publish("t", Fragile(n)).await.unwrap();
    }
    handled.wait_len(2, WAIT, "the events around the poison").await;
    let dl = h.wait_for_dead_letters(1, WAIT).await;
    assert_eq!(dl[0].letter.reason, DeadLetterReason::Panic);
    assert!(dl[0].letter.error.contains("unlucky number"));
    assert_eq!(handled.snapshot(), vec![12, 14]);
    router.shutdown().await.unwrap();
}

/// How the broken backend's subscription misbehaves after handing out
/// `after` deliveries.
#[derive(Clone, Copy)]
enum Breakage {
    Panic,
    Fail,
    End,
}

/// The memory bus, with every subscription passed through `rewire`: the
/// broken backends of these tests.
struct Rewired {
    inner: Arc<dyn EventBus>,
    rewire: Box<Rewire>,
}

type Rewire = dyn Fn(&str, Subscription) -> Subscription + Send + Sync;

#[async_trait]
impl BusDecorator for Rewired {
    fn inner(&self) -> &Arc<dyn EventBus> {
        &self.inner
    }

    async fn on_subscribe(
        &self,
        topic: &str,
        group: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, SubscribeError> {
        let sub = self.inner.subscribe(topic, group, options).await?;
        Ok((self.rewire)(topic, sub))
    }
}

/// A subscription that breaks as `breakage` says after `after` deliveries.
fn breaking(breakage: Breakage, after: usize, topic: &str, sub: Subscription) -> Subscription {
    let topic = topic.to_owned();
    let seen = Arc::new(AtomicUsize::new(0));
    let stream = sub.take_while(move |_| {
        let n = seen.fetch_add(1, Ordering::Relaxed);
        let keep = n < after;
        if !keep {
            if let Breakage::Panic = breakage {
                panic!("backend bug in the stream of {topic}");
            }
        }
        std::future::ready(keep)
    });
    match breakage {
        Breakage::Fail => Subscription::new(stream.chain(futures::stream::once(async {
            Err(ConsumeError::new(ConsumeErrorKind::Connection, "t"))
        }))),
        _ => Subscription::new(stream),
    }
}

async fn run_broken(breakage: Breakage) -> (RouterError, Vec<u64>) {
    let broker = MemoryBroker::new();
    let bus = Bus::new(
        Rewired {
            inner: Arc::new(broker.connect()),
            rewire: Box::new(move |topic, sub| breaking(breakage, 2, topic, sub)),
        },
        test_settings(),
    );
    let handled = Collector::<u64>::new();
    let sink = handled.clone();
    let router = Router::new(bus.clone(), "g")
        .on("t", move |_c: Context, e: DomainEvent<Ping>| {
            let sink = sink.clone();
            async move {
                sink.push(e.data.seq);
                Ok::<_, HandlerError>(())
            }
        })
        .start()
        .await
        .unwrap();
    for seq in 1..=3 {
        bus.publish("t", Ping::new(seq)).await.unwrap();
    }
    handled
        .wait_len(2, WAIT, "the deliveries before the breakage")
        .await;
    eventually(WAIT, "health to report the dead subscription", || {
        !router.health().is_alive()
    })
    .await;
    let health = router.health();
    let failures: Vec<_> = health.failures().collect();
    assert_eq!(failures.len(), 1, "{health:?}");
    assert_eq!(failures[0].0, "t");
    assert!(matches!(
        health.subscriptions[0].state,
        SubscriptionState::Failed { .. }
    ));
    let err = within(WAIT, "run_until to end", router.run_until(std::future::pending()))
        .await
        .unwrap_err();
    (err, handled.snapshot())
}

#[tokio::test(start_paused = true)]
async fn a_consumer_whose_stream_panics_fails_the_router() {
    let (err, handled) = run_broken(Breakage::Panic).await;
    assert!(
        matches!(&err, RouterError::ConsumerPanicked { topic, message } if topic == "t" && message.contains("backend bug")),
        "{err}"
    );
    assert_eq!(handled, vec![1, 2]);
}

#[tokio::test(start_paused = true)]
async fn a_consumer_whose_stream_fails_fails_the_router() {
    let (err, _) = run_broken(Breakage::Fail).await;
    assert!(
        matches!(&err, RouterError::Consume(e) if e.kind() == ConsumeErrorKind::Connection),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_subscription_that_ends_on_its_own_fails_the_router() {
    let (err, _) = run_broken(Breakage::End).await;
    assert!(
        matches!(&err, RouterError::SubscriptionEnded { topic } if topic == "t"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn health_shows_a_paused_subscription_and_a_clean_stop() {
    use busline::{EventService, Gate};
    struct Gated(Gate);
    impl EventService<Ping> for Gated {
        type Future = std::future::Ready<Result<(), HandlerError>>;
        fn call(&self, _e: DomainEvent<Ping>, _c: Context) -> Self::Future {
            std::future::ready(Ok(()))
        }
        fn gate(&self) -> Option<Gate> {
            Some(self.0.clone())
        }
    }
    let h = TestHarness::new();
    let gate = Gate::new();
    let router = Router::new(h.bus(), "g")
        .on("t", Gated(gate.clone()))
        .start()
        .await
        .unwrap();
    assert!(router.health().is_ready());
    gate.close();
    h.bus().publish("t", Ping::new(1)).await.unwrap();
    eventually(WAIT, "the subscription to pause", || {
        router.health().subscriptions[0].state == SubscriptionState::Paused
    })
    .await;
    let health = router.health();
    assert!(health.is_alive() && !health.is_ready());
    gate.open();
    eventually(WAIT, "the subscription to run again", || {
        router.health().is_ready()
    })
    .await;
    router.shutdown().await.unwrap();
}

/// A settle handle whose every call hangs, as on a connection that stopped
/// answering; it keeps the memory acker alive (undecided) inside.
struct HangingAcker(#[allow(dead_code)] busline::Acker);

#[async_trait]
impl busline::backend::Acknowledge for HangingAcker {
    async fn ack(self: Box<Self>) -> Result<(), busline::SettleError> {
        std::future::pending().await
    }
    async fn nack(self: Box<Self>, _: std::time::Duration) -> Result<(), busline::SettleError> {
        std::future::pending().await
    }
    async fn dead_letter(self: Box<Self>, _: busline::DeadLetter) -> Result<(), busline::SettleError> {
        std::future::pending().await
    }
}

/// Deliveries of `sub` whose settle calls hang.
fn unanswering(_topic: &str, sub: Subscription) -> Subscription {
    Subscription::new(sub.map(|d| {
        d.map(|d| {
            let (topic, group, attempt) = (d.topic().into(), d.group().into(), d.attempt());
            let (event, acker) = d.into_parts();
            busline::Delivery::new(event, attempt, topic, group, Box::new(HangingAcker(acker)))
        })
    }))
}

#[tokio::test(start_paused = true)]
async fn shutdown_returns_within_its_deadline_when_settling_hangs() {
    let broker = MemoryBroker::new();
    let bus = Bus::new(
        Rewired {
            inner: Arc::new(broker.connect()),
            rewire: Box::new(unanswering),
        },
        test_settings(),
    );
    let deadline = std::time::Duration::from_secs(10);
    let started = Collector::<u64>::new();
    let sink = started.clone();
    let router = Router::new(bus.clone(), "g")
        .with_shutdown_deadline(deadline)
        .with_handler_timeout(None)
        .on("t", move |_c: Context, e: DomainEvent<Ping>| {
            let sink = sink.clone();
            async move {
                sink.push(e.data.seq);
                if e.data.seq == 1 {
                    std::future::pending::<()>().await; // never finishes
                }
                Ok::<_, HandlerError>(())
            }
        })
        .start()
        .await
        .unwrap();
    for seq in 1..=2 {
        bus.publish("t", Ping::new(seq)).await.unwrap();
    }
    started.wait_len(2, WAIT, "both handlers to start").await;
    let begun = tokio::time::Instant::now();
    let stats = within(WAIT, "shutdown to return", router.shutdown())
        .await
        .unwrap();
    let took = begun.elapsed();
    assert!(took <= deadline, "shutdown took {took:?}, deadline {deadline:?}");
    assert_eq!(stats.abandoned, 1);
}

#[tokio::test(start_paused = true)]
async fn the_harness_keeps_an_abandoned_event_at_its_attempt() {
    let h = TestHarness::new();
    let attempts = Collector::<u32>::new();
    let sink = attempts.clone();
    let handler = move |ctx: Context, _e: DomainEvent<Ping>| {
        let sink = sink.clone();
        async move {
            sink.push(ctx.attempt());
            if sink.len() == 1 {
                std::future::pending::<()>().await;
            }
            Ok::<_, HandlerError>(())
        }
    };
    let router = Router::new(h.bus(), "g")
        .with_shutdown_deadline(std::time::Duration::from_secs(1))
        .with_handler_timeout(None)
        .on("t", handler.clone())
        .start()
        .await
        .unwrap();
    h.bus().publish("t", Ping::new(1)).await.unwrap();
    attempts.wait_len(1, WAIT, "the handler to start").await;
    assert_eq!(router.shutdown().await.unwrap().abandoned, 1);
    let router = Router::new(h.bus(), "g").on("t", handler).start().await.unwrap();
    assert_eq!(
        attempts.wait_len(2, WAIT, "the event to come back").await,
        vec![1, 1]
    );
    router.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_dropped_without_shutdown_returns_its_deliveries() {
    let h = TestHarness::new();
    let seen = Collector::<u32>::new();
    let sink = seen.clone();
    let stuck = move |ctx: Context, _e: DomainEvent<Ping>| {
        let sink = sink.clone();
        async move {
            sink.push(ctx.attempt());
            std::future::pending::<()>().await;
            Ok::<_, HandlerError>(())
        }
    };
    let router = Router::new(h.bus(), "g").on("t", stuck).start().await.unwrap();
    h.bus().publish("t", Ping::new(1)).await.unwrap();
    seen.wait_len(1, WAIT, "the handler to start").await;
    drop(router);
    let handled = Collector::<u64>::new();
    let sink = handled.clone();
    let next = Router::new(h.bus(), "g")
        .on("t", move |_c: Context, e: DomainEvent<Ping>| {
            let sink = sink.clone();
            async move {
                sink.push(e.data.seq);
                Ok::<_, HandlerError>(())
            }
        })
        .start()
        .await
        .unwrap();
    assert_eq!(
        handled
            .wait_len(1, WAIT, "the event the dropped router held")
            .await,
        vec![1]
    );
    next.shutdown().await.unwrap();
}
