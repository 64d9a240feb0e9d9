//! Plain rdkafka clients where a test needs what busline does not do: a
//! record on a chosen partition, an offset committed from outside the
//! group.

use busline_testkit::support::WAIT;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::KafkaFixture;

/// Writes ping `seq` to `partition` of `topic` as a CloudEvent, with a
/// plain producer (busline's publisher picks partitions by key).
pub async fn produce_ping(producer: &FutureProducer, topic: &str, partition: i32, seq: u64) {
    let id = format!("plain-{seq}");
    let mut headers = OwnedHeaders::new();
    for (name, value) in [
        ("ce_specversion", "1.0"),
        ("ce_id", id.as_str()),
        ("ce_type", "test.ping"),
        ("ce_source", "/plain/client"),
        ("ce_time", "2026-01-02T03:04:05.123Z"),
        ("content-type", "application/json"),
    ] {
        headers = headers.insert(Header {
            key: name,
            value: Some(value),
        });
    }
    let payload = format!(r#"{{"seq":{seq},"note":""}}"#);
    let record = FutureRecord::<(), _>::to(topic)
        .partition(partition)
        .payload(&payload)
        .headers(headers);
    let delivered = producer
        .send(record, WAIT)
        .await
        .map_err(|(e, _)| e)
        .expect("a plain produce");
    assert_eq!(delivered.partition, partition);
}

/// Commits `offset` on `partition` for `group`, from a client outside the
/// group (as an earlier consumer of the group would have).
pub async fn commit_offset(fixture: &KafkaFixture, topic: &str, group: &str, partition: i32, offset: i64) {
    let consumer: BaseConsumer = fixture
        .plain_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .unwrap();
    tokio::task::spawn_blocking(move || {
        consumer
            .commit(&tpl, CommitMode::Sync)
            .expect("a commit from outside the group");
    })
    .await
    .unwrap();
}
