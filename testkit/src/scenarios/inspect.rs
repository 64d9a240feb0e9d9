//! Scenario 21: an operator's look at a group's dead letters.

use std::time::Duration;

use busline_core::{
    BrowseOptions, Bus, DeadLetterReason, DomainEvent, LetterAction, SubscribeOptions, REPLAY_GROUP,
};

use super::next_delivery;
use crate::events::Ping;
use crate::support::{unique, within, WAIT};
use crate::BusFixture;

fn seq_of(bus: &Bus, event: &busline_core::RawEvent) -> u64 {
    bus.codecs()
        .decode::<Ping>(event.content_type(), &event.data.bytes)
        .unwrap()
        .seq
}

/// Bounded by [`WAIT`] for the first letter: a Kafka member that joins right
/// after its predecessor left can be handed an empty assignment until the
/// group settles (tansu 0.6, and librdkafka's mock cluster alike).
fn options() -> BrowseOptions {
    BrowseOptions::default()
        .limit(10)
        .first_wait(WAIT)
        .idle_timeout(Duration::from_secs(3))
}

async fn browse_seqs(bus: &Bus, topic: &str, group: &str) -> (busline_core::DeadLetterBatch, Vec<u64>) {
    let batch = within(
        WAIT * 2,
        "browsing the DLQ",
        bus.browse_dead_letters(topic, group, options()),
    )
    .await
    .expect("browse the DLQ");
    let mut seqs: Vec<u64> = batch
        .letters()
        .iter()
        .map(|held| seq_of(bus, held.event().expect("a readable letter")))
        .collect();
    seqs.sort_unstable();
    (batch, seqs)
}

/// Scenario 21: Browsing a group's dead letters holds them without losing
/// any: released, they are all there for the next look; settled one by one,
/// the replayed letter reaches the group again (marked for it alone), the
/// discarded one is gone, the kept one stays.
pub async fn browse_dead_letters_and_settle_each(fixture: &dyn BusFixture) {
    let bus = fixture.connect().await;
    let (topic, group) = (unique("browse"), unique("g"));
    bus.provision(&topic, &group).await.unwrap();
    // Distinct keys: the Kafka backend hands out a key's next record only
    // when the one before it is settled, and browsing holds them all.
    for seq in 1..=3 {
        let event = DomainEvent::new(Ping::new(seq)).with_key(format!("browse-{seq}"));
        bus.publish_event(&topic, event).await.unwrap();
    }
    {
        let mut sub = bus
            .subscribe(&topic, &group, SubscribeOptions::default())
            .await
            .unwrap();
        for _ in 0..3 {
            let d = next_delivery(&mut sub, "an event to dead-letter").await;
            d.dead_letter(DeadLetterReason::Manual, "for the operator")
                .await
                .unwrap();
        }
    }

    let (batch, seqs) = browse_seqs(&bus, &topic, &group).await;
    assert_eq!(seqs, vec![1, 2, 3], "every dead letter is in the batch");
    for held in batch.letters() {
        let letter = held.letter().expect("dead-letter attributes");
        assert_eq!(letter.reason, DeadLetterReason::Manual);
        assert_eq!(
            (letter.topic.as_str(), letter.group.as_str()),
            (topic.as_str(), group.as_str())
        );
    }
    batch.release().await;

    let (batch, seqs) = browse_seqs(&bus, &topic, &group).await;
    assert_eq!(seqs, vec![1, 2, 3], "a look removes nothing");
    let action = |held: &busline_core::HeldLetter| match seq_of(&bus, held.event().unwrap()) {
        1 => LetterAction::Replay,
        2 => LetterAction::Discard,
        _ => LetterAction::Keep,
    };
    let mut settled = 0;
    let report = within(
        WAIT,
        "settling the batch",
        batch.settle(&bus, action, || settled += 1),
    )
    .await
    .expect("settle");
    assert_eq!(
        (report.moved, report.discarded, report.kept, settled),
        (1, 1, 1, 3),
        "{report:?}"
    );

    let mut sub = bus
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .unwrap();
    let replayed = next_delivery(&mut sub, "the replayed letter").await;
    let event = replayed.event().expect("a readable replay").clone();
    assert_eq!(seq_of(&bus, &event), 1);
    assert_eq!(event.extensions.get(REPLAY_GROUP), Some(&group));
    replayed.ack().await.unwrap();
    drop(sub);

    let (batch, seqs) = browse_seqs(&bus, &topic, &group).await;
    assert_eq!(seqs, vec![3], "only the kept letter is left");
    batch.release().await;
    let _ = bus.remove_group(&topic, &group).await;
    bus.shutdown().await;
}
