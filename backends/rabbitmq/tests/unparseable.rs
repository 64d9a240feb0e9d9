//! Messages lapin cannot parse: a header-table key or `content_type` that
//! is not UTF-8, written by the raw AMQP client as a foreign producer
//! would. Each delivery of such a message drops the consumer's connection.
//! On quorum queues the broker parks it in `<topic>::<group>::unparseable`
//! after the delivery limit and every valid event is handled; on classic
//! queues the subscription gives up after a bounded number of losses with
//! `ConsumeErrorKind::Unparseable`. Either way: a bounded number of
//! reconnects, the poison never reaches a handler, other subscriptions and
//! the publisher are not disturbed, and shutdown returns within its
//! deadline.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use busline_core::{
    Bus, ConsumeErrorKind, Context, DomainEvent, HandlerError, Router, RouterError, RunningRouter,
    SubscribeErrorKind, SubscribeOptions,
};
use busline_rabbitmq::{QueueType, RabbitBus, RabbitConfig};
use busline_testkit::events::Ping;
use busline_testkit::support::{eventually, within, Collector, WAIT};
use busline_testkit::test_settings;
use common::raw::{self, RawMessage};
use common::{unique, RabbitFixture};
use futures::StreamExt;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

const LIMIT: Duration = Duration::from_secs(30);

/// How the poison is spoiled.
#[derive(Clone, Copy, Debug)]
enum Spoiled {
    /// A header-table key of bytes `FF FE`.
    HeaderName,
    /// A `content_type` of bytes `FF FE`.
    ContentType,
}

fn poison(topic: &str, how: Spoiled) -> RawMessage {
    let mut m = RawMessage {
        exchange: topic.to_owned(),
        routing_key: "ping".into(),
        content_type: Some(b"application/json".to_vec()),
        headers: vec![(b"cloudEvents_id".to_vec(), b"poison".to_vec())],
        body: b"{\"seq\":999999,\"note\":\"poison\"}".to_vec(),
    };
    match how {
        Spoiled::HeaderName => m.headers.push((vec![0xff, 0xfe], b"x".to_vec())),
        Spoiled::ContentType => m.content_type = Some(vec![0xff, 0xfe]),
    }
    m
}

fn config(queue_type: QueueType) -> RabbitConfig {
    RabbitConfig {
        queue_type,
        ..RabbitConfig::default()
    }
}

async fn bus(fixture: &RabbitFixture, name: &str, queue_type: QueueType) -> (RabbitBus, Bus) {
    let rabbit = fixture.rabbit(name, config(queue_type)).await;
    (rabbit.clone(), Bus::new(rabbit, test_settings()))
}

async fn recorder(
    bus: &Bus,
    topic: &str,
    group: &str,
    seen: &std::sync::Arc<Collector<u64>>,
) -> RunningRouter {
    let sink = seen.clone();
    Router::new(bus.clone(), group)
        .on(topic, move |_ctx: Context, e: DomainEvent<Ping>| {
            let sink = sink.clone();
            async move {
                sink.push(e.data.seq);
                Ok::<_, HandlerError>(())
            }
        })
        .start()
        .await
        .unwrap()
}

/// Messages in `queue`, by a passive declaration.
async fn message_count(fixture: &RabbitFixture, queue: &str) -> u32 {
    let conn = fixture.plain().await;
    let channel = within(LIMIT, "a channel", conn.create_channel()).await.unwrap();
    let q = within(
        LIMIT,
        "a passive declaration",
        channel.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("queue `{queue}` exists: {e}"));
    let _ = conn.close(200, "done".into()).await;
    q.message_count()
}

/// Shuts the router and the bus down, each within its deadline.
async fn shut_down(router: RunningRouter, bus: &Bus) -> Result<(), RouterError> {
    let result = within(
        Duration::from_secs(45),
        "the router to shut down within its deadline",
        router.shutdown(),
    )
    .await;
    within(Duration::from_secs(45), "the bus to shut down", bus.shutdown()).await;
    result.map(|_| ())
}

