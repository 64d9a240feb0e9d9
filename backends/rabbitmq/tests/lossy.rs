//! The lossy paths: connections dropped under publishers and consumers,
//! deliveries dropped undecided. Connections are closed from the broker's
//! side by their client-provided name, so other tests are not disturbed.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use busline_core::{Bus, Context, DomainEvent, HandlerError, PublishErrorKind, Router, SubscribeOptions};
use busline_rabbitmq::RabbitConfig;
use busline_testkit::events::Ping;
use busline_testkit::support::{within, Collector, WAIT};
use busline_testkit::test_settings;
use common::{close_connections_named, unique, RabbitFixture};
use futures::StreamExt;

async fn bus(fixture: &RabbitFixture, name: &str) -> Bus {
    Bus::new(
        fixture.rabbit(name, RabbitConfig::default()).await,
        test_settings(),
    )
}

fn seq(bus: &Bus, d: &busline_core::Delivery) -> u64 {
    let raw = d.event().unwrap();
    bus.codecs()
        .decode::<Ping>(raw.content_type(), &raw.data.bytes)
        .unwrap()
        .seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_dropped_undecided_comes_back_as_a_new_attempt() {
    let fixture = RabbitFixture::new().await;
    let bus = bus(&fixture, &unique("dropped")).await;
    let (topic, group) = (unique("dropped"), unique("g"));
    let mut sub = bus
        .subscribe(&topic, &group, SubscribeOptions::default().max_in_flight(1))
        .await
        .unwrap();
    let id = bus.publish(&topic, Ping::new(1)).await.unwrap();
    let first = within(WAIT, "the first delivery", sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.event().unwrap().id.as_str(), first.attempt()),
        (id.as_str(), 1)
    );
    drop(first);
    // Same subscription, same channel: the drop hands it back at once.
    let again = within(WAIT, "the dropped delivery again", sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.event().unwrap().id, id);
    assert_eq!(again.attempt(), 2, "a redelivery counts as a new attempt");
    again.ack().await.unwrap();
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_resumes_after_its_connection_is_dropped() {
    let fixture = RabbitFixture::new().await;
    let name = unique("resume");
    let consumer = bus(&fixture, &name).await;
    let publisher = bus(&fixture, &unique("resume-pub")).await;
    let (topic, group) = (unique("resume"), unique("g"));
    let seen = Collector::<u64>::new();
    let sink = seen.clone();
    let router = Router::new(consumer.clone(), &group)
        .on(&topic, move |_ctx: Context, e: DomainEvent<Ping>| {
            let sink = sink.clone();
            async move {
                sink.push(e.data.seq);
                Ok::<_, HandlerError>(())
            }
        })
        .start()
        .await
        .unwrap();
    for s in 0..10 {
        publisher.publish(&topic, Ping::new(s)).await.unwrap();
    }
    seen.wait_len(10, WAIT, "events before the drop").await;

    assert_eq!(
        close_connections_named(&format!("{name} (consume)")).await,
        1,
        "the consumer's connection was found and closed"
    );
    // Published while the consumer reconnects: the group's queue keeps them.
    for s in 10..30 {
        publisher.publish(&topic, Ping::new(s)).await.unwrap();
    }
    seen.wait_until(WAIT, "every event after the reconnection", |s| {
        s.iter().copied().collect::<BTreeSet<_>>() == (0..30).collect()
    })
    .await;
    router.shutdown().await.unwrap();
    consumer.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_deliveries_come_back_after_the_connection_is_dropped() {
    let fixture = RabbitFixture::new().await;
    let name = unique("unacked");
    let bus = bus(&fixture, &name).await;
    let (topic, group) = (unique("unacked"), unique("g"));
    let mut sub = bus
        .subscribe(&topic, &group, SubscribeOptions::default().max_in_flight(4))
        .await
        .unwrap();
    for s in 0..4 {
        bus.publish(&topic, Ping::new(s)).await.unwrap();
    }
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(within(WAIT, "deliveries", sub.next()).await.unwrap().unwrap());
    }
    assert_eq!(close_connections_named(&format!("{name} (consume)")).await, 1);
    // Settling on the dead channel fails with a typed error, and loses
    // nothing: the broker requeued the deliveries.
    let mut failed = 0;
    for d in held {
        if d.ack().await.is_err() {
            failed += 1;
        }
    }
    assert!(failed > 0, "acks on a closed channel report failure");
    let mut again = BTreeSet::new();
    while again.len() < 4 {
        let d = within(WAIT, "the requeued deliveries", sub.next())
            .await
            .unwrap()
            .unwrap();
        assert!(
            d.attempt() >= 2,
            "redelivered after a connection loss: attempt {}",
            d.attempt()
        );
        again.insert(seq(&bus, &d));
        d.ack().await.unwrap();
    }
    assert_eq!(again, (0..4).collect());
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_during_a_connection_loss_fail_or_are_confirmed() {
    const TASKS: u64 = 4;
    let fixture = RabbitFixture::new().await;
    let name = unique("publoss");
    let publisher = bus(&fixture, &name).await;
    let consumer = bus(&fixture, &unique("publoss-sub")).await;
    let (topic, group) = (unique("publoss"), unique("g"));
    consumer.provision(&topic, &group).await.unwrap();

    // Publishers run until told to stop; the connection is dropped under
    // them while they are busy.
    let stop = Arc::new(AtomicBool::new(false));
    let confirmed_count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (bus, topic) = (publisher.clone(), topic.clone());
        let (stop, count) = (stop.clone(), confirmed_count.clone());
        tasks.push(tokio::spawn(async move {
            let mut results = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let s = t * 1_000_000 + i;
                let r = bus.publish(&topic, Ping::new(s)).await;
                if r.is_ok() {
                    count.fetch_add(1, Ordering::SeqCst);
                } else {
                    // What a caller does: back off a little and go on.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                results.push((s, r.map_err(|e| (e.kind(), e.to_string()))));
                i += 1;
            }
            results
        }));
    }
    let wait_for = |n: u64| {
        let count = confirmed_count.clone();
        within(WAIT, "confirmed publishes", async move {
            while count.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    wait_for(200).await;
    let closed = close_connections_named(&format!("{name} (publish)")).await;
    assert_eq!(closed, 1);
    let after_close = confirmed_count.load(Ordering::SeqCst);
    // The publisher reconnects by itself and goes on.
    wait_for(after_close + 200).await;
    stop.store(true, Ordering::SeqCst);

    let mut confirmed = BTreeSet::new();
    let mut failed = 0;
    for t in tasks {
        for (s, r) in t.await.unwrap() {
            match r {
                Ok(_) => {
                    confirmed.insert(s);
                }
                Err((kind, text)) => {
                    assert_eq!(kind, PublishErrorKind::Connection, "seq {s}: {text}");
                    failed += 1;
                }
            }
        }
    }
    eprintln!(
        "{} confirmed, {failed} failed around the connection loss",
        confirmed.len()
    );

    let seen = Arc::new(Collector::<u64>::new());
    let sink = seen.clone();
    let router = Router::new(consumer.clone(), &group)
        .on(&topic, move |_ctx: Context, e: DomainEvent<Ping>| {
            let sink = sink.clone();
            async move {
                sink.push(e.data.seq);
                Ok::<_, HandlerError>(())
            }
        })
        .start()
        .await
        .unwrap();
    seen.wait_until(WAIT, "every confirmed event", |s| {
        confirmed.is_subset(&s.iter().copied().collect())
    })
    .await;
    router.shutdown().await.unwrap();
    consumer.shutdown().await;
    publisher.shutdown().await;
}
