//! The `[rabbitmq]` tuning and `connect` on a real broker: mandatory
//! publishing, quorum queues, configuration errors.

mod common;

use std::time::{Duration, Instant};

use busline_core::{Bus, BusConfig, ConfigError, PublishErrorKind, SubscribeOptions};
use busline_rabbitmq::{QueueType, RabbitConfig};
use busline_testkit::events::Ping;
use busline_testkit::support::{within, WAIT};
use busline_testkit::test_settings;
use common::{unique, RabbitFixture};
use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandatory_publishes_to_a_topic_without_groups_are_unroutable() {
    let fixture = RabbitFixture::new().await;
    let config = RabbitConfig {
        mandatory: true,
        ..RabbitConfig::default()
    };
    let bus = Bus::new(fixture.rabbit("mandatory", config).await, test_settings());
    let topic = unique("nobody");
    let err = bus.publish(&topic, Ping::new(1)).await.unwrap_err();
    assert_eq!(err.kind(), PublishErrorKind::Unroutable, "{err}");
    // Once a group exists, the same publish goes through.
    bus.provision(&topic, &unique("g")).await.unwrap();
    bus.publish(&topic, Ping::new(2)).await.unwrap();
    bus.shutdown().await;
    let after = bus.publish(&topic, Ping::new(3)).await.unwrap_err();
    assert_eq!(after.kind(), PublishErrorKind::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_deliver_and_retry_with_delay() {
    let fixture = RabbitFixture::new().await;
    let config = RabbitConfig {
        queue_type: QueueType::Quorum,
        ..RabbitConfig::default()
    };
    let bus = Bus::new(fixture.rabbit("quorum", config).await, test_settings());
    let (topic, group) = (unique("quorum"), unique("g"));
    let mut sub = bus
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .unwrap();
    let id = bus.publish(&topic, Ping::new(1)).await.unwrap();
    let first = within(WAIT, "the first delivery", sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.event().unwrap().id, id);
    let delay = Duration::from_millis(200);
    let nacked = Instant::now();
    first.nack(delay).await.unwrap();
    let again = within(WAIT, "the retry", sub.next()).await.unwrap().unwrap();
    assert!(nacked.elapsed() >= delay);
    assert_eq!(
        (again.event().unwrap().id.as_str(), again.attempt()),
        (id.as_str(), 2)
    );
    again.ack().await.unwrap();
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_reports_configuration_errors_without_secrets() {
    let wrong_scheme = BusConfig::from_url("nats://127.0.0.1:4222");
    assert!(matches!(
        busline_rabbitmq::connect(&wrong_scheme).await,
        Err(ConfigError::InvalidUrl { .. })
    ));
    let mut bad_section = BusConfig::from_url("amqp://guest:guest@127.0.0.1:5672/%2f");
    bad_section.rabbitmq = BusConfig::from_toml_str("[rabbitmq]\nqueue_type = \"stream\"")
        .unwrap()
        .rabbitmq;
    assert!(matches!(
        busline_rabbitmq::connect(&bad_section).await,
        Err(ConfigError::Invalid(_))
    ));
    // Nothing listens on port 1.
    let mut unreachable = BusConfig::from_url("amqp://guest:hunter2@127.0.0.1:1/%2f");
    unreachable.rabbitmq = BusConfig::from_toml_str("[rabbitmq]\nconnect_timeout = \"2s\"")
        .unwrap()
        .rabbitmq;
    let err = busline_rabbitmq::connect(&unreachable).await.unwrap_err();
    assert!(matches!(err, ConfigError::Connect { .. }), "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");

    let fixture = RabbitFixture::new().await;
    let bus = busline_rabbitmq::connect(&BusConfig::from_url(fixture.broker.url.as_str()))
        .await
        .unwrap();
    assert!(bus.capabilities().persistent);
    assert!(!bus.capabilities().order_per_key);
    bus.shutdown().await;
}
