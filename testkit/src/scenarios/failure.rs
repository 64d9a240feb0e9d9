//! Scenarios 5–8: nack, retries, dead letters, poison, panics and timeouts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use busline_core::dead_letter::attr as dl;
use busline_core::wire::encode_headers;
use busline_core::{
    Context, DomainEvent, HandlerError, Payload, RawEvent, RetryPolicy, Router, SubscribeOptions,
};
use bytes::Bytes;
use tokio::time::Instant;

use super::{next_delivery, DlqReader};
use crate::events::Ping;
use crate::support::{unique, Collector, WAIT};
use crate::{BusFixture, WireInput};

/// Scenario 5: Nack: the event comes again, the attempt number grows, and the retry
/// delay is respected.
pub async fn nack_redelivers_with_delay(fixture: &dyn BusFixture) {
    let bus = fixture.connect().await;
    let (topic, group) = (unique("nack"), unique("g"));
    let mut sub = bus
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .unwrap();
    let id = bus.publish(&topic, Ping::new(1)).await.unwrap();
    let delay = Duration::from_millis(300);
    let mut nacked_at = None;
    for attempt in 1..=3u32 {
        let d = next_delivery(&mut sub, &format!("delivery attempt {attempt}")).await;
        if let Some(at) = nacked_at {
            let waited = Instant::now() - at;
            assert!(
                waited >= delay,
                "redelivered after {waited:?}, before the {delay:?} retry delay"
            );
        }
        assert_eq!(d.event().unwrap().id, id);
        assert_eq!(d.attempt(), attempt, "attempt number counts deliveries");
        if attempt == 3 {
            d.ack().await.unwrap();
        } else {
            nacked_at = Some(Instant::now());
            d.nack(delay).await.unwrap();
        }
    }
    bus.shutdown().await;
}

/// Scenario 6: Dead-letter after max attempts, with reason and attempts; envelope and
/// payload intact.
pub async fn dead_letter_after_max_attempts(fixture: &dyn BusFixture) {
    let bus = fixture.connect().await;
    let (topic, group) = (unique("maxattempts"), unique("g"));
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let router = Router::new(bus.clone(), &group)
        .with_retry(
            RetryPolicy::default()
                .with_max_attempts(3)
                .with_backoff(Duration::from_millis(20), Duration::from_millis(50)),
        )
        .on(&topic, move |ctx: Context, _e: DomainEvent<Ping>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                Err(HandlerError::retryable(format!(
                    "boom on attempt {}",
                    ctx.attempt()
                )))
            }
        })
        .start()
        .await
        .unwrap();
    let dlq = DlqReader::start(&bus, &topic, &group).await;
    let sent = DomainEvent::new(Ping {
        seq: 6,
        note: "doomed".into(),
    })
    .with_key("k-6")
    .with_extension("tenant", "acme");
    let raw_sent = bus.encode(&topic, sent.clone()).unwrap();
    bus.publish_event(&topic, sent).await.unwrap();

    let letters = dlq.letters.wait_len(1, WAIT, "the dead letter").await;
    let letter = letters[0].as_ref().expect("a readable dead letter");
    assert_eq!(calls.load(Ordering::SeqCst), 3, "handler called once per attempt");
    assert_eq!(letter.id, raw_sent.id);
    assert_eq!(letter.data, raw_sent.data, "payload byte for byte");
    assert_eq!(
        (&letter.key, &letter.correlation_id),
        (&raw_sent.key, &raw_sent.correlation_id)
    );
    assert_eq!(letter.time, raw_sent.time);
    assert_eq!(letter.extensions["tenant"], "acme");
    assert_eq!(letter.extensions[dl::REASON], "max_attempts_exceeded");
    assert_eq!(letter.extensions[dl::ATTEMPTS], "3");
    assert_eq!(letter.extensions[dl::TOPIC], topic);
    assert_eq!(letter.extensions[dl::GROUP], group);
    assert!(
        letter.extensions[dl::ERROR].contains("boom on attempt 3"),
        "{:?}",
        letter.extensions
    );
    assert!(letter.extensions.contains_key(dl::TIME));
    let stats = router.shutdown().await.unwrap();
    assert_eq!((stats.retried, stats.dead_lettered), (2, 1));
    bus.shutdown().await;
}

