//! Router behaviour beyond the conformance suite, on the memory bus with
//! tokio's clock paused.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use busline::memory::{MemoryBroker, MemoryConfig};
use busline::{
    Bus, Context, DeadLetterPolicy, DeadLetterReason, DomainEvent, Event, EventService, HandlerError, Repair,
    ReplayOptions, Router, RouterError, UnknownEventAction,
};
use busline_testkit::events::{Order, OrderV1, Ping, Pong};
use busline_testkit::support::{unique, within, Collector, WAIT};
use busline_testkit::{test_settings, TestHarness};
use futures::future::BoxFuture;

async fn ok_ping(_ctx: Context, _e: DomainEvent<Ping>) -> Result<(), HandlerError> {
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn registration_errors_are_reported_at_start() {
    let h = TestHarness::new();
    let dup = Router::new(h.bus(), "g")
        .on("t", ok_ping)
        .on("t", ok_ping)
        .start()
        .await;
    assert!(
        matches!(dup, Err(RouterError::DuplicateHandler { ref event_type, .. }) if event_type == "test.ping")
    );
    assert!(matches!(
        Router::new(h.bus(), "g").start().await,
        Err(RouterError::NoRoutes { .. })
    ));
    let not_older = Router::new(h.bus(), "g")
        .on("t", |_c: Context, _e: DomainEvent<Order>| async {
            Ok::<_, HandlerError>(())
        })
        .upcast::<Order, Order>(|o| o)
        .start()
        .await;
    assert!(matches!(not_older, Err(RouterError::InvalidUpcaster(ref m)) if m.contains("not older")));
    let other_type = Router::new(h.bus(), "g")
        .on("t", |_c: Context, _e: DomainEvent<Pong>| async {
            Ok::<_, HandlerError>(())
        })
        .upcast::<Ping, Pong>(|p| Pong { seq: p.seq })
        .start()
        .await;
    assert!(matches!(other_type, Err(RouterError::InvalidUpcaster(ref m)) if m.contains("differ")));
}

#[tokio::test(start_paused = true)]
async fn unknown_types_can_be_dead_lettered() {
    let h = TestHarness::new();
    let router = Router::new(h.bus(), "g")
        .with_dead_letter(DeadLetterPolicy {
            unknown_event: UnknownEventAction::DeadLetter,
            ..Default::default()
        })
        .on("t", ok_ping)
        .start()
        .await
        .unwrap();
    h.bus().publish("t", Pong { seq: 1 }).await.unwrap();
    let dl = h.wait_for_dead_letters(1, WAIT).await;
    assert_eq!(dl[0].letter.reason, DeadLetterReason::UnknownEventType);
    assert!(dl[0].letter.error.contains("test.pong"), "{}", dl[0].letter.error);
    router.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn older_version_without_upcaster_is_dead_lettered() {
    let h = TestHarness::new();
    let router = Router::new(h.bus(), "g")
        .on("t", |_c: Context, _e: DomainEvent<Order>| async {
            Ok::<_, HandlerError>(())
        })
        .start()
        .await
        .unwrap();
    h.bus()
        .publish(
            "t",
            OrderV1 {
                id: "o-1".into(),
                total: 1,
            },
        )
        .await
        .unwrap();
    let dl = h.wait_for_dead_letters(1, WAIT).await;
    assert_eq!(dl[0].letter.reason, DeadLetterReason::UnsupportedVersion);
    assert!(dl[0].letter.error.contains("older"), "{}", dl[0].letter.error);
    router.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn long_error_texts_are_cut() {
    let h = TestHarness::new();
    let router = Router::new(h.bus(), "g")
        .with_dead_letter(DeadLetterPolicy {
            max_error_len: 16,
            ..Default::default()
        })
        .on("t", |_c: Context, _e: DomainEvent<Ping>| async {
            Err::<(), _>(HandlerError::permanent("é".repeat(100)))
        })
        .start()
        .await
        .unwrap();
    h.bus().publish("t", Ping::new(1)).await.unwrap();
    let dl = h.wait_for_dead_letters(1, WAIT).await;
    assert_eq!(dl[0].letter.error, "é".repeat(8));
    router.shutdown().await.unwrap();
}

/// A handler with state, by trait.
struct CountingHandler(Arc<AtomicUsize>);

impl EventService<Ping> for CountingHandler {
    type Future = BoxFuture<'static, Result<(), HandlerError>>;

    fn call(&self, _event: DomainEvent<Ping>, _ctx: Context) -> Self::Future {
        let count = self.0.clone();
        Box::pin(async move {
            count.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }
}

#[tokio::test(start_paused = true)]
async fn handler_types_and_the_harness() {
    let h = TestHarness::new();
    let count = Arc::new(AtomicUsize::new(0));
    let router = Router::new(h.bus(), "g")
        .on("t", CountingHandler(count.clone()))
        .start()
        .await
        .unwrap();
    h.bus().publish("t", Ping::new(1)).await.unwrap();
    h.bus().publish("t", Ping::new(2)).await.unwrap();
    let handled = h.wait_for_handled_count::<Ping>(2, WAIT).await;
    assert_eq!(handled.iter().map(|e| e.data.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(count.load(Ordering::SeqCst), 2);
    assert_eq!(h.published::<Ping>().len(), 2);
    assert!(h.published::<Pong>().is_empty());
    assert!(h.dead_lettered().is_empty());
    router.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "timed out after 5s waiting for 1 handled `test.pong` event(s)")]
async fn harness_waits_are_bounded_with_a_clear_message() {
    let h = TestHarness::new();
    h.wait_for_handled::<Pong>(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn in_flight_bound_holds_for_slow_handlers() {
    let h = TestHarness::new();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Collector::<u64>::new();
    let (r, p, d) = (running.clone(), peak.clone(), done.clone());
    let router = Router::new(h.bus(), "g")
        .with_max_in_flight(3)
        .on("t", move |_c: Context, e: DomainEvent<Ping>| {
            let (r, p, d) = (r.clone(), p.clone(), d.clone());
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                r.fetch_sub(1, Ordering::SeqCst);
                d.push(e.data.seq);
                Ok::<_, HandlerError>(())
            }
        })
        .start()
        .await
        .unwrap();
    for seq in 0..20 {
        h.bus().publish("t", Ping::new(seq)).await.unwrap();
    }
    done.wait_len(20, WAIT, "all slow handlers").await;
    assert_eq!(
        peak.load(Ordering::SeqCst),
        3,
        "handlers ran 3 at a time, not more, not fewer"
    );
    router.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn full_queue_makes_publishers_wait() {
    let broker = MemoryBroker::with_config(MemoryConfig {
        queue_capacity: 5,
        ..MemoryConfig::default()
    });
    let bus = Bus::new(broker.connect(), test_settings());
    let topic = unique("bp");
    bus.provision(&topic, "slow").await.unwrap();
    for seq in 0..5 {
        bus.publish(&topic, Ping::new(seq)).await.unwrap();
    }
    let blocked = {
        let (bus, topic) = (bus.clone(), topic.clone());
        tokio::spawn(async move { bus.publish(&topic, Ping::new(5)).await })
    };
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        !blocked.is_finished(),
        "the sixth publish waits while the queue is full"
    );
    assert_eq!(broker.depth(&topic, "slow"), Some(5));
    let mut sub = bus.subscribe(&topic, "slow", Default::default()).await.unwrap();
    let first = futures::StreamExt::next(&mut sub).await.unwrap().unwrap();
    first.ack().await.unwrap();
    within(WAIT, "the waiting publish", blocked)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(broker.depth(&topic, "slow"), Some(5));
}

#[tokio::test(start_paused = true)]
async fn replay_repairs_keeps_and_discards() {
    let h = TestHarness::new();
    let router = Router::new(h.bus(), "g")
        .on("t", |_c: Context, e: DomainEvent<Ping>| async move {
            if e.data.note == "bad" {
                Err(HandlerError::permanent("bad note"))
            } else {
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    for seq in 0..3 {
        h.bus()
            .publish(
                "t",
                Ping {
                    seq,
                    note: "bad".into(),
                },
            )
            .await
            .unwrap();
    }
    h.wait_for_dead_letters(3, WAIT).await;
    let report = h
        .bus()
        .replay_dead_letters_with("t", "g", ReplayOptions::default().max(3), |mut event, letter| {
            assert_eq!(
                letter.expect("dead-letter attributes").reason,
                DeadLetterReason::PermanentError
            );
            let ping: Ping = serde_json::from_slice(&event.data.bytes).unwrap();
            match ping.seq {
                0 => {
                    event.data.bytes = serde_json::to_vec(&Ping {
                        seq: 0,
                        note: "fixed".into(),
                    })
                    .unwrap()
                    .into();
                    Repair::Replay(event)
                }
                1 => Repair::Keep,
                _ => Repair::Discard,
            }
        })
        .await
        .unwrap();
    assert_eq!(
        (report.moved, report.unreadable, report.kept, report.discarded),
        (1, 0, 1, 1)
    );
    let handled = h.wait_for_handled::<Ping>(WAIT).await;
    assert_eq!((handled.data.seq, handled.data.note.as_str()), (0, "fixed"));
    router.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn replay_never_takes_its_destination_from_the_letter() {
    // Anyone who can write to a DLQ can set `deadlettertopic`; a letter that
    // names another topic or group stays where it is.
    let h = TestHarness::new();
    let bus = h.bus();
    let mut forged = bus.encode("t", DomainEvent::new(Ping::new(7))).unwrap();
    busline::DeadLetter {
        reason: DeadLetterReason::PermanentError,
        error: "forged".into(),
        topic: "payments".into(),
        group: "g".into(),
        attempts: 1,
        failed_at: forged.time,
    }
    .stamp(&mut forged);
    let dlq = busline::dead_letter_topic("t", "g");
    bus.provision(&dlq, "g").await.unwrap();
    bus.publish_raw(&dlq, forged).await.unwrap();
    let mut payments = bus
        .subscribe("payments", "watcher", busline::SubscribeOptions::default())
        .await
        .unwrap();
    let report = bus
        .replay_dead_letters("t", "g", ReplayOptions::default().max(1))
        .await
        .unwrap();
    assert_eq!((report.moved, report.misplaced), (0, 1));
    let nothing = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        futures::StreamExt::next(&mut payments),
    )
    .await;
    assert!(nothing.is_err(), "nothing reached the forged destination");
}

#[tokio::test(start_paused = true)]
async fn shutdown_of_the_bus_ends_the_router() {
    let h = TestHarness::new();
    let router = Router::new(h.bus(), "g").on("t", ok_ping).start().await.unwrap();
    h.bus().shutdown().await;
    let stats = within(
        WAIT,
        "the router to stop",
        router.run_until(std::future::pending()),
    )
    .await
    .unwrap();
    assert_eq!(stats.handled, 0);
    assert_eq!(
        h.bus().publish("t", Ping::new(1)).await.unwrap_err().kind(),
        busline::PublishErrorKind::Closed
    );
}

#[test]
fn event_trait_defaults_to_version_one() {
    assert_eq!(<Pong as Event>::VERSION, 1);
}
