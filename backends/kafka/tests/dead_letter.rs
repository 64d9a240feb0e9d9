//! Dead letters that cannot be written: one refused for its size is
//! written again as a letter that fits (reason `too_large`), and one that
//! keeps failing is retried with a growing backoff, never at once. The size
//! test runs on the real broker (tansu in CI) and on the mock cluster; the
//! backoff test needs the mock cluster's error injection.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use busline_core::dead_letter::attr as dl;
use busline_core::wire::{encode_headers, HeaderDialect};
use busline_core::{
    dead_letter_topic, Context, DomainEvent, HandlerError, Outcome, Router, RouterObserver, Settled,
};
use busline_testkit::events::Ping;
use busline_testkit::support::{eventually, recorder, unique, within, Collector, WAIT};
use busline_testkit::BusFixture;
use common::raw::{self, ByteHeaders};
use common::KafkaFixture;
use rdkafka::types::RDKafkaApiKey;
use rdkafka::types::RDKafkaRespErr;

const SHUTDOWN: Duration = Duration::from_secs(30);

/// When the router decided to dead-letter a delivery of `topic`.
#[derive(Default)]
struct DeadLetterTimes {
    topic: String,
    at: Mutex<Vec<Instant>>,
}

struct Observer(Arc<DeadLetterTimes>);

impl RouterObserver for Observer {
    fn on_settled(&self, s: &Settled<'_>) {
        if s.topic == self.0.topic && matches!(s.outcome, Outcome::DeadLettered { .. }) {
            self.0.at.lock().unwrap().push(Instant::now());
        }
    }
}

fn header<'h>(headers: &'h ByteHeaders, name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|(k, _)| k == name.as_bytes())
        .and_then(|(_, v)| v.as_deref())
}

/// The size of the record, for the real broker.
const BIG: usize = 5 << 20;

/// Above busline's producer limit (1,000,000 bytes) but below what the mock
/// cluster keeps: it drops the oldest records of a partition holding more
/// than 5 MiB (rdkafka_mock.c, `max_size`), so a 5 MiB record vanishes
/// there before it is read.
const BIG_ON_MOCK: usize = 2 << 20;