/// Scenario 7: A permanent error and poison input (undecodable payload, unknown
/// content type, unreadable headers) go straight to the DLQ, and the
/// consumer goes on.
pub async fn permanent_error_and_poison_go_to_dlq(fixture: &dyn BusFixture) {
    let bus = fixture.connect().await;
    let (topic, group) = (unique("poison"), unique("g"));
    let handled = Collector::<u64>::new();
    let sink = handled.clone();
    let router = Router::new(bus.clone(), &group)
        .on(&topic, move |_ctx: Context, e: DomainEvent<Ping>| {
            let sink = sink.clone();
            async move {
                if e.data.seq == 1 {
                    return Err(HandlerError::permanent("order 1 can never be paid"));
                }
                sink.push(e.data.seq);
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    let dlq = DlqReader::start(&bus, &topic, &group).await;

    bus.publish(&topic, Ping::new(1)).await.unwrap();
    let mut undecodable = bus.encode(&topic, DomainEvent::new(Ping::new(2))).unwrap();
    undecodable.data.bytes = Bytes::from_static(b"{\"seq\": \"not a number\"");
    bus.publish_raw(&topic, undecodable).await.unwrap();
    let mut unknown_ct = bus.encode(&topic, DomainEvent::new(Ping::new(3))).unwrap();
    unknown_ct.data = Payload::new("application/x-protobuf", Bytes::from_static(b"\x08\x03"));
    bus.publish_raw(&topic, unknown_ct).await.unwrap();
    let malformed = malformed_message(&bus, &topic, fixture);
    fixture
        .publish_wire(&topic, malformed)
        .await
        .expect("publish a raw message");
    bus.publish(&topic, Ping::new(5)).await.unwrap();

    handled.wait_len(1, WAIT, "the good event after the poison").await;
    let letters = dlq.letters.wait_len(4, WAIT, "four dead letters").await;
    let mut reasons = BTreeMap::new();
    let mut unreadable = 0;
    for letter in &letters {
        match letter {
            Ok(e) => {
                assert_eq!(
                    e.extensions[dl::ATTEMPTS],
                    "1",
                    "dead-lettered on the first attempt"
                );
                *reasons.entry(e.extensions[dl::REASON].clone()).or_insert(0) += 1;
            }
            Err(err) => {
                let err = busline_core::ErrorChain(err).to_string();
                assert!(err.contains("`id` is missing"), "{err}");
                unreadable += 1;
            }
        }
    }
    let want: BTreeMap<String, i32> = [
        ("permanent_error", 1),
        ("undecodable_payload", 1),
        ("unknown_content_type", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(reasons, want);
    assert_eq!(
        unreadable, 1,
        "the message without an id is dead-lettered as it is"
    );
    assert_eq!(handled.snapshot(), vec![5]);
    router.shutdown().await.unwrap();
    bus.shutdown().await;
}

/// A message in the fixture's wire form whose headers lack the event id.
fn malformed_message(bus: &busline_core::Bus, topic: &str, fixture: &dyn BusFixture) -> WireInput {
    let event: RawEvent = bus.encode(topic, DomainEvent::new(Ping::new(4))).unwrap();
    let dialect = fixture.dialect();
    let id_header = dialect.header("id");
    let headers = encode_headers(&event, &dialect)
        .unwrap()
        .into_iter()
        .filter(|(k, _)| *k != id_header)
        .map(|(k, v)| (k.into_bytes(), v.into_bytes()))
        .collect();
    WireInput {
        event_type: event.event_type.to_string(),
        headers,
        content_type: dialect
            .content_type_header
            .is_none()
            .then(|| event.data.content_type.to_string()),
        key: None,
        body: event.data.bytes.clone(),
    }
}

/// Scenario 8: A handler that panics and one that outlives the handler timeout are
/// retried; the consumer survives both.
pub async fn panic_and_timeout_are_retried(fixture: &dyn BusFixture) {
    let bus = fixture.connect().await;
    let (topic, group) = (unique("panic"), unique("g"));
    let handled = Collector::<(u64, u32)>::new();
    let sink = handled.clone();
    let router = Router::new(bus.clone(), &group)
        .with_handler_timeout(Some(Duration::from_millis(500)))
        .on(&topic, move |ctx: Context, e: DomainEvent<Ping>| {
            let sink = sink.clone();
            async move {
                match (e.data.seq, ctx.attempt()) {
                    (1, 1) => panic!("handler bug on first attempt"),
                    (2, 1) => tokio::time::sleep(Duration::from_secs(30)).await,
                    _ => {}
                }
                sink.push((e.data.seq, ctx.attempt()));
                Ok::<_, HandlerError>(())
            }
        })
        .start()
        .await
        .unwrap();
    for seq in 1..=3 {
        bus.publish(&topic, Ping::new(seq)).await.unwrap();
    }
    handled
        .wait_len(3, WAIT, "the panicking, slow and good events")
        .await;
    bus.publish(&topic, Ping::new(4)).await.unwrap();
    let mut got = handled.wait_len(4, WAIT, "an event after the failures").await;
    got.sort();
    assert_eq!(got, vec![(1, 2), (2, 2), (3, 1), (4, 1)]);
    let stats = router.shutdown().await.unwrap();
    assert_eq!(stats.retried, 2);
    assert_eq!(stats.dead_lettered, 0);
    bus.shutdown().await;
}
