//! Foreign producers writing what busline never would, with a raw client
//! below busline: the poison is dead-lettered or moved aside, the valid
//! events around it are all handled, and the consumer goes on.

mod common;

use async_nats::HeaderMap;
use busline_core::{dead_letter_topic, DomainEvent, Router, SubscribeOptions};
use busline_nats::TopicNames;
use busline_testkit::events::Ping;
use busline_testkit::support::{recorder, unique, within, Collector, WAIT};
use busline_testkit::BusFixture;
use common::NatsFixture;
use futures::StreamExt;

/// A header name with a multi-byte character across byte 5, which
/// async-nats writes and reads back as it is.
const NON_ASCII_NAME: &str = "natsš-x";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_ascii_header_name_is_dead_lettered_and_the_consumer_goes_on() {
    let fixture = NatsFixture::new().await;
    let bus = fixture.connect().await;
    let (topic, group) = (unique("hostile.name"), unique("g"));
    let got = Collector::<DomainEvent<Ping>>::new();
    let router = Router::new(bus.clone(), &group)
        .on::<Ping, _>(&topic, recorder(&got))
        .start()
        .await
        .unwrap();
    let mut dlq = bus
        .subscribe(
            &dead_letter_topic(&topic, &group),
            &group,
            SubscribeOptions::default(),
        )
        .await
        .unwrap();

    // No ce-id: the router dead-letters it as a malformed envelope, and
    // writing the letter copies the odd name.
    let plain = fixture.raw().await;
    let js = async_nats::jetstream::new(plain.clone());
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("ce-specversion", "1.0"),
        ("ce-type", "test.ping"),
        ("ce-source", "/foreign"),
        (NON_ASCII_NAME, "1"),
        ("content-type", "application/json"),
    ] {
        headers.insert(name, value);
    }
    let subject = TopicNames::of(&topic).unwrap().subject("test.ping");
    js.publish_with_headers(subject, headers, r#"{"seq":1,"note":""}"#.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let id = bus.publish(&topic, Ping::new(2)).await.unwrap();

    // Without an id the letter is not an envelope to busline, but it is
    // in the DLQ with the foreign header and the letter's attributes.
    let d = within(WAIT, "the dead letter", dlq.next())
        .await
        .unwrap()
        .unwrap();
    let err = d.event().expect_err("the letter has no id").to_string();
    assert!(err.contains("`id` is missing"), "{err}");
    d.ack().await.unwrap();
    let dlq_stream = TopicNames::of(&dead_letter_topic(&topic, &group)).unwrap().stream;
    let stored = js
        .get_stream(&dlq_stream)
        .await
        .unwrap()
        .get_raw_message(1)
        .await
        .expect("the letter, read by a plain client");
    let header = |name: &str| stored.headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(header(NON_ASCII_NAME).as_deref(), Some("1"));
    assert_eq!(
        header("ce-deadletterreason").as_deref(),
        Some("malformed_envelope")
    );
    assert_eq!(&stored.payload[..], br#"{"seq":1,"note":""}"#);

    let handled = got.wait_len(1, WAIT, "the valid event after the poison").await;
    assert_eq!(handled[0].id, id);
    // The consumer is still alive: a later event is handled too.
    bus.publish(&topic, Ping::new(3)).await.unwrap();
    got.wait_len(2, WAIT, "an event published after the letter").await;
    router.shutdown().await.unwrap();
    bus.shutdown().await;
}
