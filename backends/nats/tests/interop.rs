//! Interop with plain async-nats: busline's wire form is CloudEvents over
//! NATS headers that any client reads, and CloudEvents written by any client
//! reach typed busline handlers. Also: JetStream drops a duplicate publish.

mod common;

use std::time::Duration;

use async_nats::HeaderMap;
use busline_core::{DomainEvent, Router, SubscribeOptions};
use busline_nats::TopicNames;
use busline_testkit::events::Ping;
use busline_testkit::support::{recorder, unique, within, Collector, WAIT};
use busline_testkit::BusFixture;
use common::NatsFixture;
use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busline_event_shows_every_attribute_as_a_header() {
    let fixture = NatsFixture::new().await;
    let bus = fixture.connect().await;
    let topic = unique("interop.out");
    let names = TopicNames::of(&topic).unwrap();
    let plain = fixture.raw().await;
    let mut sub = plain.subscribe(names.wildcard()).await.unwrap();
    plain.flush().await.unwrap();

    let event = DomainEvent::new(Ping {
        seq: 1,
        note: "x".into(),
    })
    .with_key("order 1")
    .with_correlation_id("req-1")
    .with_causation_id("cause-1")
    .with_extension("tenant", "acme corp");
    let id = bus.publish_event(&topic, event.clone()).await.unwrap();

    let msg = within(WAIT, "the plain message", sub.next()).await.unwrap();
    assert_eq!(msg.subject.as_str(), names.subject("test.ping"));
    let h = msg.headers.expect("headers");
    // Looked up by name text: async-nats compares a parsed header name with
    // its own well-known names (like Nats-Msg-Id) by representation.
    let get = |name: &str| {
        h.iter()
            .find(|(k, _)| k.to_string() == name)
            .map(|(_, v)| v[0].as_str().to_owned())
            .unwrap_or_else(|| panic!("header {name} missing"))
    };
    assert_eq!(get("ce-specversion"), "1.0");
    assert_eq!(get("ce-id"), id);
    assert_eq!(get("ce-type"), "test.ping");
    assert_eq!(get("ce-source"), "busline-test");
    assert_eq!(get("ce-time"), busline_core::wire::format_time(&event.time));
    let has = |name: &str| h.iter().any(|(k, _)| k.to_string() == name);
    // Version 1 is what a reader assumes without `ce-dataversion`.
    assert!(!has("ce-dataversion"), "the default version is not written");
    assert_eq!(get("ce-correlationid"), "req-1");
    assert_eq!(get("ce-causationid"), "cause-1");
    assert_eq!(get("ce-partitionkey"), "order%201");
    assert_eq!(get("ce-tenant"), "acme%20corp");
    // Binary mode: the binding maps datacontenttype to
    // `ce-datacontenttype`, and `Content-Type` marks structured mode.
    assert!(!has("content-type"), "the content type travels once");
    assert_eq!(get("ce-datacontenttype"), "application/json");
    assert_eq!(get("Nats-Msg-Id"), id);
    let ping: Ping = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(ping.seq, 1);
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_from_a_plain_client_reach_a_typed_handler() {
    let fixture = NatsFixture::new().await;
    let bus = fixture.connect().await;
    let (topic, group) = (unique("interop.in"), unique("g"));
    let got = Collector::<DomainEvent<Ping>>::new();
    let router = Router::new(bus.clone(), &group)
        .on(&topic, recorder(&got))
        .start()
        .await
        .unwrap();

    let plain = fixture.raw().await;
    let js = async_nats::jetstream::new(plain.clone());
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("ce-specversion", "1.0"),
        ("ce-id", "plain-1"),
        ("ce-type", "test.ping"),
        ("ce-source", "/plain/client"),
        ("ce-time", "2026-01-02T03:04:05.123Z"),
        (
            "ce-traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("ce-tenant", "acme%20corp"),
        ("content-type", "application/json"),
    ] {
        headers.insert(name, value);
    }
    let subject = TopicNames::of(&topic).unwrap().subject("test.ping");
    js.publish_with_headers(subject, headers, r#"{"seq":42,"note":"hi"}"#.into())
        .await
        .unwrap()
        .await
        .unwrap();

    let e = got.wait_len(1, WAIT, "the plain client's event").await.remove(0);
    assert_eq!(e.id, "plain-1");
    assert_eq!(e.source, "/plain/client");
    assert_eq!(e.version, 1, "no dataversion means version 1");
    assert_eq!(e.correlation_id, "plain-1", "no correlation id starts a chain");
    assert_eq!(e.extensions["tenant"], "acme corp");
    assert_eq!(e.data.seq, 42);
    router.shutdown().await.unwrap();
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_published_twice_is_delivered_once() {
    let fixture = NatsFixture::new().await;
    let bus = fixture.connect().await;
    let (topic, group) = (unique("dedup"), unique("g"));
    let mut sub = bus
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .unwrap();
    let raw = bus.encode(&topic, DomainEvent::new(Ping::new(1))).unwrap();
    bus.publish_raw(&topic, raw.clone()).await.unwrap();
    bus.publish_raw(&topic, raw.clone()).await.unwrap();
    bus.publish_batch(&topic, vec![DomainEvent::new(Ping::new(2))])
        .await
        .unwrap();

    let first = within(WAIT, "the event", sub.next()).await.unwrap().unwrap();
    assert_eq!(first.event().unwrap().id, raw.id);
    first.ack().await.unwrap();
    // Stream order: a stored duplicate would come before the marker.
    let second = within(WAIT, "the marker", sub.next()).await.unwrap().unwrap();
    let marker: Ping = serde_json::from_slice(&second.event().unwrap().data.bytes).unwrap();
    assert_eq!(marker.seq, 2, "the duplicate publish was delivered");
    second.ack().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), sub.next())
            .await
            .is_err(),
        "nothing else is delivered"
    );
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_quoted_values_and_ce_datacontenttype_from_a_plain_client() {
    let fixture = NatsFixture::new().await;
    let bus = fixture.connect().await;
    let (topic, group) = (unique("interop.quoted"), unique("g"));
    let got = Collector::<DomainEvent<Ping>>::new();
    let router = Router::new(bus.clone(), &group)
        .on(&topic, recorder(&got))
        .start()
        .await
        .unwrap();
    let mut dlq = bus
        .subscribe(
            &busline_core::dead_letter_topic(&topic, &group),
            &group,
            SubscribeOptions::default(),
        )
        .await
        .unwrap();

    // An older producer: values in double quotes rather than
    // percent-encoded, and the content type only as the binding's
    // `ce-datacontenttype` (no `content-type` header).
    let plain = fixture.raw().await;
    let js = async_nats::jetstream::new(plain.clone());
    let subject = TopicNames::of(&topic).unwrap().subject("test.ping");
    let publish = |id: &'static str, tenant: &'static str| {
        let js = js.clone();
        let subject = subject.clone();
        async move {
            let mut headers = HeaderMap::new();
            for (name, value) in [
                ("ce-specversion", "1.0"),
                ("ce-id", id),
                ("ce-type", "test.ping"),
                ("ce-source", "/old/producer"),
                ("ce-time", "2026-01-02T03:04:05Z"),
                ("ce-tenant", tenant),
                ("ce-note", r#""say \"hi\", 100%25 sure""#),
                ("CE-DataContentType", r#""application/json""#),
            ] {
                headers.insert(name, value);
            }
            js.publish_with_headers(subject, headers, r#"{"seq":7,"note":""}"#.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    publish("quoted-1", r#""acme corp""#).await;
    // An unterminated quote is a malformed attribute: dead-lettered.
    publish("quoted-2", r#""acme"#).await;

    let e = got.wait_len(1, WAIT, "the quoted event").await.remove(0);
    assert_eq!(e.id, "quoted-1");
    assert_eq!(e.extensions["tenant"], "acme corp");
    assert_eq!(e.extensions["note"], r#"say "hi", 100% sure"#);
    assert_eq!(e.data.seq, 7);
    let letter = within(WAIT, "the letter of the bad quote", dlq.next())
        .await
        .unwrap()
        .unwrap();
    // The letter keeps the original headers, so it reads with the same error.
    let err = letter.event().unwrap_err().to_string();
    assert!(err.contains("tenant") && err.contains("closing quote"), "{err}");
    letter.ack().await.unwrap();
    router.shutdown().await.unwrap();
    bus.shutdown().await;
}