/// The poison in the parking queue, read with the raw client (lapin cannot).
async fn assert_parked(fixture: &RabbitFixture, topic: &str, group: &str) {
    let parking = format!("{topic}::{group}::unparseable");
    let got = raw::drain(&fixture.broker.url, &parking, 10, LIMIT)
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "one message parked in {parking}");
    assert_eq!(
        got[0].body,
        poison(topic, Spoiled::HeaderName).body,
        "the poison, byte for byte"
    );
    let props = String::from_utf8_lossy(&got[0].properties);
    assert!(
        props.contains("delivery_limit"),
        "parked by the delivery limit: {props}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_a_poison_at_the_head_of_the_queue_is_parked_and_every_valid_event_handled() {
    let fixture = RabbitFixture::new().await;
    let (rabbit, bus) = bus(&fixture, &unique("unparseable-head"), QueueType::Quorum).await;
    let (topic, group) = (unique("unparseable-head"), unique("g"));
    bus.provision(&topic, &group).await.unwrap();
    raw::publish(&fixture.broker.url, &[poison(&topic, Spoiled::HeaderName)], LIMIT)
        .await
        .unwrap();
    // Behind the poison, within one prefetch: these come with it, and must
    // not be counted towards the delivery limit with it.
    for s in 0..20 {
        bus.publish(&topic, Ping::new(s)).await.unwrap();
    }
    let started = Instant::now();
    let seen = Collector::<u64>::new();
    let router = recorder(&bus, &topic, &group, &seen).await;
    seen.wait_until(WAIT, "every valid event behind the poison", |s| {
        s.iter().copied().collect::<BTreeSet<_>>() == (0..20).collect()
    })
    .await;
    let handled_after = started.elapsed();
    let losses_then = rabbit.stats().unparseable_losses;
    eventually(WAIT, "the parked poison to be counted", || {
        rabbit.stats().parked == 1
    })
    .await;
    let stats = rabbit.stats();
    let limit = rabbit.config().delivery_limit;
    eprintln!(
        "quorum, head of queue: 20 valid events handled after {handled_after:?} and {losses_then} losses; \
         parked seen after {:?}; {stats:?}; delivery_limit {limit}",
        started.elapsed()
    );
    assert!(
        (1..=u64::from(limit) + 1).contains(&stats.unparseable_losses),
        "the broker parks it after delivery_limit + 1 deliveries at most: {stats:?}"
    );
    assert_eq!(stats.unparseable_failures, 0);
    assert!(
        !seen.snapshot().contains(&999_999),
        "the poison never reaches a handler"
    );
    assert!(router.health().is_alive(), "{:?}", router.health());
    shut_down(router, &bus).await.unwrap();
    assert_parked(&fixture, &topic, &group).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_a_poison_mid_stream_is_parked_and_every_valid_event_handled() {
    let fixture = RabbitFixture::new().await;
    let (rabbit, bus) = bus(&fixture, &unique("unparseable-mid"), QueueType::Quorum).await;
    let (topic, group) = (unique("unparseable-mid"), unique("g"));
    let seen = Collector::<u64>::new();
    let router = recorder(&bus, &topic, &group, &seen).await;
    for s in 0..100 {
        bus.publish(&topic, Ping::new(s)).await.unwrap();
    }
    seen.wait_len(100, WAIT, "events before the poison").await;
    raw::publish(
        &fixture.broker.url,
        &[poison(&topic, Spoiled::ContentType)],
        LIMIT,
    )
    .await
    .unwrap();
    let started = Instant::now();
    // More than one prefetch (64) of events after the poison, so the
    // consumer goes back from prefetch 1 to the full prefetch.
    for s in 100..300 {
        bus.publish(&topic, Ping::new(s)).await.unwrap();
    }
    let published_after = started.elapsed();
    seen.wait_until(WAIT, "every valid event around the poison", |s| {
        s.iter().copied().collect::<BTreeSet<_>>() == (0..300).collect()
    })
    .await;
    let handled_after = started.elapsed();
    let losses_then = rabbit.stats().unparseable_losses;
    eventually(WAIT, "the parked poison to be counted", || {
        rabbit.stats().parked == 1
    })
    .await;
    let stats = rabbit.stats();
    eprintln!(
        "quorum, mid-stream: after the poison, 200 events published in {published_after:?}, \
         all 300 handled after {handled_after:?} and {losses_then} losses, parked seen after {:?}; {stats:?}",
        started.elapsed()
    );
    assert!(
        (1..=u64::from(rabbit.config().delivery_limit) + 1).contains(&stats.unparseable_losses),
        "{stats:?}"
    );
    // The prefetch went back from 1 to the full one without losing the
    // consumer (the poison came after 100 events, more than one prefetch
    // before the end).
    assert_eq!(stats.consumer_losses, stats.unparseable_losses, "{stats:?}");
    assert!(!seen.snapshot().contains(&999_999));
    assert!(router.health().is_alive(), "{:?}", router.health());
    shut_down(router, &bus).await.unwrap();
    let parking = format!("{topic}::{group}::unparseable");
    assert_eq!(message_count(&fixture, &parking).await, 1, "parked in {parking}");
}

/// The router of a classic group fails with the typed error after the
/// bounded number of losses; the losses stop there.
async fn classic_gives_up(
    rabbit: &RabbitBus,
    router: &RunningRouter,
    started: Instant,
    what: &str,
) -> busline_rabbitmq::RabbitStats {
    eventually(WAIT, "the router to fail on the poison", || {
        !router.health().is_alive()
    })
    .await;
    let failed_after = started.elapsed();
    let health = router.health();
    let (_, error) = health.failures().next().expect("a failure");
    assert!(
        error.contains("lapin cannot parse") && error.contains("classic queues have no delivery limit"),
        "{error}"
    );
    let stats = rabbit.stats();
    let max = u64::from(rabbit.config().max_unparseable_losses);
    // The reconnections wait, doubling from the minimum backoff, ±25 %:
    // before the third loss at least 75 % of 1 + 2 minimums. A lower bound
    // only, which sleeping guarantees.
    let min = rabbit.config().reconnect_min_backoff;
    assert!(
        failed_after >= (min + 2 * min) * 3 / 4,
        "the losses were not spread out: {max} in {failed_after:?}"
    );
    assert_eq!(stats.unparseable_losses, max, "{stats:?}");
    assert_eq!(stats.unparseable_failures, 1, "{stats:?}");
    // Bounded: no reconnect after giving up. (What must not happen has no
    // event to wait for: this watches for two seconds.)
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rabbit.stats(), stats, "no more reconnects after giving up");
    eprintln!("classic, {what}: failed after {failed_after:?} with {stats:?}");
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_a_poison_at_the_head_of_the_queue_fails_the_router_with_a_typed_error() {
    let fixture = RabbitFixture::new().await;
    // A longer backoff than the default, so that the waits between the
    // losses are far longer than a reconnection takes.
    let config = RabbitConfig {
        reconnect_min_backoff: Duration::from_millis(400),
        ..config(QueueType::Classic)
    };
    let rabbit = fixture.rabbit(&unique("unparseable-classic"), config).await;
    let bus = Bus::new(rabbit.clone(), test_settings());
    let (topic, group) = (unique("unparseable-classic"), unique("g"));
    bus.provision(&topic, &group).await.unwrap();
    raw::publish(&fixture.broker.url, &[poison(&topic, Spoiled::HeaderName)], LIMIT)
        .await
        .unwrap();
    for s in 0..5 {
        bus.publish(&topic, Ping::new(s)).await.unwrap();
    }
    let started = Instant::now();
    let seen = Collector::<u64>::new();
    let router = recorder(&bus, &topic, &group, &seen).await;
    classic_gives_up(&rabbit, &router, started, "head of queue").await;
    assert!(
        seen.is_empty(),
        "nothing gets past a classic queue's head: {:?}",
        seen.snapshot()
    );
    let err = shut_down(router, &bus).await.unwrap_err();
    assert!(
        matches!(&err, RouterError::Consume(e) if e.kind() == ConsumeErrorKind::Unparseable),
        "{err:?}"
    );
    let queue = format!("{topic}::{group}");
    assert_eq!(
        message_count(&fixture, &queue).await,
        6,
        "the poison and the 5 events stay in {queue}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_a_poison_mid_stream_fails_the_router_with_a_typed_error() {
    let fixture = RabbitFixture::new().await;
    let (rabbit, bus) = bus(&fixture, &unique("unparseable-classic-mid"), QueueType::Classic).await;
    let (topic, group) = (unique("unparseable-classic-mid"), unique("g"));
    let seen = Collector::<u64>::new();
    let router = recorder(&bus, &topic, &group, &seen).await;
    for s in 0..100 {
        bus.publish(&topic, Ping::new(s)).await.unwrap();
    }
    seen.wait_len(100, WAIT, "events before the poison").await;
    raw::publish(
        &fixture.broker.url,
        &[poison(&topic, Spoiled::ContentType)],
        LIMIT,
    )
    .await
    .unwrap();
    let started = Instant::now();
    for s in 100..200 {
        bus.publish(&topic, Ping::new(s)).await.unwrap();
    }
    classic_gives_up(&rabbit, &router, started, "mid-stream").await;
    let err = shut_down(router, &bus).await.unwrap_err();
    assert!(
        matches!(&err, RouterError::Consume(e) if e.kind() == ConsumeErrorKind::Unparseable),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_costs_only_the_connection_of_its_own_subscription() {
    let fixture = RabbitFixture::new().await;
    let (rabbit, bus) = bus(&fixture, &unique("unparseable-other"), QueueType::Classic).await;
    let (poisoned, other, group) = (unique("unparseable-p"), unique("unparseable-o"), unique("g"));
    let mut sub = bus
        .subscribe(&other, &group, SubscribeOptions::default().max_in_flight(4))
        .await
        .unwrap();
    bus.publish(&other, Ping::new(1)).await.unwrap();
    let held = within(WAIT, "a delivery on the other topic", sub.next())
        .await
        .unwrap()
        .unwrap();
    let seen = Collector::<u64>::new();
    let router = recorder(&bus, &poisoned, &group, &seen).await;
    raw::publish(
        &fixture.broker.url,
        &[poison(&poisoned, Spoiled::HeaderName)],
        LIMIT,
    )
    .await
    .unwrap();
    eventually(WAIT, "the poisoned consumer to give up", || {
        !router.health().is_alive()
    })
    .await;
    // The other subscription's channel lived through it: its delivery is
    // still ackable, and nothing comes again.
    held.ack()
        .await
        .expect("the other subscription's channel is intact");
    bus.publish(&other, Ping::new(2)).await.unwrap();
    let next = within(WAIT, "the next delivery on the other topic", sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.attempt(), 1, "not a redelivery");
    next.ack().await.unwrap();
    let stats = rabbit.stats();
    assert_eq!(
        stats.consumer_losses, stats.unparseable_losses,
        "only the poisoned consumer was lost: {stats:?}"
    );
    drop(sub);
    let _ = shut_down(router, &bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_queue_of_another_type_is_a_typed_error_naming_the_queue_and_the_setting() {
    let fixture = RabbitFixture::new().await;
    let (topic, group) = (unique("unparseable-type"), unique("g"));
    let (_, classic) = bus(&fixture, &unique("unparseable-type"), QueueType::Classic).await;
    classic.provision(&topic, &group).await.unwrap();
    let (_, quorum) = bus(&fixture, &unique("unparseable-type"), QueueType::Quorum).await;
    let Err(err) = quorum
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
    else {
        panic!("a classic queue is not redeclared as quorum");
    };
    assert_eq!(err.kind(), SubscribeErrorKind::Topology);
    let text = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(
        text.contains(&format!("`{topic}.{group}.dlq::{group}`"))
            || text.contains(&format!("`{topic}::{group}`")),
        "names the queue: {text}"
    );
    assert!(
        text.contains("queue_type") && text.contains("classic"),
        "names the setting: {text}"
    );
    // Classic stays available for the groups made with it.
    let (_, again) = bus(&fixture, &unique("unparseable-type"), QueueType::Classic).await;
    let sub = again
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .unwrap();
    drop(sub);
    for b in [classic, quorum, again] {
        within(Duration::from_secs(45), "the bus to shut down", b.shutdown()).await;
    }
}

/// A subscriber that settles each delivery before asking for the next one:
/// when the consumer goes back from prefetch 1 to the full prefetch, the
/// broker may already have sent the next event to the prefetch-1 consumer.
/// That event must be handed out, not left unacked on the open channel
/// (where it would wait for the channel to close, up to the broker's
/// `consumer_timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_an_event_sent_while_the_prefetch_is_restored_is_handed_out() {
    const EVENTS: u64 = 40;
    let fixture = RabbitFixture::new().await;
    let (rabbit, bus) = bus(&fixture, &unique("unparseable-restore"), QueueType::Quorum).await;
    let (topic, group) = (unique("unparseable-restore"), unique("g"));
    bus.provision(&topic, &group).await.unwrap();
    raw::publish(&fixture.broker.url, &[poison(&topic, Spoiled::HeaderName)], LIMIT)
        .await
        .unwrap();
    for s in 0..EVENTS {
        bus.publish(&topic, Ping::new(s)).await.unwrap();
    }
    // A small prefetch: the full prefetch comes back after 2 deliveries.
    let mut sub = bus
        .subscribe(&topic, &group, SubscribeOptions::default().max_in_flight(2))
        .await
        .unwrap();
    let mut seen = BTreeSet::new();
    within(WAIT, "every valid event, settled one at a time", async {
        while seen.len() < EVENTS as usize {
            let d = sub.next().await.expect("the stream goes on").expect("a delivery");
            let id = d.event().expect("a valid event").id.clone();
            seen.insert(id);
            d.ack().await.unwrap();
            // Work between settling and asking again: time for the broker
            // to send the next event to the prefetch-1 consumer.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let stats = rabbit.stats();
    eprintln!("quorum, prefetch restored under a sequential subscriber: {stats:?}");
    assert!(stats.unparseable_losses >= 1, "the poison was met: {stats:?}");
    drop(sub);
    within(Duration::from_secs(45), "the bus to shut down", bus.shutdown()).await;
}
