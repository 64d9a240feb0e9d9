//! Every call to the broker has a deadline. A TCP proxy between busline and
//! the real broker is frozen (no byte forwarded, nothing closed), as a hung
//! broker or a stalled network would be: publishes fail with `Timeout`
//! within their bound, shutdown returns within its deadline, and after the
//! thaw (or a cut) publishing recovers.

mod common;

use std::time::{Duration, Instant};

use busline_core::{Bus, Context, DomainEvent, HandlerError, PublishErrorKind, Router, SubscribeOptions};
use busline_rabbitmq::RabbitConfig;
use busline_testkit::events::Ping;
use busline_testkit::proxy::{upstream_of, Proxy};
use busline_testkit::support::{within, Collector, WAIT};
use busline_testkit::test_settings;
use common::{unique, RabbitFixture};
use futures::StreamExt;

const OPERATION: Duration = Duration::from_secs(1);
const CONFIRM: Duration = Duration::from_secs(2);
const SHUTDOWN: Duration = Duration::from_secs(2);
/// Scheduling slack on a loaded 2-core machine; far below "never".
const SLACK: Duration = Duration::from_secs(5);

fn config() -> RabbitConfig {
    RabbitConfig {
        operation_timeout: OPERATION,
        confirm_timeout: CONFIRM,
        shutdown_timeout: SHUTDOWN,
        publisher_channels: 4,
        ..RabbitConfig::default()
    }
}

async fn proxied(fixture: &RabbitFixture, proxy: &Proxy, name: &str) -> Bus {
    let bus = busline_rabbitmq::RabbitBus::connect(&proxy.url_for(&fixture.broker.url), name, config())
        .await
        .expect("busline connects through the proxy");
    Bus::new(bus, test_settings())
}

/// Publishes until one is confirmed (the link reconnects with backoff).
async fn publish_until_confirmed(bus: &Bus, topic: &str, seq: u64) {
    within(WAIT, "a confirmed publish after the fault", async {
        loop {
            if bus.publish(topic, Ping::new(seq)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
}

/// 64 concurrent publishes on the frozen link: each fails with `Timeout`
/// within `2 × operation + confirm`.
async fn frozen_publishes_time_out(bus: &Bus, topics: &[String]) {
    let bound = OPERATION * 2 + CONFIRM + SLACK;
    let calls = (0..64u64).map(|i| {
        let topic = &topics[i as usize % topics.len()];
        async move {
            let started = Instant::now();
            let result = bus.publish(topic, Ping::new(i)).await;
            (started.elapsed(), result)
        }
    });
    let results = within(
        bound + SLACK,
        "64 publishes on a frozen connection to return",
        futures::future::join_all(calls),
    )
    .await;
    for (took, result) in results {
        let err = result.expect_err("nothing can be confirmed through a frozen proxy");
        assert_eq!(err.kind(), PublishErrorKind::Timeout, "{err}");
        assert!(took <= bound, "a publish took {took:?}, bound {bound:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_on_a_frozen_connection_time_out_and_recover_after_the_thaw() {
    let fixture = RabbitFixture::new().await;
    let proxy = Proxy::start(upstream_of(&fixture.broker.url)).await;
    let bus = proxied(&fixture, &proxy, &unique("frozen-pub")).await;
    let direct = Bus::new(
        fixture
            .rabbit(&unique("frozen-sub"), RabbitConfig::default())
            .await,
        test_settings(),
    );
    let (topic, group) = (unique("frozen"), unique("g"));
    let mut sub = direct
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .unwrap();
    // One channel of the pool is open and the exchange is known; the other
    // channels and a new topic's declaration meet the freeze.
    bus.publish(&topic, Ping::new(0)).await.unwrap();
    proxy.freeze();
    frozen_publishes_time_out(&bus, &[topic.clone(), unique("frozen-new")]).await;

    proxy.thaw();
    publish_until_confirmed(&bus, &topic, 1000).await;
    let mut seen = Vec::new();
    while !seen.contains(&1000) {
        let d = within(WAIT, "the event published after the thaw", sub.next())
            .await
            .unwrap()
            .unwrap();
        let raw = d.event().unwrap();
        seen.push(
            direct
                .codecs()
                .decode::<Ping>(raw.content_type(), &raw.data.bytes)
                .unwrap()
                .seq,
        );
        d.ack().await.unwrap();
    }
    bus.shutdown().await;
    direct.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_recovers_when_a_frozen_connection_is_cut() {
    let fixture = RabbitFixture::new().await;
    let proxy = Proxy::start(upstream_of(&fixture.broker.url)).await;
    let bus = proxied(&fixture, &proxy, &unique("cut-pub")).await;
    let (topic, group) = (unique("cut"), unique("g"));
    bus.provision(&topic, &group).await.unwrap();
    bus.publish(&topic, Ping::new(0)).await.unwrap();
    proxy.freeze();
    frozen_publishes_time_out(&bus, std::slice::from_ref(&topic)).await;
    // The frozen connection is closed under the publisher; the proxy
    // forwards new connections.
    proxy.cut();
    proxy.thaw();
    publish_until_confirmed(&bus, &topic, 1).await;
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_within_its_deadline_while_the_connection_is_frozen() {
    let fixture = RabbitFixture::new().await;
    let proxy = Proxy::start(upstream_of(&fixture.broker.url)).await;
    let bus = proxied(&fixture, &proxy, &unique("frozen-stop")).await;
    let (topic, group) = (unique("frozen-stop"), unique("g"));
    let seen = Collector::<u64>::new();
    let sink = seen.clone();
    let router = Router::new(bus.clone(), &group)
        .with_shutdown_deadline(SHUTDOWN)
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
    for s in 0..4 {
        bus.publish(&topic, Ping::new(s)).await.unwrap();
    }
    seen.wait_len(4, WAIT, "events before the freeze").await;
    proxy.freeze();
    // Publishes in flight while shutdown begins.
    let pending: Vec<_> = (10..14)
        .map(|s| {
            let (bus, topic) = (bus.clone(), topic.clone());
            tokio::spawn(async move { bus.publish(&topic, Ping::new(s)).await })
        })
        .collect();

    let started = Instant::now();
    let bound = SHUTDOWN + OPERATION + SLACK;
    within(
        bound,
        "the router's shutdown on a frozen connection",
        router.shutdown(),
    )
    .await
    .ok();
    within(
        SHUTDOWN + SLACK,
        "the bus's shutdown on a frozen connection",
        bus.shutdown(),
    )
    .await;
    let took = started.elapsed();
    assert!(took <= bound + SHUTDOWN, "shutdown took {took:?}");
    for p in pending {
        let result = within(WAIT, "publishes in flight at shutdown", p).await.unwrap();
        assert!(result.is_err(), "nothing is confirmed through a frozen proxy");
    }
}
