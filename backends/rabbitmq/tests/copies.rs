//! Retry and dead-letter copies are not lost when their queue is gone: an
//! operator deleting a group's retry queue or DLQ queue while a router runs
//! makes the broker return the copy, and busline redeclares the queues and
//! sends it again before it acks the original.

mod common;

use std::time::Duration;

use busline_core::{Bus, Context, DomainEvent, HandlerError, RetryPolicy, Router};
use busline_rabbitmq::RabbitConfig;
use busline_testkit::events::Ping;
use busline_testkit::support::{within, Collector, WAIT};
use busline_testkit::test_settings;
use common::{unique, RabbitFixture};
use lapin::options::{BasicGetOptions, QueueDeleteOptions};
use lapin::types::AMQPValue;
use lapin::Connection;

async fn bus(fixture: &RabbitFixture, name: &str) -> Bus {
    Bus::new(
        fixture.rabbit(name, RabbitConfig::default()).await,
        test_settings(),
    )
}

async fn delete_queue(conn: &Connection, queue: &str) {
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .unwrap_or_else(|e| panic!("deleting {queue}: {e}"));
    let _ = channel.close(200, "done".into()).await;
}

/// Waits until `queue` exists and holds a message, and takes it. A missing
/// queue closes the channel (404), so every look uses a new one.
async fn take_one(conn: &Connection, queue: &str) -> lapin::message::BasicGetMessage {
    within(WAIT, &format!("a message in {queue}"), async {
        loop {
            let channel = conn.create_channel().await.unwrap();
            if let Ok(Some(m)) = channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
            {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_kept_when_the_dlq_queue_was_deleted() {
    let fixture = RabbitFixture::new().await;
    let bus = bus(&fixture, &unique("copies-dlq")).await;
    let (topic, group) = (unique("copies-dlq"), unique("g"));
    let router = Router::new(bus.clone(), &group)
        .on(&topic, |_ctx: Context, _e: DomainEvent<Ping>| async move {
            Err::<(), _>(HandlerError::permanent("refused"))
        })
        .start()
        .await
        .unwrap();
    let dlq_queue = format!("{topic}.{group}.dlq::{group}");
    let raw = fixture.plain().await;
    // What an operator "purging" the DLQ by deleting it does.
    delete_queue(&raw, &dlq_queue).await;

    let id = bus.publish(&topic, Ping::new(1)).await.unwrap();
    let letter = take_one(&raw, &dlq_queue).await;
    assert_eq!(
        letter
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str()),
        Some(id.as_str())
    );
    let reason = letter
        .delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("cloudEvents_deadletterreason").cloned());
    assert!(
        matches!(&reason, Some(AMQPValue::LongString(s)) if s.as_bytes() == b"permanent_error"),
        "{reason:?}"
    );
    let stats = router.shutdown().await.unwrap();
    assert_eq!(stats.dead_lettered, 1);
    let _ = raw.close(200, "done".into()).await;
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_kept_when_the_retry_queue_was_deleted() {
    let fixture = RabbitFixture::new().await;
    let bus = bus(&fixture, &unique("copies-retry")).await;
    let (topic, group) = (unique("copies-retry"), unique("g"));
    let attempts = Collector::<u32>::new();
    let sink = attempts.clone();
    let router = Router::new(bus.clone(), &group)
        .with_retry(
            RetryPolicy::default()
                .with_max_attempts(3)
                .with_backoff(Duration::from_millis(50), Duration::from_millis(50)),
        )
        .on(&topic, move |ctx: Context, _e: DomainEvent<Ping>| {
            let sink = sink.clone();
            async move {
                sink.push(ctx.attempt());
                if ctx.attempt() == 1 {
                    Err(HandlerError::retryable("not yet"))
                } else {
                    Ok(())
                }
            }
        })
        .start()
        .await
        .unwrap();
    // The first retry declares the 100 ms bucket a 50 ms retry waits in;
    // deleted then, the second retry's copy is returned.
    bus.publish(&topic, Ping::new(1)).await.unwrap();
    attempts
        .wait_until(WAIT, "the first retried attempt", |a| a.contains(&2))
        .await;
    let raw = fixture.plain().await;
    delete_queue(&raw, &format!("{topic}::{group}::retry.100ms")).await;

    bus.publish(&topic, Ping::new(2)).await.unwrap();
    attempts
        .wait_until(WAIT, "the second retried attempt", |a| {
            a.iter().filter(|n| **n == 2).count() == 2
        })
        .await;
    let stats = router.shutdown().await.unwrap();
    assert_eq!((stats.retried, stats.handled), (2, 2), "{stats:?}");
    let _ = raw.close(200, "done".into()).await;
    bus.shutdown().await;
}
