//! A dead letter that would exceed the server's `max_payload`: the event
//! itself fit, but the letter's headers (reason, error text) push it over.
//! The server refuses such a message by closing the connection, so writing
//! it again can never succeed; busline writes a letter that fits instead:
//! reason `too_large`, body cut, the original size kept.

mod common;

use busline_core::dead_letter::attr as dl;
use busline_core::{Context, DomainEvent, HandlerError, Router};
use busline_testkit::events::Ping;
use busline_testkit::support::{dead_letters, unique, within, WAIT};
use busline_testkit::BusFixture;
use common::NatsFixture;
use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_above_max_payload_is_written_cut_as_too_large() {
    let fixture = NatsFixture::new().await;
    let limit = fixture.raw().await.server_info().max_payload;
    let bus = fixture.connect().await;
    let (topic, group) = (unique("dlq.big"), unique("g"));

    let router = Router::new(bus.clone(), &group)
        .on(&topic, |_ctx: Context, _e: DomainEvent<Ping>| async move {
            // A long error text: the letter carries it in a header.
            Err::<(), _>(HandlerError::permanent("refused: ".repeat(200)))
        })
        .start()
        .await
        .unwrap();
    // The event's body and headers stay ~1.5 KiB under the limit.
    let mut ping = Ping::new(1);
    ping.note = "x".repeat(limit - 1500);
    let id = bus.publish(&topic, ping).await.unwrap();

    let mut letters = dead_letters(&bus, &topic, &group).await;
    let d = within(WAIT, "the letter of the event", letters.next())
        .await
        .expect("the DLQ stream ended")
        .expect("the DLQ stream failed");
    let letter = d.event().expect("a readable letter").clone();
    assert_eq!(letter.id, id);
    assert_eq!(letter.extensions[dl::REASON], "too_large");
    let error = &letter.extensions[dl::ERROR];
    assert!(error.starts_with("permanent_error: refused"), "{error}");
    let original: usize = letter.extensions[dl::ORIGINAL_SIZE].parse().unwrap();
    assert!(original > limit - 1500, "original size {original}");
    assert_eq!(letter.data.bytes.len(), 64 * 1024, "the body is cut");
    d.ack().await.unwrap();
    let stats = within(WAIT, "the router to shut down", router.shutdown())
        .await
        .unwrap();
    assert_eq!(stats.dead_lettered, 1);
    within(WAIT, "the bus to shut down", bus.shutdown()).await;
}
