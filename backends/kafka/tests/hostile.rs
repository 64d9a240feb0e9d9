//! Hostile wire input written below busline (librdkafka's C API, see
//! `common/raw.rs`): header names that are not UTF-8. Runs on the real
//! broker (tansu in CI) and on the mock cluster.

mod common;

use std::time::Duration;

use busline_core::dead_letter::attr as dl;
use busline_core::wire::{encode_headers, HeaderDialect};
use busline_core::{dead_letter_topic, Bus, DomainEvent, Router};
use busline_testkit::events::Ping;
use busline_testkit::support::{recorder, unique, within, Collector, WAIT};
use busline_testkit::{BusFixture, WireInput};
use common::raw::{self, ByteHeaders};
use common::KafkaFixture;

/// Router and bus shutdown deadline of these tests: the router's own
/// deadline plus the member's drain, with room for a loaded machine.
const SHUTDOWN: Duration = Duration::from_secs(30);

/// `ping` in the Kafka wire form, with one extra header.
fn wire(bus: &Bus, topic: &str, ping: Ping, key: &str, extra: (&[u8], &[u8])) -> WireInput {
    let event = bus.encode(topic, DomainEvent::new(ping).with_key(key)).unwrap();
    let mut headers: Vec<(Vec<u8>, Vec<u8>)> = encode_headers(&event, &HeaderDialect::KAFKA)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k.into_bytes(), v.into_bytes()))
        .collect();
    headers.push((extra.0.to_vec(), extra.1.to_vec()));
    WireInput {
        event_type: event.event_type.to_string(),
        headers,
        content_type: None,
        key: Some(key.to_owned()),
        body: event.data.bytes.clone(),
    }
}

fn header<'h>(headers: &'h ByteHeaders, name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|(k, _)| k == name.as_bytes())
        .and_then(|(_, v)| v.as_deref())
}

async fn header_names_that_are_not_utf8(fixture: KafkaFixture) {
    let bus = fixture.connect().await;
    let (topic, group) = (unique("bytenames"), unique("g"));
    let handled = Collector::<DomainEvent<Ping>>::new();
    let router = Router::new(bus.clone(), &group)
        .on(&topic, recorder(&handled))
        .start()
        .await
        .unwrap();
    // One key: the records share a partition and a lane, so a record that
    // stalls the member would hold back everything after it.
    let key = "k1";
    let publish = |seq| bus.publish_event(&topic, DomainEvent::new(Ping::new(seq)).with_key(key));
    publish(1).await.unwrap();
    let foreign = wire(&bus, &topic, Ping::new(2), key, (b"\xff\xfe", b"foreign"));
    fixture.publish_wire(&topic, foreign).await.unwrap();
    publish(3).await.unwrap();
    let poison = wire(&bus, &topic, Ping::new(4), key, (b"ce_\xff\xfe", b"x"));
    let written: ByteHeaders = poison
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect();
    let body = poison.body.clone();
    fixture.publish_wire(&topic, poison).await.unwrap();
    publish(5).await.unwrap();

    let got = handled.wait_len(4, WAIT, "every event but the poison").await;
    let seqs: Vec<u64> = got.iter().map(|e| e.data.seq).collect();
    assert_eq!(
        seqs,
        vec![1, 2, 3, 5],
        "a foreign name that is not UTF-8 is ignored; a `ce_` one is poison"
    );

    let config = fixture.plain_config();
    let (dlq, partitions) = (dead_letter_topic(&topic, &group), fixture.kafka.partitions);
    let letters = tokio::task::spawn_blocking(move || raw::read(&config, &dlq, partitions, 1, WAIT))
        .await
        .unwrap();
    let letter = &letters[0];
    assert_eq!(
        &letter.headers[..written.len()],
        &written[..],
        "the dead letter keeps the record's headers byte for byte"
    );
    assert_eq!(
        header(&letter.headers, &format!("ce_{}", dl::REASON)),
        Some(&b"malformed_envelope"[..])
    );
    assert_eq!(letter.payload, body);
    assert_eq!(letter.key.as_deref(), Some(key.as_bytes()));

    let stats = within(SHUTDOWN, "router shutdown", router.shutdown())
        .await
        .unwrap();
    assert_eq!((stats.handled, stats.dead_lettered), (4, 1));
    within(SHUTDOWN, "bus shutdown", bus.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_header_names_that_are_not_utf8() {
    header_names_that_are_not_utf8(KafkaFixture::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_header_names_that_are_not_utf8() {
    header_names_that_are_not_utf8(KafkaFixture::mock(1)).await;
}
