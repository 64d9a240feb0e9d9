//! Commit safety: with concurrent handling and acks out of order, a member
//! never commits past an event that is not acked. A consumer acks in
//! reverse order and keeps some deliveries undecided; the group's committed
//! offsets never pass an unacked record; the consumer is shut down
//! without deciding them (as if killed), and a new consumer gets every
//! event that was not acked again. Runs on the real broker (tansu in CI)
//! and on the mock cluster.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use busline_core::{Bus, Delivery, DomainEvent, SubscribeOptions};
use busline_testkit::events::Ping;
use busline_testkit::support::{unique, within, WAIT};
use busline_testkit::BusFixture;
use common::KafkaFixture;
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};

const N: u64 = 300;

fn seq_of(bus: &Bus, d: &Delivery) -> u64 {
    let raw = d.event().expect("a readable envelope");
    bus.codecs()
        .decode::<Ping>(raw.content_type(), &raw.data.bytes)
        .unwrap()
        .seq
}

/// Where each event landed: seq -> (partition, offset), read back with a
/// plain consumer.
async fn locate(fixture: &KafkaFixture, topic: &str, partitions: i32) -> HashMap<u64, (i32, i64)> {
    let consumer: BaseConsumer = fixture
        .plain_config()
        .set("group.id", unique("plain"))
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    tokio::task::spawn_blocking(move || {
        let mut found = HashMap::new();
        let deadline = std::time::Instant::now() + WAIT;
        while (found.len() as u64) < N {
            assert!(
                std::time::Instant::now() < deadline,
                "read back {} of {N}",
                found.len()
            );
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                let m = m.unwrap();
                let ping: Ping = serde_json::from_slice(m.payload().unwrap()).unwrap();
                found.insert(ping.seq, (m.partition(), m.offset()));
            }
        }
        found
    })
    .await
    .unwrap()
}

/// The group's committed offsets on `topic`.
async fn committed(fixture: &KafkaFixture, topic: &str, group: &str, partitions: i32) -> HashMap<i32, i64> {
    let mut config = fixture.plain_config();
    config.set("group.id", group);
    let consumer: BaseConsumer = config.create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    tokio::task::spawn_blocking(move || {
        let c = consumer.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
        c.elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect()
    })
    .await
    .unwrap()
}

/// Every record below a committed offset was acked.
fn assert_commits_safe(
    commits: &HashMap<i32, i64>,
    located: &HashMap<u64, (i32, i64)>,
    acked: &BTreeSet<u64>,
) {
    for (seq, (p, o)) in located {
        if let Some(c) = commits.get(p) {
            assert!(
                *o >= *c || acked.contains(seq),
                "partition {p} committed at {c}, past event {seq} at offset {o}, which was not acked"
            );
        }
    }
}

