//! A dead letter or retry copy the broker keeps refusing is not a hot loop
//! (issue 10, #9): an event whose dead letter is refused comes back after a
//! growing backoff, not at once; one whose retry copy is refused is held
//! while the copy is sent again after a backoff; nothing is lost once the
//! broker takes the copy again.
//!
//! The refusals are made on the real broker after the router declared its
//! queues: the DLQ exchange replaced by a fanout exchange with no queue
//! (the copy is returned, and declaring the topic exchange again is refused
//! for the type), and the retry queues replaced by queues of other
//! arguments that refuse every message (declaring them is refused).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use busline_core::{Bus, Context, DomainEvent, HandlerError, RetryPolicy, Router};
use busline_rabbitmq::RabbitConfig;
use busline_testkit::events::Ping;
use busline_testkit::support::{eventually, within, Collector, WAIT};
use busline_testkit::test_settings;
use common::{unique, RabbitFixture};
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Connection, ExchangeKind};

/// How long the deliveries of a refused copy are counted.
const WINDOW: Duration = Duration::from_secs(3);

async fn bus(fixture: &RabbitFixture, name: &str) -> Bus {
    Bus::new(
        fixture.rabbit(name, RabbitConfig::default()).await,
        test_settings(),
    )
}

/// Replaces the exchange `name` with a fanout exchange no queue is bound to.
async fn replace_with_fanout(conn: &Connection, name: &str) {
    let channel = conn.create_channel().await.unwrap();
    channel
        .exchange_delete(name.into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = channel.close(200, "done".into()).await;
}

async fn delete_exchange(conn: &Connection, name: &str) {
    let channel = conn.create_channel().await.unwrap();
    channel
        .exchange_delete(name.into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    let _ = channel.close(200, "done".into()).await;
}

async fn delete_queue(conn: &Connection, name: &str) {
    let channel = conn.create_channel().await.unwrap();
    let _ = channel
        .queue_delete(name.into(), QueueDeleteOptions::default())
        .await;
    let _ = channel.close(200, "done".into()).await;
}

/// Replaces queue `name` with one that refuses every message (length 0,
/// reject-publish) and whose arguments busline's declaration does not
/// match.
async fn replace_with_refusing_queue(conn: &Connection, name: &str) {
    delete_queue(conn, name).await;
    let channel = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
    channel
        .queue_declare(name.into(), QueueDeclareOptions::durable(), args)
        .await
        .unwrap();
    let _ = channel.close(200, "done".into()).await;
}

/// Deliveries within [`WINDOW`] of the first one.
async fn deliveries_in_window(seen: &Collector<Instant>) -> usize {
    let first = seen.wait_len(1, WAIT, "the first delivery").await[0];
    // An observation window, not a wait for a condition: what is counted
    // is how often the broker hands the event out meanwhile.
    tokio::time::sleep_until((first + WINDOW).into()).await;
    seen.snapshot().iter().filter(|t| **t <= first + WINDOW).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_dead_letter_comes_back_after_a_backoff() {
    let fixture = RabbitFixture::new().await;
    let bus = bus(&fixture, &unique("dlq-refused")).await;
    let (topic, group) = (unique("dlq-refused"), unique("g"));
    let seen = Collector::<Instant>::new();
    let sink = seen.clone();
    let router = Router::new(bus.clone(), &group)
        .on(&topic, move |_ctx: Context, _e: DomainEvent<Ping>| {
            sink.push(Instant::now());
            async { Err::<(), _>(HandlerError::permanent("refused")) }
        })
        .start()
        .await
        .unwrap();
    let raw = fixture.plain().await;
    let dlq = format!("{topic}.{group}.dlq");
    replace_with_fanout(&raw, &dlq).await;

    let id = bus.publish(&topic, Ping::new(1)).await.unwrap();
    let handled = deliveries_in_window(&seen).await;
    eprintln!("a refused dead letter: {handled} deliveries in {WINDOW:?}");
    assert!(
        handled <= 8,
        "the event came back {handled} times in {WINDOW:?} while its dead letter was refused: a hot loop"
    );

    // The DLQ usable again: the letter arrives, nothing lost.
    delete_exchange(&raw, &dlq).await;
    let dlq_queue = format!("{dlq}::{group}");
    let letter = within(WAIT, "the dead letter once the DLQ takes it", async {
        loop {
            let channel = raw.create_channel().await.unwrap();
            if let Ok(Some(m)) = channel
                .basic_get(dlq_queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await
            {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(
        letter
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str()),
        Some(id.as_str())
    );
    router.shutdown().await.unwrap();
    let _ = raw.close(200, "done".into()).await;
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_retry_copy_is_sent_again_after_a_backoff() {
    const BACKOFF: Duration = Duration::from_millis(500);
    let fixture = RabbitFixture::new().await;
    let bus = bus(&fixture, &unique("retry-refused")).await;
    let (topic, group) = (unique("retry-refused"), unique("g"));
    let seen = Collector::<Instant>::new();
    let restored = Arc::new(AtomicBool::new(false));
    let (sink, ok) = (seen.clone(), restored.clone());
    let router = Router::new(bus.clone(), &group)
        .with_retry(
            RetryPolicy::default()
                .with_max_attempts(1_000)
                .with_backoff(BACKOFF, BACKOFF)
                .with_jitter(0.0),
        )
        .on(&topic, move |_ctx: Context, _e: DomainEvent<Ping>| {
            sink.push(Instant::now());
            let ok = ok.load(Ordering::SeqCst);
            async move {
                if ok {
                    Ok(())
                } else {
                    Err(HandlerError::retryable("not yet"))
                }
            }
        })
        .start()
        .await
        .unwrap();
    let raw = fixture.plain().await;
    // Where a 500 ms retry waits: the 800 ms bucket.
    let bucket = format!("{topic}::{group}::retry.800ms");
    replace_with_refusing_queue(&raw, &bucket).await;

    bus.publish(&topic, Ping::new(1)).await.unwrap();
    let handled = deliveries_in_window(&seen).await;
    eprintln!("a refused retry copy: {handled} deliveries in {WINDOW:?}");
    assert!(
        handled <= 8,
        "the event came back {handled} times in {WINDOW:?} while its retry copy was refused: a hot loop"
    );

    delete_queue(&raw, &bucket).await;
    restored.store(true, Ordering::SeqCst);
    eventually(
        WAIT,
        "the event to be handled once the retry queue is back",
        || router.stats().handled == 1,
    )
    .await;
    router.shutdown().await.unwrap();
    let _ = raw.close(200, "done".into()).await;
    bus.shutdown().await;
}
