//! `remove_group` as the broker sees it (tansu in CI), asked through a
//! plain rdkafka client rather than busline: the group's committed offsets
//! and its dead-letter topic are gone; a consumer group that also reads
//! another topic is refused and left as it was, since Kafka deletes a
//! consumer group whole. The mock cluster (no DeleteGroups) answers
//! Unsupported.

mod common;

use std::time::Duration;

use busline_core::{dead_letter_topic, SubscribeErrorKind};
use busline_testkit::support::{unique, within};
use busline_testkit::BusFixture;
use common::KafkaFixture;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

/// Every broker call of these tests answers within this, or the test fails.
const CALL: Duration = Duration::from_secs(30);

/// The partitions of `topic` where consumer group `group_id` has a
/// committed offset, asked with a plain client; `None` if the cluster has
/// no such topic.
async fn committed(fixture: &KafkaFixture, group_id: &str, topic: &str) -> Option<Vec<i32>> {
    let config = {
        let mut c = fixture.plain_config();
        c.set("group.id", group_id);
        c
    };
    let topic = topic.to_owned();
    within(
        CALL,
        "committed offsets",
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = config.create().unwrap();
            let md = consumer.fetch_metadata(Some(&topic), CALL).unwrap();
            let t = md.topics().iter().find(|t| t.name() == topic)?;
            if t.error().is_some() || t.partitions().is_empty() {
                return None;
            }
            let mut tpl = TopicPartitionList::new();
            for p in t.partitions() {
                tpl.add_partition(&topic, p.id());
            }
            let got = consumer.committed_offsets(tpl, CALL).unwrap();
            Some(
                got.elements()
                    .iter()
                    .filter(|e| matches!(e.offset(), Offset::Offset(_)))
                    .map(|e| e.partition())
                    .collect(),
            )
        }),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_deletes_the_groups_offsets_and_its_dlq_topic() {
    let fixture = KafkaFixture::new().await;
    let bus = fixture.connect().await;
    let (topic, group, other) = (unique("rm"), unique("g"), unique("other"));
    let dlq = dead_letter_topic(&topic, &group);
    bus.provision(&topic, &group).await.unwrap();
    bus.provision(&topic, &other).await.unwrap();
    assert!(!committed(&fixture, &group, &topic).await.unwrap().is_empty());
    assert!(!committed(&fixture, &format!("{group}.dlq"), &dlq)
        .await
        .unwrap()
        .is_empty());

    bus.remove_group(&topic, &group).await.expect("removed");

    assert_eq!(
        committed(&fixture, &group, &topic).await,
        Some(Vec::new()),
        "the group's offsets on the topic"
    );
    // tansu 0.6 may answer metadata for a deleted topic until its next
    // refresh; either answer says there is nothing left.
    assert!(
        committed(&fixture, &format!("{group}.dlq"), &dlq)
            .await
            .is_none_or(|p| p.is_empty()),
        "the DLQ readers' offsets, with their topic"
    );
    assert!(
        !committed(&fixture, &other, &topic).await.unwrap().is_empty(),
        "the other group keeps its offsets"
    );
    bus.remove_group(&topic, &group)
        .await
        .expect("removing a removed group is fine");
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_reads_another_topic_too_is_refused_and_kept() {
    let fixture = KafkaFixture::new().await;
    let bus = fixture.connect().await;
    let (topic, elsewhere, group) = (unique("rm-a"), unique("rm-b"), unique("g"));
    bus.provision(&topic, &group).await.unwrap();
    bus.provision(&elsewhere, &group).await.unwrap();

    let refused = bus
        .remove_group(&topic, &group)
        .await
        .expect_err("Kafka would delete the group on the other topic too");
    assert_eq!(refused.kind(), SubscribeErrorKind::Topology);
    let why = busline_core::ErrorChain(&refused).to_string();
    assert!(why.contains(&elsewhere), "names the other topic: {why}");
    assert!(
        !committed(&fixture, &group, &topic).await.unwrap().is_empty(),
        "left as it was"
    );
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_cluster_cannot_remove_groups() {
    let fixture = KafkaFixture::mock(1);
    let bus = fixture.connect().await;
    let refused = bus.remove_group(&unique("rm"), &unique("g")).await.unwrap_err();
    assert_eq!(refused.kind(), SubscribeErrorKind::Unsupported);
    bus.shutdown().await;
}