async fn a_dead_letter_too_large_to_write_is_cut(fixture: KafkaFixture, size: usize) {
    let bus = fixture.connect().await;
    let (topic, group) = (unique("toolarge"), unique("g"));
    let handled = Collector::<DomainEvent<Ping>>::new();
    let router = Router::new(bus.clone(), &group)
        .on(&topic, recorder(&handled))
        .start()
        .await
        .unwrap();

    // A valid envelope with a body of `size` bytes that is not JSON, written by a raw
    // producer allowed records that large; busline's producer (librdkafka's
    // default message.max.bytes, 1,000,000) refuses its dead letter.
    let key = "k1";
    let event = bus
        .encode(&topic, DomainEvent::new(Ping::new(1)).with_key(key))
        .unwrap();
    let headers: Vec<(Vec<u8>, Vec<u8>)> = encode_headers(&event, &HeaderDialect::KAFKA)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k.into_bytes(), v.into_bytes()))
        .collect();
    let body: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    let mut config = fixture.plain_config();
    config.set("message.max.bytes", "10000000");
    let (t, h, b) = (topic.clone(), headers.clone(), body.clone());
    tokio::task::spawn_blocking(move || raw::produce(&config, &t, Some(key.as_bytes()), &h, &b))
        .await
        .unwrap()
        .expect("the broker takes the large record");
    bus.publish_event(&topic, DomainEvent::new(Ping::new(2)).with_key(key))
        .await
        .unwrap();

    let got = handled
        .wait_len(1, WAIT, "the event after the large poison")
        .await;
    assert_eq!(got[0].data.seq, 2);

    let config = fixture.plain_config();
    let (dlq, partitions) = (dead_letter_topic(&topic, &group), fixture.kafka.partitions);
    let letters = tokio::task::spawn_blocking(move || raw::read(&config, &dlq, partitions, 1, WAIT))
        .await
        .unwrap();
    let letter = &letters[0];
    let reason = format!("ce_{}", dl::REASON);
    assert_eq!(header(&letter.headers, &reason), Some(&b"too_large"[..]));
    let error =
        String::from_utf8_lossy(header(&letter.headers, &format!("ce_{}", dl::ERROR)).unwrap()).into_owned();
    assert!(
        error.contains("undecodable_payload"),
        "the original reason is kept: {error}"
    );
    assert_eq!(
        header(&letter.headers, "ce_deadletteroriginalsize"),
        Some(size.to_string().as_bytes())
    );
    let written: ByteHeaders = headers.into_iter().map(|(k, v)| (k, Some(v))).collect();
    assert_eq!(
        &letter.headers[..written.len()],
        &written[..],
        "the record's headers, byte for byte"
    );
    assert!(letter.payload.len() < 1_000_000 && !letter.payload.is_empty());
    assert_eq!(
        letter.payload[..],
        body[..letter.payload.len()],
        "a cut, not another body"
    );

    let stats = within(SHUTDOWN, "router shutdown", router.shutdown())
        .await
        .unwrap();
    // Before the fix: redelivered at once, about a million attempts.
    assert_eq!(
        (stats.dead_lettered, stats.settle_failures),
        (1, 0),
        "one dead-letter attempt, written on the first try"
    );
    within(SHUTDOWN, "bus shutdown", bus.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_a_dead_letter_too_large_to_write_is_cut() {
    a_dead_letter_too_large_to_write_is_cut(KafkaFixture::new().await, BIG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_a_dead_letter_too_large_to_write_is_cut() {
    a_dead_letter_too_large_to_write_is_cut(KafkaFixture::mock(1), BIG_ON_MOCK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_a_failing_dead_letter_is_retried_with_backoff() {
    let mut fixture = KafkaFixture::mock(1);
    fixture.kafka.dead_letter_backoff = Duration::from_millis(100);
    fixture.kafka.dead_letter_backoff_max = Duration::from_secs(2);
    let kafka = fixture.kafka.clone();
    let bus = fixture.connect().await;
    let (topic, group) = (unique("dlqdown"), unique("g"));
    bus.provision(&topic, &group).await.unwrap();
    let key = "k1";
    for seq in [1, 2] {
        bus.publish_event(&topic, DomainEvent::new(Ping::new(seq)).with_key(key))
            .await
            .unwrap();
    }
    // Every produce from now on is refused (a permanent error, so
    // librdkafka does not retry it itself): only dead letters are produced.
    let mock = fixture.mock_cluster().unwrap();
    mock.request_errors(
        RDKafkaApiKey::Produce,
        vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_POLICY_VIOLATION; 10_000],
    )
    .unwrap();

    let times = Arc::new(DeadLetterTimes {
        topic: topic.clone(),
        ..Default::default()
    });
    let handled = Collector::<u64>::new();
    let sink = handled.clone();
    let router = Router::new(bus.clone(), &group)
        .observe(Observer(times.clone()))
        .on(&topic, move |_ctx: Context, e: DomainEvent<Ping>| {
            let sink = sink.clone();
            async move {
                if e.data.seq == 1 {
                    return Err(HandlerError::permanent("never payable"));
                }
                sink.push(e.data.seq);
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();

    let tries = 5;
    eventually(WAIT, "five tries of the dead letter", || {
        times.at.lock().unwrap().len() >= tries
    })
    .await;
    let at = times.at.lock().unwrap().clone();
    for (n, pair) in at.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let want = kafka.dead_letter_delay(n as u32 + 1);
        assert!(
            gap >= want,
            "try {} came {gap:?} after the previous one, before the backoff of {want:?}: {at:?}",
            n + 2
        );
    }
    assert!(handled.is_empty(), "the key waits for its dead letter");

    mock.clear_request_errors(RDKafkaApiKey::Produce).unwrap();
    let got = handled
        .wait_len(1, WAIT, "the key's next event once the DLQ takes letters")
        .await;
    assert_eq!(got, vec![2]);
    let config = fixture.plain_config();
    let (dlq, partitions) = (dead_letter_topic(&topic, &group), fixture.kafka.partitions);
    let letters = tokio::task::spawn_blocking(move || raw::read(&config, &dlq, partitions, 1, WAIT))
        .await
        .unwrap();
    assert_eq!(
        header(&letters[0].headers, &format!("ce_{}", dl::REASON)),
        Some(&b"permanent_error"[..])
    );
    let stats = within(SHUTDOWN, "router shutdown", router.shutdown())
        .await
        .unwrap();
    let attempts = times.at.lock().unwrap().len() as u64;
    assert_eq!(
        stats.settle_failures,
        attempts - 1,
        "every try but the last failed"
    );
    assert!(attempts <= 12, "{attempts} tries");
    within(SHUTDOWN, "bus shutdown", bus.shutdown()).await;
}
