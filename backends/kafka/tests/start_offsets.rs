//! Where partitions without a committed offset start: in a group that has
//! committed offsets on other partitions of the topic (a partition added
//! later, or one whose offsets expired), at the earliest retained offset,
//! so nothing written meanwhile is skipped; only a group without any
//! offsets follows `StartFrom`. Partitions cannot be added here (neither
//! tansu 0.6 nor the mock cluster has CreatePartitions), so a plain client
//! commits the group's offset on partition 0 only, as if partition 1 had
//! been added or had lost its offset. And the consumer group DLQ readers
//! got (`<group>.dlq`) starts where readers under the main group id were.
//! Runs on the real broker (tansu in CI) and on the mock cluster.

mod common;

use std::collections::BTreeSet;

use busline_core::{DomainEvent, Router};
use busline_testkit::events::Ping;
use busline_testkit::support::{recorder, unique, within, Collector, WAIT};
use common::KafkaFixture;
use futures::StreamExt;
use rdkafka::producer::FutureProducer;

/// The sequence numbers of the pings handled so far, sorted.
fn sorted_seqs(events: &[DomainEvent<Ping>]) -> Vec<u64> {
    let mut seqs: Vec<u64> = events.iter().map(|e| e.data.seq).collect();
    seqs.sort_unstable();
    seqs
}

/// Creates `topic` with two partitions; a plain producer to write to a
/// chosen one.
async fn two_partitions(fixture: &mut KafkaFixture, topic: &str) -> FutureProducer {
    fixture.kafka.partitions = 2;
    let admin = fixture.connect_kafka().await;
    admin.ensure_topic(topic).await.unwrap();
    busline_core::EventBus::shutdown(&admin).await;
    fixture.plain_config().create().unwrap()
}

async fn a_partition_without_offset_in_an_existing_group_starts_at_the_earliest(mut fixture: KafkaFixture) {
    let (topic, group) = (unique("startoff"), unique("g"));
    let producer = two_partitions(&mut fixture, &topic).await;

    // The group handled partition 0 up to offset 2; partition 1 has no
    // offset yet, and gets events meanwhile.
    for seq in [0, 1] {
        common::plain::produce_ping(&producer, &topic, 0, seq).await;
    }
    for seq in [10, 11, 12] {
        common::plain::produce_ping(&producer, &topic, 1, seq).await;
    }
    common::plain::commit_offset(&fixture, &topic, &group, 0, 2).await;
    for seq in [2, 3] {
        common::plain::produce_ping(&producer, &topic, 0, seq).await;
    }
    common::plain::produce_ping(&producer, &topic, 1, 13).await;

    let bus = busline_testkit::BusFixture::connect(&fixture).await;
    let seen = Collector::new();
    let router = Router::new(bus.clone(), &group)
        .on(&topic, recorder::<Ping>(&seen))
        .start()
        .await
        .unwrap();
    let want: BTreeSet<u64> = [2, 3, 10, 11, 12, 13].into();
    let got = seen
        .wait_until(WAIT, "partition 0 from its offset and all of partition 1", |s| {
            want.iter().all(|w| s.iter().any(|e| e.data.seq == *w))
        })
        .await;
    // Nothing of partition 0 before the committed offset, nothing twice.
    assert_eq!(sorted_seqs(&got), want.into_iter().collect::<Vec<_>>());
    router.shutdown().await.unwrap();
    bus.shutdown().await;
}

/// A group with no offsets at all is new: it starts at the end (the
/// default `StartFrom::New`), whatever the topic holds.
async fn a_group_without_offsets_starts_at_the_end(mut fixture: KafkaFixture) {
    let (topic, group) = (unique("startnew"), unique("g"));
    let producer = two_partitions(&mut fixture, &topic).await;
    for (partition, seq) in [(0, 0), (1, 10)] {
        common::plain::produce_ping(&producer, &topic, partition, seq).await;
    }

    let bus = busline_testkit::BusFixture::connect(&fixture).await;
    let seen = Collector::new();
    let router = Router::new(bus.clone(), &group)
        .on(&topic, recorder(&seen))
        .start()
        .await
        .unwrap();
    for (partition, seq) in [(0, 1), (1, 11)] {
        common::plain::produce_ping(&producer, &topic, partition, seq).await;
    }
    let got = seen
        .wait_len(2, WAIT, "the events written after subscribing")
        .await;
    assert_eq!(sorted_seqs(&got), vec![1, 11]);
    router.shutdown().await.unwrap();
    bus.shutdown().await;
}

/// DLQ readers had the main group's id before they got one of their own
/// (`<group>.dlq`): on its first subscription the new group starts where
/// the old readers had got to, neither skipping the letters they had not
/// read (`StartFrom::New` would start at the end) nor reading the others
/// again.
async fn a_dlq_reader_group_starts_where_the_readers_under_the_main_group_id_were(mut fixture: KafkaFixture) {
    let (topic, group) = (unique("dlqup"), unique("g"));
    let dlq = busline_core::dead_letter_topic(&topic, &group);
    let producer = two_partitions(&mut fixture, &dlq).await;
    for seq in [0, 1, 2] {
        common::plain::produce_ping(&producer, &dlq, 0, seq).await;
    }
    // A reader of the previous version, in the main group, had read two.
    common::plain::commit_offset(&fixture, &dlq, &group, 0, 2).await;

    let bus = busline_testkit::BusFixture::connect(&fixture).await;
    let mut sub = bus
        .subscribe(&dlq, &group, busline_core::SubscribeOptions::default())
        .await
        .unwrap();
    common::plain::produce_ping(&producer, &dlq, 1, 3).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let letter = within(WAIT, "the letters the old readers had not read", sub.next())
            .await
            .expect("the DLQ subscription is open")
            .expect("a letter");
        let raw = letter.event().expect("a readable letter").clone();
        got.push(serde_json::from_slice::<Ping>(&raw.data.bytes).unwrap().seq);
        letter.ack().await.unwrap();
    }
    got.sort_unstable();
    assert_eq!(got, vec![2, 3], "neither skipped nor read again");
    drop(sub);
    bus.shutdown().await;
}

mod broker {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dlq_reader_group_starts_where_the_readers_under_the_main_group_id_were() {
        super::a_dlq_reader_group_starts_where_the_readers_under_the_main_group_id_were(
            KafkaFixture::new().await,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partition_without_offset_in_an_existing_group_starts_at_the_earliest() {
        super::a_partition_without_offset_in_an_existing_group_starts_at_the_earliest(
            KafkaFixture::new().await,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_without_offsets_starts_at_the_end() {
        super::a_group_without_offsets_starts_at_the_end(KafkaFixture::new().await).await;
    }
}

mod mock {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dlq_reader_group_starts_where_the_readers_under_the_main_group_id_were() {
        super::a_dlq_reader_group_starts_where_the_readers_under_the_main_group_id_were(KafkaFixture::mock(
            1,
        ))
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partition_without_offset_in_an_existing_group_starts_at_the_earliest() {
        super::a_partition_without_offset_in_an_existing_group_starts_at_the_earliest(KafkaFixture::mock(1))
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_without_offsets_starts_at_the_end() {
        super::a_group_without_offsets_starts_at_the_end(KafkaFixture::mock(1)).await;
    }
}
