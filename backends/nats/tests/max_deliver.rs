//! The consumer's `max_deliver` against the router's retry policy: derived
//! above it, an explicit one at or below it refused, and an event whose
//! retries outlast the server's deliveries still dead-lettered.

mod common;

use std::time::Duration;

use busline_core::dead_letter::attr as dl;
use busline_core::{Bus, BusConfig, ConfigError, Context, DomainEvent, HandlerError, RetryPolicy, Router};
use busline_nats::{consumer_name, NatsBus, NatsConfig, TopicNames, MAX_DELIVER_MARGIN};
use busline_testkit::events::Ping;
use busline_testkit::support::{dead_letters, eventually, unique, within, WAIT};
use busline_testkit::test_settings;
use common::{test_config, NatsFixture};
use futures::StreamExt;

fn retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy::default()
        .with_max_attempts(max_attempts)
        .with_backoff(Duration::from_millis(10), Duration::from_millis(50))
}

#[tokio::test]
async fn an_explicit_max_deliver_at_or_below_max_attempts_is_refused() {
    let fixture = NatsFixture::new().await;
    let mut config = BusConfig::from_url(&fixture.url);
    config.retry = retry(5);
    for max_deliver in [3, 5] {
        let nats = NatsConfig {
            max_deliver,
            ..test_config()
        };
        match NatsBus::connect(&config, nats).await {
            Err(ConfigError::Invalid(why)) => assert!(why.contains("max_attempts = 5"), "{why}"),
            other => panic!("max_deliver {max_deliver} with max_attempts 5: {other:?}"),
        }
    }
    let nats = NatsConfig {
        max_deliver: 6,
        ..test_config()
    };
    let bus = NatsBus::connect(&config, nats).await.expect("6 > 5 is fine");
    busline_core::EventBus::shutdown(&bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_made_under_another_max_deliver_is_updated() {
    let base = NatsFixture::new().await;
    let (topic, group) = (unique("maxdeliver.update"), unique("g"));
    let unlimited = NatsFixture::with(
        base.url.clone(),
        NatsConfig {
            max_deliver: -1,
            ..test_config()
        },
        None,
    );
    let old = unlimited.connect_nats().await;
    busline_core::EventBus::provision(&old, &topic, &group)
        .await
        .unwrap();
    let js = async_nats::jetstream::new(base.raw().await);
    let stream = TopicNames::of(&topic).unwrap().stream;
    let durable = consumer_name(&group).unwrap();
    let max_deliver = |js: async_nats::jetstream::Context| {
        let (stream, durable) = (stream.clone(), durable.clone());
        async move {
            let mut c: async_nats::jetstream::consumer::PullConsumer = js
                .get_stream(&stream)
                .await
                .unwrap()
                .get_consumer(&durable)
                .await
                .unwrap();
            c.info().await.unwrap().config.max_deliver
        }
    };
    assert_eq!(max_deliver(js.clone()).await, -1);

    let mut config = BusConfig::from_url(&base.url);
    config.retry = retry(3);
    let new = base.connect_nats_with(config).await;
    busline_core::EventBus::provision(&new, &topic, &group)
        .await
        .unwrap();
    assert_eq!(max_deliver(js).await, 3 + MAX_DELIVER_MARGIN);
    busline_core::EventBus::shutdown(&old).await;
    busline_core::EventBus::shutdown(&new).await;
    drop(unlimited);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_that_outlast_the_servers_deliveries_still_end_in_the_dlq() {
    let fixture = NatsFixture::new().await;
    // The connection derives max_deliver from a policy of 2 attempts (4
    // deliveries); the router then retries up to 20 times.
    let mut config = BusConfig::from_url(&fixture.url);
    config.retry = retry(2);
    let nats = fixture.connect_nats_with(config).await;
    let max_deliver = nats.config().max_deliver;
    assert_eq!(max_deliver, 2 + MAX_DELIVER_MARGIN);
    let bus = Bus::new(nats.clone(), test_settings().with_retry(retry(20)));
    let (topic, group) = (unique("maxdeliver.outlast"), unique("g"));
    let mut dlq = dead_letters(&bus, &topic, &group).await;
    let router = Router::new(bus.clone(), &group)
        .on(&topic, |_ctx: Context, _e: DomainEvent<Ping>| async move {
            Err::<(), _>(HandlerError::retryable("the gateway is down"))
        })
        .start()
        .await
        .unwrap();
    let id = bus.publish(&topic, Ping::new(1)).await.unwrap();

    let d = within(WAIT, "the letter from the max-deliveries advisory", dlq.next())
        .await
        .unwrap()
        .unwrap();
    let letter = d.event().expect("a readable letter").clone();
    d.ack().await.unwrap();
    assert_eq!(letter.id, id);
    assert_eq!(letter.extensions[dl::REASON], "max_attempts_exceeded");
    assert_eq!(letter.extensions[dl::ATTEMPTS], max_deliver.to_string());
    assert!(
        letter.extensions[dl::ERROR].contains("max_deliver"),
        "{:?}",
        letter.extensions
    );
    // Counted once the letter's publish is acknowledged, which may be just
    // after the DLQ reader has it.
    eventually(WAIT, "the watcher counts the letter", || {
        nats.stats().max_delivered_moved_aside == 1
    })
    .await;
    assert_eq!(nats.stats().unparseable_moved_aside, 0);
    router.shutdown().await.unwrap();
    bus.shutdown().await;
}
