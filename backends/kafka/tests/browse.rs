//! An operator's look at a DLQ whose letters share a key: the Kafka backend
//! hands out a key's records one at a time for handlers, and a browse that
//! holds the first would not see the rest. Runs on the real broker (tansu
//! in CI).

mod common;

use std::time::Duration;

use busline_core::{BrowseOptions, DeadLetterReason, DomainEvent, SubscribeOptions};
use busline_testkit::events::Ping;
use busline_testkit::support::{unique, within, WAIT};
use busline_testkit::BusFixture;
use common::KafkaFixture;
use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letters_of_one_key_are_all_in_the_batch() {
    let fixture = KafkaFixture::new().await;
    let bus = fixture.connect().await;
    let (topic, group) = (unique("browse-key"), unique("g"));
    bus.provision(&topic, &group).await.unwrap();
    for seq in 1..=3 {
        let event = DomainEvent::new(Ping::new(seq)).with_key("one-order");
        bus.publish_event(&topic, event).await.unwrap();
    }
    {
        let mut sub = bus
            .subscribe(&topic, &group, SubscribeOptions::default())
            .await
            .unwrap();
        for _ in 0..3 {
            let d = within(WAIT, "an event to dead-letter", sub.next())
                .await
                .expect("the subscription is open")
                .expect("a delivery");
            d.dead_letter(DeadLetterReason::Manual, "for the operator")
                .await
                .unwrap();
        }
    }
    // The first wait covers tansu 0.6 handing a rejoining member an empty
    // assignment until the group settles.
    let options = BrowseOptions::default()
        .first_wait(WAIT)
        .idle_timeout(Duration::from_secs(3));
    for look in ["first", "second"] {
        let batch = within(
            WAIT * 2,
            "browsing",
            bus.browse_dead_letters(&topic, &group, options),
        )
        .await
        .expect("browse");
        let mut seqs: Vec<u64> = batch
            .letters()
            .iter()
            .map(|held| {
                let event = held.event().expect("a readable letter");
                bus.codecs()
                    .decode::<Ping>(event.content_type(), &event.data.bytes)
                    .unwrap()
                    .seq
            })
            .collect();
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            vec![1, 2, 3],
            "the {look} look sees every letter of the key"
        );
        batch.release().await;
    }
    bus.shutdown().await;
}
