//! Foreign producers writing what busline never would, with a raw client
//! below busline: the poison is dead-lettered or moved aside, the valid
//! events around it are all handled, and the consumer goes on.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::HeaderMap;
use busline_core::dead_letter::attr as dl;
use busline_core::{dead_letter_topic, Bus, BusConfig, DomainEvent, RetryPolicy, Router};
use busline_nats::{NatsConfig, TopicNames, MAX_DELIVER_MARGIN};
use busline_testkit::events::Ping;
use busline_testkit::support::{dead_letters, eventually, recorder, unique, within, Collector, WAIT};
use busline_testkit::{test_settings, BusFixture};
use common::{raw, test_config, NatsFixture};
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
        .on(&topic, recorder(&got))
        .start()
        .await
        .unwrap();
    let mut dlq = dead_letters(&bus, &topic, &group).await;

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

/// The envelope headers of a foreign event with id `id`, plus `extra`.
fn foreign_headers(id: &str, extra: (&[u8], &[u8])) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = [
        ("ce-specversion", "1.0"),
        ("ce-id", id),
        ("ce-type", "test.ping"),
        ("ce-source", "/raw"),
        ("ce-time", "2026-01-02T03:04:05Z"),
        ("content-type", "application/json"),
    ]
    .iter()
    .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
    .collect();
    pairs.push((extra.0.to_vec(), extra.1.to_vec()));
    pairs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_bytes_that_are_not_utf8_are_moved_aside_and_the_events_around_them_handled() {
    // Short ack_wait and few attempts: the server gives up on the poison
    // after max_deliver = 2 + margin deliveries, one ack_wait apart.
    let ack_wait = Duration::from_secs(2);
    let base = NatsFixture::new().await;
    let fixture = NatsFixture::with(
        base.url.clone(),
        NatsConfig {
            ack_wait,
            ..test_config()
        },
        None,
    );
    let retry = RetryPolicy::default()
        .with_max_attempts(2)
        .with_backoff(Duration::from_millis(20), Duration::from_millis(200));
    let mut config = BusConfig::from_url(&fixture.url);
    config.retry = retry.clone();
    let nats = fixture.connect_nats_with(config).await;
    let max_deliver = nats.config().max_deliver;
    assert_eq!(
        max_deliver,
        2 + MAX_DELIVER_MARGIN,
        "derived from the retry policy"
    );
    let bus = Bus::new(nats.clone(), test_settings().with_retry(retry));
    let (topic, group) = (unique("hostile.bytes"), unique("g"));
    // Everything is stored before the group starts pulling, so the poisons
    // share one pull batch with valid events on both sides.
    bus.provision(&topic, &group).await.unwrap();
    for seq in 0..20 {
        bus.publish(&topic, Ping::new(seq)).await.unwrap();
    }
    let subject = TopicNames::of(&topic).unwrap().subject("test.ping");
    let body = br#"{"seq":1000,"note":"poison"}"#;
    let poisons = [
        foreign_headers("poison-value", (b"ce-tenant", b"\xff\xfe")),
        foreign_headers("poison-name", (b"x-\xff\xfe", b"1")),
    ];
    for pairs in &poisons {
        raw::publish(&fixture.url, &subject, &raw::header_block(pairs), body)
            .await
            .expect("the server stores the raw message");
    }
    for seq in 20..40 {
        bus.publish(&topic, Ping::new(seq)).await.unwrap();
    }

    // Subscribed first: a JetStream API request in flight when the poison
    // drops the connection gets no reply.
    let mut dlq = dead_letters(&bus, &topic, &group).await;
    let got = Collector::<DomainEvent<Ping>>::new();
    let router = Router::new(bus.clone(), &group)
        .on(&topic, recorder(&got))
        .start()
        .await
        .unwrap();

    got.wait_until(WAIT, "all 40 valid events", |events| {
        events.iter().map(|e| e.data.seq).collect::<BTreeSet<_>>().len() == 40
    })
    .await;
    // The letters are read by busline, that is by async-nats: readable.
    let mut letters = Vec::new();
    for _ in 0..poisons.len() {
        let d = within(WAIT, "a letter of a poison", dlq.next())
            .await
            .unwrap()
            .unwrap();
        letters.push(d.event().expect("the letter reads as an envelope").clone());
        d.ack().await.unwrap();
    }
    letters.sort_by(|a, b| a.id.cmp(&b.id));
    let (name, value) = (&letters[0], &letters[1]);
    assert_eq!(
        (name.id.as_str(), value.id.as_str()),
        ("poison-name", "poison-value")
    );
    for letter in &letters {
        assert_eq!(letter.extensions[dl::REASON], "unparseable_message");
        assert_eq!(letter.extensions[dl::ATTEMPTS], max_deliver.to_string());
        assert_eq!(letter.extensions[dl::TOPIC], topic);
        assert_eq!(&letter.data.bytes[..], body, "the body is kept byte for byte");
        assert!(!letter.extensions.contains_key("tenant"));
    }
    let error = &value.extensions[dl::ERROR];
    assert!(
        error.contains("`ce%2Dtenant: %FF%FE` (value not UTF-8)"),
        "{error}"
    );
    let error = &name.extensions[dl::ERROR];
    assert!(error.contains("`x%2D%FF%FE: 1` (name unreadable)"), "{error}");

    // The consumer goes on, and the poisons cost a bounded number of
    // reconnects: at most one per delivery the server made of them.
    bus.publish(&topic, Ping::new(40)).await.unwrap();
    got.wait_until(WAIT, "an event published after the letters", |events| {
        events.iter().any(|e| e.data.seq == 40)
    })
    .await;
    // Counted once each letter's publish is acknowledged, which may be just
    // after the DLQ reader has it.
    eventually(WAIT, "the watcher counts both letters", || {
        nats.stats().unparseable_moved_aside == 2
    })
    .await;
    let stats = nats.stats();
    eprintln!("stats after two poisons: {stats:?}");
    assert_eq!(
        stats.max_delivered_moved_aside, 0,
        "no valid event ran out of deliveries"
    );
    let bound = poisons.len() as u64 * max_deliver as u64;
    assert!(
        (1..=bound).contains(&stats.reconnects),
        "{} reconnects for {} poisons of {max_deliver} deliveries",
        stats.reconnects,
        poisons.len()
    );
    router.shutdown().await.unwrap();
    bus.shutdown().await;
}
