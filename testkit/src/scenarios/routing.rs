//! Scenarios 10–12 and 16: order per key, typed routing and versions,
//! correlation, replay from the DLQ.

use std::collections::BTreeMap;

use busline_core::dead_letter::attr as dl;
use busline_core::{Context, DomainEvent, HandlerError, ReplayOptions, Router, REPLAY_COUNT};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::{skip, DlqReader};
use crate::events::{Order, OrderV1, OrderV3, Ping, Pong};
use crate::support::{eventually, recorder, unique, Collector, WAIT};
use crate::BusFixture;

/// Scenario 10: Order per key under concurrent handling, across a retry (where the
/// backend declares `order_per_key`).
pub async fn order_per_key(fixture: &dyn BusFixture) {
    const KEYS: u64 = 4;
    const PER_KEY: u64 = 50;
    let bus = fixture.connect().await;
    if !bus.capabilities().order_per_key {
        skip(
            fixture.name(),
            "order_per_key",
            "the backend does not declare order per key",
        );
        return;
    }
    let (topic, group) = (unique("order"), unique("g"));
    let handled = Collector::<(String, u64)>::new();
    let sink = handled.clone();
    let router = Router::new(bus.clone(), &group)
        .with_max_in_flight(16)
        .on(&topic, move |ctx: Context, e: DomainEvent<Ping>| {
            let sink = sink.clone();
            async move {
                // Uneven handling times, so that concurrency would reorder.
                for _ in 0..(e.data.seq * 7 % 5) {
                    tokio::task::yield_now().await;
                }
                if e.data.seq == 5 && ctx.attempt() == 1 {
                    return Err(HandlerError::retryable("first attempt of seq 5 fails"));
                }
                sink.push((e.key.as_deref().unwrap_or_default().to_owned(), e.data.seq));
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    let events: Vec<_> = (0..PER_KEY)
        .flat_map(|seq| (0..KEYS).map(move |k| DomainEvent::new(Ping::new(seq)).with_key(format!("key-{k}"))))
        .collect();
    bus.publish_batch(&topic, events).await.unwrap();
    handled
        .wait_len((KEYS * PER_KEY) as usize, WAIT, "every keyed event")
        .await;
    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (key, seq) in handled.snapshot() {
        per_key.entry(key).or_default().push(seq);
    }
    assert_eq!(per_key.len(), KEYS as usize);
    for (key, seqs) in per_key {
        assert_eq!(seqs, (0..PER_KEY).collect::<Vec<_>>(), "order of {key}");
    }
    router.shutdown().await.unwrap();
    bus.shutdown().await;
}

/// Scenario 11: Typed routing: several event types on one topic reach their
/// handlers; an older version is upcast; a newer one is dead-lettered; a type
/// without handler is acknowledged and counted.
pub async fn typed_routing_and_versions(fixture: &dyn BusFixture) {
    let bus = fixture.connect().await;
    let (topic, group) = (unique("typed"), unique("g"));
    let orders = Collector::<(u32, Order)>::new();
    let pings = Collector::<u64>::new();
    let (o, p) = (orders.clone(), pings.clone());
    let router = Router::new(bus.clone(), &group)
        .on(&topic, move |_ctx: Context, e: DomainEvent<Order>| {
            let o = o.clone();
            async move {
                o.push((e.version, e.data));
                Ok::<_, HandlerError>(())
            }
        })
        .on(&topic, move |_ctx: Context, e: DomainEvent<Ping>| {
            let p = p.clone();
            async move {
                p.push(e.data.seq);
                Ok::<_, HandlerError>(())
            }
        })
        .upcast::<OrderV1, Order>(Order::from)
        .start()
        .await
        .unwrap();
    let dlq = DlqReader::start(&bus, &topic, &group).await;

    bus.publish(
        &topic,
        Order {
            order_id: "o-2".into(),
            total_cents: 250,
        },
    )
    .await
    .unwrap();
    bus.publish(&topic, Ping::new(7)).await.unwrap();
    bus.publish(
        &topic,
        OrderV1 {
            id: "o-1".into(),
            total: 3,
        },
    )
    .await
    .unwrap();
    let newer = bus
        .publish(
            &topic,
            OrderV3 {
                order_id: "o-3".into(),
                total: (5, "EUR".into()),
            },
        )
        .await
        .unwrap();
    bus.publish(&topic, Pong { seq: 1 }).await.unwrap();

    let mut got = orders.wait_len(2, WAIT, "the current and the upcast order").await;
    got.sort_by(|a, b| a.1.order_id.cmp(&b.1.order_id));
    assert_eq!(
        got,
        vec![
            (
                2,
                Order {
                    order_id: "o-1".into(),
                    total_cents: 300
                }
            ),
            (
                2,
                Order {
                    order_id: "o-2".into(),
                    total_cents: 250
                }
            ),
        ]
    );
    assert_eq!(pings.wait_len(1, WAIT, "the ping").await, vec![7]);
    let letters = dlq
        .letters
        .wait_len(1, WAIT, "the newer version's dead letter")
        .await;
    let letter = letters[0].as_ref().unwrap();
    assert_eq!(letter.id, newer);
    assert_eq!(letter.version, 3);
    assert_eq!(letter.extensions[dl::REASON], "unsupported_version");
    // The pong was published last; it may still be on its way.
    eventually(WAIT, "the event without handler to be skipped", || {
        router.stats().skipped >= 1
    })
    .await;
    let stats = router.shutdown().await.unwrap();
    assert_eq!(
        stats.skipped, 1,
        "the event type without handler is acked and counted"
    );
    assert_eq!(stats.handled, 3);
    bus.shutdown().await;
}

/// Scenario 12: `Context::publish` keeps the correlation id and sets the causation id.
pub async fn correlation_and_causation(fixture: &dyn BusFixture) {
    let bus = fixture.connect().await;
    let (pings, pongs, group) = (unique("pings"), unique("pongs"), unique("g"));
    let out = pongs.clone();
    let responder = Router::new(bus.clone(), &group)
        .on(&pings, move |ctx: Context, e: DomainEvent<Ping>| {
            let out = out.clone();
            async move {
                ctx.publish(&out, Pong { seq: e.data.seq }).await?;
                Ok::<_, HandlerError>(())
            }
        })
        .start()
        .await
        .unwrap();
    let got = Collector::<DomainEvent<Pong>>::new();
    let listener = Router::new(bus.clone(), &group)
        .on(&pongs, recorder(&got))
        .start()
        .await
        .unwrap();
    let ping = DomainEvent::new(Ping::new(12)).with_correlation_id("request-12");
    let ping_id = bus.publish_event(&pings, ping).await.unwrap();
    let pong = got.wait_len(1, WAIT, "the pong").await.remove(0);
    assert_eq!(pong.data.seq, 12);
    assert_eq!(pong.correlation_id, "request-12");
    assert_eq!(pong.causation_id.as_deref(), Some(ping_id.as_str()));
    assert_ne!(pong.id, ping_id);
    responder.shutdown().await.unwrap();
    listener.shutdown().await.unwrap();
    bus.shutdown().await;
}

/// Scenario 16: DLQ replay: events moved back from the DLQ are handled, without their
/// dead-letter attributes, by the dead-lettering group only.
pub async fn dlq_replay(fixture: &dyn BusFixture) {
    const N: u64 = 5;
    let bus = fixture.connect().await;
    let (topic, group) = (unique("replay"), unique("g"));
    // Another group on the topic handles the originals and must not handle
    // the replays again.
    let bystander_seen = Collector::<u64>::new();
    let seen = bystander_seen.clone();
    let bystander = Router::new(bus.clone(), unique("bystander"))
        .on(&topic, move |_ctx: Context, e: DomainEvent<Ping>| {
            let seen = seen.clone();
            async move {
                seen.push(e.data.seq);
                Ok::<_, HandlerError>(())
            }
        })
        .start()
        .await
        .unwrap();
    let broken = Arc::new(AtomicBool::new(true));
    let handled = Collector::<DomainEvent<Ping>>::new();
    let (flag, sink) = (broken.clone(), handled.clone());
    let router = Router::new(bus.clone(), &group)
        .on(&topic, move |_ctx: Context, e: DomainEvent<Ping>| {
            let (flag, sink) = (flag.clone(), sink.clone());
            async move {
                if flag.load(Ordering::SeqCst) {
                    return Err(HandlerError::permanent("downstream rejects it"));
                }
                sink.push(e);
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    let mut ids = Vec::new();
    for seq in 0..N {
        ids.push(bus.publish(&topic, Ping::new(seq)).await.unwrap());
    }
    eventually(WAIT, "every event to be dead-lettered", || {
        router.stats().dead_lettered >= N
    })
    .await;
    broken.store(false, Ordering::SeqCst);
    let report = bus
        .replay_dead_letters(
            &topic,
            &group,
            ReplayOptions::default().max(N as usize).idle_timeout(WAIT),
        )
        .await
        .unwrap();
    assert_eq!(report.moved, N as usize);
    let mut got = handled.wait_len(N as usize, WAIT, "the replayed events").await;
    got.sort_by_key(|e| e.data.seq);
    assert_eq!(
        got.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        ids,
        "same ids after replay"
    );
    for e in &got {
        assert!(
            dl::ALL.iter().all(|a| !e.extensions.contains_key(*a)),
            "{:?}",
            e.extensions
        );
        assert_eq!(e.extensions[REPLAY_COUNT], "1");
        assert_eq!(e.extensions[busline_core::REPLAY_GROUP], group);
    }
    eventually(WAIT, "the bystander group to skip the replays", || {
        bystander.stats().skipped >= N
    })
    .await;
    assert_eq!(
        bystander_seen.len(),
        N as usize,
        "the bystander handled only the originals"
    );
    bystander.shutdown().await.unwrap();
    router.shutdown().await.unwrap();
    bus.shutdown().await;
}
