//! Interop with plain rdkafka: busline's wire form is CloudEvents over Kafka
//! record headers (`ce_` attributes, `content-type`, key = record key) that
//! any client reads, and CloudEvents records written by any client reach
//! typed busline handlers. Each test runs on the real broker (tansu in CI)
//! and on the mock cluster.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use busline_core::{DomainEvent, Router};
use busline_testkit::events::Ping;
use busline_testkit::support::{recorder, unique, within, Collector, WAIT};
use busline_testkit::BusFixture;
use common::KafkaFixture;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

async fn busline_event_shows_every_attribute_as_a_header(fixture: KafkaFixture) {
    let bus = fixture.connect().await;
    let topic = unique("interop-out");
    let event = DomainEvent::new(Ping {
        seq: 1,
        note: "x".into(),
    })
    .with_key("order 1")
    .with_correlation_id("req-1")
    .with_causation_id("cause-1")
    .with_extension("tenant", "acme corp");
    let id = bus.publish_event(&topic, event.clone()).await.unwrap();

    // A plain consumer without a group reads every partition from the start.
    let consumer: BaseConsumer = fixture
        .plain_config()
        .set("group.id", unique("plain"))
        .create()
        .unwrap();
    let config = busline_kafka::KafkaConfig::default();
    let mut tpl = TopicPartitionList::new();
    for p in 0..config.partitions {
        tpl.add_partition_offset(&topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let (key, headers, payload) = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + WAIT;
        while std::time::Instant::now() < deadline {
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                let m = m.expect("a record");
                let headers: BTreeMap<String, String> = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8(h.value.unwrap().to_vec()).unwrap(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                return (
                    m.key().map(|k| String::from_utf8(k.to_vec()).unwrap()),
                    headers,
                    m.payload().unwrap().to_vec(),
                );
            }
        }
        panic!("no record within {WAIT:?}");
    })
    .await
    .unwrap();
    assert_eq!(key.as_deref(), Some("order 1"), "the key is the record key");
    let want = [
        ("ce_specversion", "1.0".to_owned()),
        ("ce_id", id.to_string()),
        ("ce_type", "test.ping".into()),
        ("ce_source", "busline-test".into()),
        ("ce_time", busline_core::wire::format_time(&event.time)),
        ("ce_dataversion", "1".into()),
        ("ce_correlationid", "req-1".into()),
        ("ce_causationid", "cause-1".into()),
        ("ce_tenant", "acme corp".into()),
        ("content-type", "application/json".into()),
    ];
    for (name, value) in want {
        assert_eq!(headers.get(name), Some(&value), "header {name} in {headers:?}");
    }
    assert_eq!(
        headers.get("ce_partitionkey").map(String::as_str),
        Some("order 1"),
        "the CloudEvents Kafka binding's key attribute too: {headers:?}"
    );
    let ping: Ping = serde_json::from_slice(&payload).unwrap();
    assert_eq!(ping.seq, 1);
    bus.shutdown().await;
}

async fn cloudevents_from_a_plain_client_reach_a_typed_handler(fixture: KafkaFixture) {
    let bus = fixture.connect().await;
    let (topic, group) = (unique("interop-in"), unique("g"));
    let got = Collector::<DomainEvent<Ping>>::new();
    let router = Router::new(bus.clone(), &group)
        .on(&topic, recorder(&got))
        .start()
        .await
        .unwrap();

    let producer: FutureProducer = fixture.plain_config().create().unwrap();
    let mut headers = OwnedHeaders::new();
    for (name, value) in [
        ("ce_specversion", "1.0"),
        ("ce_id", "plain-1"),
        ("ce_type", "test.ping"),
        ("ce_source", "/plain/client"),
        ("ce_time", "2026-01-02T03:04:05.123Z"),
        (
            "ce_traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("ce_tenant", "acme corp"),
        ("ce_partitionkey", "not the record key"),
        ("content-type", "application/json"),
    ] {
        headers = headers.insert(Header {
            key: name,
            value: Some(value),
        });
    }
    let record = FutureRecord::to(&topic)
        .key("customer-9")
        .payload(r#"{"seq":42,"note":"hi"}"#)
        .headers(headers);
    producer.send(record, WAIT).await.map_err(|(e, _)| e).unwrap();

    let e = within(
        WAIT,
        "the plain client's event",
        got.wait_len(1, WAIT, "the event"),
    )
    .await
    .remove(0);
    assert_eq!(e.id, "plain-1");
    assert_eq!(e.source, "/plain/client");
    assert_eq!(
        e.key.as_deref(),
        Some("customer-9"),
        "the record key is the key, whatever ce_partitionkey says"
    );
    assert_eq!(e.version, 1, "no dataversion means version 1");
    assert_eq!(e.correlation_id, "plain-1", "no correlation id starts a chain");
    assert_eq!(e.extensions["tenant"], "acme corp");
    assert_eq!(
        e.extensions["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(e.data.seq, 42);
    router.shutdown().await.unwrap();
    bus.shutdown().await;
}

mod broker {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn busline_event_shows_every_attribute_as_a_header() {
        super::busline_event_shows_every_attribute_as_a_header(KafkaFixture::new().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cloudevents_from_a_plain_client_reach_a_typed_handler() {
        super::cloudevents_from_a_plain_client_reach_a_typed_handler(KafkaFixture::new().await).await;
    }
}

mod mock {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn busline_event_shows_every_attribute_as_a_header() {
        super::busline_event_shows_every_attribute_as_a_header(KafkaFixture::mock(1)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cloudevents_from_a_plain_client_reach_a_typed_handler() {
        super::cloudevents_from_a_plain_client_reach_a_typed_handler(KafkaFixture::mock(1)).await;
    }
}
