//! Deliveries that are not settled the ordinary way: dropped undecided, or
//! held by a handler for longer than the server's `ack_wait`.

mod common;

use std::time::Duration;

use busline_core::{Bus, SubscribeOptions};
use busline_testkit::events::Ping;
use busline_testkit::support::{unique, within, WAIT};
use busline_testkit::test_settings;
use common::{test_config, NatsFixture};
use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_dropped_undecided_is_redelivered() {
    let fixture = NatsFixture::new().await;
    let bus = Bus::new(fixture.connect_nats().await, test_settings());
    let (topic, group) = (unique("dropped"), unique("g"));
    let mut sub = bus
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .unwrap();
    let id = bus.publish(&topic, Ping::new(1)).await.unwrap();
    let d = within(WAIT, "the delivery", sub.next()).await.unwrap().unwrap();
    assert_eq!(d.attempt(), 1);
    drop(d);
    // Long before ack_wait (5 s here) would bring it back.
    let again = within(Duration::from_secs(3), "the redelivery", sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.event().unwrap().id, id);
    assert_eq!(again.attempt(), 2);
    again.ack().await.unwrap();
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_handler_is_not_redelivered_under_it() {
    let ack_wait = Duration::from_secs(1);
    let nats = busline_nats::NatsConfig {
        ack_wait,
        ..test_config()
    };
    let base = NatsFixture::new().await;
    let fixture = NatsFixture::with(base.url.clone(), nats, None);
    let bus = Bus::new(fixture.connect_nats().await, test_settings());
    let (topic, group) = (unique("long"), unique("g"));
    let mut holder = bus
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .unwrap();
    let mut other = bus
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .unwrap();
    let id = bus.publish(&topic, Ping::new(1)).await.unwrap();
    let held = within(WAIT, "the delivery", async {
        tokio::select! {
            Some(Ok(d)) = holder.next() => d,
            Some(Ok(d)) = other.next() => d,
        }
    })
    .await;
    assert_eq!(held.event().unwrap().id, id);
    // The handler works for three ack_waits; neither member sees the event
    // again meanwhile.
    let redelivered = tokio::time::timeout(ack_wait * 3, async {
        tokio::select! {
            Some(Ok(d)) = holder.next() => d,
            Some(Ok(d)) = other.next() => d,
        }
    })
    .await;
    assert!(
        redelivered.is_err(),
        "redelivered while the handler ran: {:?}",
        redelivered.map(|d| d.attempt())
    );
    held.ack().await.unwrap();
    let after = tokio::time::timeout(ack_wait * 2, async {
        tokio::select! {
            Some(Ok(d)) = holder.next() => d,
            Some(Ok(d)) = other.next() => d,
        }
    })
    .await;
    assert!(after.is_err(), "redelivered after the ack");
    bus.shutdown().await;
}
