//! Scenario 22: an operator's listing of topics and groups with their lag
//! (`Bus::list_topics`, `Bus::list_groups`). Not in
//! [`conformance_suite!`](crate::conformance_suite): librdkafka's mock
//! cluster has no ListGroups, so each backend runs it against its real
//! broker by name.

use std::future::Future;
use std::time::Duration;

use busline_core::{
    dead_letter_topic, Bus, DeadLetterReason, DomainEvent, GroupInfo, InspectErrorKind, SubscribeOptions,
};

use super::next_delivery;
use crate::events::Ping;
use crate::support::{unique, within, WAIT};
use crate::BusFixture;

/// Asks `look` again every 200 ms until it answers `Some`, for at most
/// [`WAIT`]: brokers publish their figures with a delay (RabbitMQ's
/// management statistics every 5 s). Panics with `what` and the last answer.
async fn until<T, F, Fut>(what: &str, mut look: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = (Option<T>, String)>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (found, seen) = look().await;
        if let Some(found) = found {
            return found;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {WAIT:?} waiting for {what}; last seen: {seen}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn group_of(bus: &Bus, topic: &str, group: &str) -> (Option<GroupInfo>, String) {
    match within(WAIT, "listing groups", bus.list_groups(topic)).await {
        Ok(groups) => {
            let seen = format!("{groups:?}");
            (groups.into_iter().find(|g| g.group == group), seen)
        }
        Err(e) => (None, not_unsupported(&e)),
    }
}

/// The error as text, for waiting on; the test fails at once on one that
/// waiting does not mend.
fn not_unsupported(e: &busline_core::InspectError) -> String {
    let text = busline_core::ErrorChain(e).to_string();
    assert_ne!(e.kind(), InspectErrorKind::Unsupported, "{text}");
    text
}

/// A group's lag once it settles at `lag`.
async fn lag_settles(bus: &Bus, topic: &str, group: &str, lag: u64) -> GroupInfo {
    until(&format!("group `{group}` on `{topic}` at lag {lag}"), || async {
        let (g, seen) = group_of(bus, topic, group).await;
        (g.filter(|g| g.lag == Some(lag)), seen)
    })
    .await
}

/// Publishes three events to a topic with two groups; one group takes
/// all three (two acked, one dead-lettered). The topic is listed (with
/// three messages where the broker counts them); the idle group lags by
/// three, the working one by none, and its DLQ holds one letter for it.
pub async fn list_topics_and_groups(fixture: &dyn BusFixture) {
    let bus = fixture.connect().await;
    let (topic, group, idle) = (unique("inv"), unique("g"), unique("idle"));
    bus.provision(&topic, &group).await.unwrap();
    bus.provision(&topic, &idle).await.unwrap();
    // One awaited publish at a time, so each is a record batch of its own:
    // tansu 0.6 answers a partition's latest offset with its newest
    // batch's base offset + 1.
    for seq in 1..=3 {
        let event = DomainEvent::new(Ping::new(seq)).with_key(format!("inv-{seq}"));
        bus.publish_event(&topic, event).await.unwrap();
    }

    let listed = until(&format!("topic `{topic}` listed"), || async {
        match within(WAIT, "listing topics", bus.list_topics()).await {
            Ok(topics) => {
                let seen = format!("{} topics", topics.len());
                (topics.into_iter().find(|t| t.topic == topic), seen)
            }
            Err(e) => (None, not_unsupported(&e)),
        }
    })
    .await;
    assert!(
        listed.messages.is_none_or(|m| m == 3),
        "a topic's message count, where the broker gives one, is what it holds: {listed:?}"
    );

    lag_settles(&bus, &topic, &group, 3).await;
    lag_settles(&bus, &topic, &idle, 3).await;

    {
        let mut sub = bus
            .subscribe(&topic, &group, SubscribeOptions::default())
            .await
            .unwrap();
        let mut seqs = Vec::new();
        for _ in 0..3 {
            let d = next_delivery(&mut sub, "an event of the working group").await;
            let event = d.event().expect("a readable event");
            let seq = bus
                .codecs()
                .decode::<Ping>(event.content_type(), &event.data.bytes)
                .unwrap()
                .seq;
            seqs.push(seq);
            if seq == 2 {
                d.dead_letter(DeadLetterReason::Manual, "for the listing")
                    .await
                    .unwrap();
            } else {
                d.ack().await.unwrap();
            }
        }
        seqs.sort_unstable();
        assert_eq!(seqs, vec![1, 2, 3]);
    }

    let done = lag_settles(&bus, &topic, &group, 0).await;
    assert!(
        done.in_flight.is_none_or(|n| n == 0),
        "nothing in flight after the subscription ended: {done:?}"
    );
    let untouched = lag_settles(&bus, &topic, &idle, 3).await;
    assert!(untouched.in_flight.is_none_or(|n| n == 0), "{untouched:?}");
    // Replay and purge read the DLQ as the group: its lag there is the
    // letters waiting.
    lag_settles(&bus, &dead_letter_topic(&topic, &group), &group, 1).await;

    let missing = within(
        WAIT,
        "listing the groups of a missing topic",
        bus.list_groups(&unique("absent")),
    )
    .await
    .expect_err("a topic that does not exist has no groups");
    assert_eq!(missing.kind(), InspectErrorKind::NotFound, "{missing}");
    bus.shutdown().await;
}