async fn out_of_order_acks_never_commit_past_an_undecided_event(mut fixture: KafkaFixture) {
    fixture.kafka.drain_timeout = Duration::from_millis(500);
    let partitions = fixture.kafka.partitions;
    let publisher = fixture.connect().await;
    let (topic, group) = (unique("commit"), unique("g"));
    publisher.provision(&topic, &group).await.unwrap();
    let events: Vec<_> = (0..N)
        .map(|seq| {
            let e = DomainEvent::new(Ping::new(seq));
            if seq.is_multiple_of(3) {
                e
            } else {
                e.with_key(format!("k{}", seq % 10))
            }
        })
        .collect();
    publisher.publish_batch(&topic, events).await.unwrap();
    let located = locate(&fixture, &topic, partitions).await;

    let first = fixture.connect().await;
    let mut sub = first
        .subscribe(&topic, &group, SubscribeOptions::default().max_in_flight(16))
        .await
        .unwrap();
    let mut acked = BTreeSet::new();

    // First the head of the stream, acked in reverse order: commits move.
    let mut first_batch = Vec::new();
    for _ in 0..16 {
        first_batch.push(
            within(WAIT, "the first deliveries", sub.next())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    for d in first_batch.into_iter().rev() {
        acked.insert(seq_of(&first, &d));
        d.ack().await.unwrap();
    }
    let after_head = within(WAIT, "a commit after the first acks", async {
        loop {
            let commits = committed(&fixture, &topic, &group, partitions).await;
            assert_commits_safe(&commits, &located, &acked);
            let moved = located
                .iter()
                .any(|(seq, (p, o))| acked.contains(seq) && commits.get(p).is_some_and(|c| c > o));
            if moved {
                break commits;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    // Then batches of 8 acked in reverse order, every fifth event left
    // undecided (which also blocks its key).
    let mut held = Vec::new();
    let mut batch = Vec::new();
    let mut received = 16;
    while received < 200 {
        let Ok(Some(next)) = tokio::time::timeout(Duration::from_secs(3), sub.next()).await else {
            break;
        };
        received += 1;
        batch.push(next.unwrap());
        if batch.len() == 8 {
            for d in batch.drain(..).rev() {
                let seq = seq_of(&first, &d);
                if seq.is_multiple_of(5) {
                    held.push(d);
                } else {
                    d.ack().await.unwrap();
                    acked.insert(seq);
                }
            }
        }
    }
    held.append(&mut batch);
    assert!(acked.len() > 20, "acked only {}", acked.len());
    assert!(!held.is_empty());

    // Commits made meanwhile never pass an unacked event: watch them for
    // a few commit intervals.
    let watch_until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < watch_until {
        let commits = committed(&fixture, &topic, &group, partitions).await;
        assert_commits_safe(&commits, &located, &acked);
        if commits != after_head {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // "Killed": shut down with deliveries still undecided.
    drop(sub);
    first.shutdown().await;
    drop(held);
    let commits = committed(&fixture, &topic, &group, partitions).await;
    assert_commits_safe(&commits, &located, &acked);

    let second = fixture.connect().await;
    let mut sub = second
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .unwrap();
    let expected: BTreeSet<u64> = (0..N).filter(|s| !acked.contains(s)).collect();
    let mut got = BTreeSet::new();
    let complete = tokio::time::timeout(WAIT, async {
        while !expected.is_subset(&got) {
            let d = sub.next().await.unwrap().unwrap();
            got.insert(seq_of(&second, &d));
            d.ack().await.unwrap();
        }
    })
    .await;
    if complete.is_err() {
        let missing: Vec<_> = expected.difference(&got).map(|s| (s, located[s])).collect();
        panic!(
            "events not acked before the kill were not delivered again: {missing:?}; commits at the kill {commits:?}"
        );
    }
    second.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_out_of_order_acks_never_commit_past_an_undecided_event() {
    out_of_order_acks_never_commit_past_an_undecided_event(KafkaFixture::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_out_of_order_acks_never_commit_past_an_undecided_event() {
    out_of_order_acks_never_commit_past_an_undecided_event(KafkaFixture::mock(3)).await;
}

/// A broker that refuses offset commits: each failure is counted (and
/// logged at WARN), and once the broker takes commits again the member
/// sends the refused offsets again, with no further acks to prompt it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_refused_commits_are_counted_and_sent_again() {
    let fixture = KafkaFixture::mock(1);
    let partitions = fixture.kafka.partitions;
    let kafka = fixture.connect_kafka().await;
    let bus = Bus::new(kafka.clone(), busline_testkit::test_settings());
    let (topic, group) = (unique("commitfail"), unique("g"));
    let mut sub = bus
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .unwrap();
    let mock = fixture.mock_cluster().unwrap();
    mock.request_errors(
        RDKafkaApiKey::OffsetCommit,
        vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE; 1_000],
    )
    .unwrap();
    let n = 10u64;
    let events = (0..n).map(|seq| DomainEvent::new(Ping::new(seq))).collect();
    bus.publish_batch(&topic, events).await.unwrap();
    for _ in 0..n {
        let d = within(WAIT, "a delivery", sub.next()).await.unwrap().unwrap();
        d.ack().await.unwrap();
    }
    busline_testkit::support::eventually(WAIT, "a counted commit failure", || kafka.commit_failures() > 0)
        .await;
    assert!(
        committed(&fixture, &topic, &group, partitions)
            .await
            .values()
            .sum::<i64>()
            < n as i64,
        "the broker refused the commits"
    );

    mock.clear_request_errors(RDKafkaApiKey::OffsetCommit).unwrap();
    within(WAIT, "the refused offsets committed after all", async {
        while committed(&fixture, &topic, &group, partitions)
            .await
            .values()
            .sum::<i64>()
            < n as i64
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    drop(sub);
    bus.shutdown().await;
}

/// A subscription dropped while its deliveries are still being settled,
/// and at once a new subscription of the same group on the same
/// connection (a router restarted in place): the new member joins only
/// once the leaving one has committed what it acked and closed, so nothing
/// acked before the drop is delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_a_new_member_joins_after_the_leaving_member_of_its_group_committed() {
    const EVENTS: u64 = 20;
    let fixture = KafkaFixture::mock(3);
    let kafka = fixture.connect_kafka().await;
    let bus = Bus::new(kafka.clone(), busline_testkit::test_settings());
    let (topic, group) = (unique("rejoin"), unique("g"));
    bus.provision(&topic, &group).await.unwrap();
    let events = (0..EVENTS).map(|seq| DomainEvent::new(Ping::new(seq))).collect();
    bus.publish_batch(&topic, events).await.unwrap();
    let options = SubscribeOptions::default().max_in_flight(EVENTS as usize);
    let mut first = bus.subscribe(&topic, &group, options).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..EVENTS {
        held.push(
            within(WAIT, "the first member's deliveries", first.next())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    // The member leaves and waits for its deliveries in flight.
    drop(first);
    let mut joining = tokio::spawn({
        let (bus, topic, group) = (bus.clone(), topic.clone(), group.clone());
        async move { bus.subscribe(&topic, &group, options).await }
    });
    // Held this long, the deliveries give a join that does not wait for the
    // leaving member the time to reach the broker and start a rebalance:
    // the mock then refuses the leaving member's commits for the whole
    // join phase (about 9 s), and its revocation voids its later acks. A
    // join that waits cannot finish meanwhile.
    let early = tokio::time::timeout(Duration::from_secs(3), &mut joining).await;
    for d in held {
        d.ack().await.unwrap();
    }
    let joined = match early {
        Ok(joined) => joined,
        Err(_) => within(WAIT, "the second member to join", joining).await,
    };
    let mut second = joined.expect("the join task does not panic").unwrap();
    bus.publish(&topic, Ping::new(EVENTS)).await.unwrap();
    let mut again = Vec::new();
    loop {
        let d = within(WAIT, "the event published after the rejoin", second.next())
            .await
            .unwrap()
            .unwrap();
        let seq = seq_of(&bus, &d);
        d.ack().await.unwrap();
        if seq == EVENTS {
            break;
        }
        again.push(seq);
    }
    assert!(
        again.is_empty(),
        "events acked before the first subscription was dropped came again: {again:?} ({} commit failures)",
        kafka.commit_failures()
    );
    drop(second);
    bus.shutdown().await;
}
