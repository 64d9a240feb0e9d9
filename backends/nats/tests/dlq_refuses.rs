//! A dead-letter topic that refuses writes: the event whose letter was not
//! stored comes back later each time, not at once, and its letter is stored
//! once the DLQ takes writes again.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::stream::{Config, DiscardPolicy};
use busline_core::dead_letter::attr as dl;
use busline_core::{dead_letter_topic, Context, DomainEvent, HandlerError, Router};
use busline_nats::TopicNames;
use busline_testkit::events::Ping;
use busline_testkit::support::{dead_letters, eventually, unique, within, WAIT};
use busline_testkit::BusFixture;
use common::NatsFixture;
use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_dead_letter_is_retried_with_a_growing_delay() {
    let fixture = NatsFixture::new().await;
    let bus = fixture.connect().await;
    let (topic, group) = (unique("dlq.full"), unique("g"));
    let dlq = TopicNames::of(&dead_letter_topic(&topic, &group)).unwrap();

    // The DLQ stream exists before busline declares it: one message at
    // most, new ones discarded, and already holding one.
    let js = async_nats::jetstream::new(fixture.raw().await);
    let full = js
        .create_stream(Config {
            name: dlq.stream.clone(),
            subjects: vec![dlq.wildcard()],
            max_messages: 1,
            discard: DiscardPolicy::New,
            max_age: Duration::from_secs(3600),
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .unwrap();
    js.publish(format!("{}.filler", dlq.token), "x".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let calls = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let seen = calls.clone();
    let router = Router::new(bus.clone(), &group)
        .on(&topic, move |_ctx: Context, _e: DomainEvent<Ping>| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(Instant::now());
                Err::<(), _>(HandlerError::permanent("cannot ever be handled"))
            }
        })
        .start()
        .await
        .unwrap();
    let id = bus.publish(&topic, Ping::new(1)).await.unwrap();

    eventually(WAIT, "three deliveries of the event", || {
        calls.lock().unwrap().len() >= 3
    })
    .await;
    let times = calls.lock().unwrap().clone();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("gaps between deliveries while the DLQ refuses: {gaps:?}");
    // The server holds each nak for its delay: a lower bound that load
    // cannot break. 200 ms, then 400 ms (a little slack for clocks).
    for (i, gap) in gaps.iter().take(2).enumerate() {
        let floor = Duration::from_millis(190 << i);
        assert!(
            *gap >= floor,
            "delivery {} came {gap:?} after the one before, under {floor:?}",
            i + 2
        );
    }

    // The DLQ takes writes again: the next delivery's letter is stored.
    full.purge().await.unwrap();
    let mut letters = dead_letters(&bus, &topic, &group).await;
    let d = within(WAIT, "the letter once the DLQ has room", letters.next())
        .await
        .unwrap()
        .unwrap();
    let letter = d.event().unwrap().clone();
    assert_eq!(letter.id, id);
    assert_eq!(letter.extensions[dl::REASON], "permanent_error");
    d.ack().await.unwrap();
    router.shutdown().await.unwrap();
    bus.shutdown().await;
}
