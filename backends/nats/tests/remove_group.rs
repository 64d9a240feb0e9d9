//! `remove_group` as the server sees it: asked through async-nats directly,
//! not through busline, so a removal that only looks right from busline's
//! side (a cache, a stream skipped) does not pass.

mod common;

use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::Context;
use busline_core::{dead_letter_topic, SubscribeOptions};
use busline_nats::{consumer_name, TopicNames};
use busline_testkit::support::{unique, within};
use busline_testkit::BusFixture;
use common::NatsFixture;
use futures::StreamExt;

/// Every server call of these tests answers within this, or the test fails.
const CALL: Duration = Duration::from_secs(10);

fn stream_of(topic: &str) -> String {
    TopicNames::of(topic).unwrap().stream
}

/// `Ok` when `group`'s durable exists on `topic`'s stream, else why not.
async fn consumer(js: &Context, topic: &str, group: &str) -> Result<(), ConsumerInfoErrorKind> {
    let stream = js.get_stream_no_info(stream_of(topic)).await.unwrap();
    within(
        CALL,
        "consumer info",
        stream.consumer_info(consumer_name(group).unwrap()),
    )
    .await
    .map(drop)
    .map_err(|e| e.kind())
}

async fn stream_exists(js: &Context, topic: &str) -> bool {
    within(CALL, "stream info", js.get_stream(stream_of(topic)))
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_deletes_the_group_and_its_dlq_and_nothing_of_other_groups() {
    let fixture = NatsFixture::new().await;
    let bus = fixture.connect().await;
    let js = async_nats::jetstream::new(fixture.raw().await);
    let (topic, group, other) = (unique("rm"), unique("g"), unique("other"));
    let (dlq, other_dlq) = (
        dead_letter_topic(&topic, &group),
        dead_letter_topic(&topic, &other),
    );
    bus.provision(&topic, &group).await.unwrap();
    bus.provision(&topic, &other).await.unwrap();
    // What a member of the group reading its own dead letters declares.
    let dlq_of_dlq = dead_letter_topic(&dlq, &group);
    bus.provision(&dlq, &group).await.unwrap();
    assert_eq!(consumer(&js, &topic, &group).await, Ok(()));
    assert_eq!(consumer(&js, &dlq, &group).await, Ok(()));
    assert_eq!(consumer(&js, &dlq_of_dlq, &group).await, Ok(()));

    bus.remove_group(&topic, &group).await.unwrap();

    assert_eq!(
        consumer(&js, &topic, &group).await,
        Err(ConsumerInfoErrorKind::NotFound),
        "the group's durable on the topic's stream"
    );
    assert_eq!(
        consumer(&js, &dlq, &group).await,
        Err(ConsumerInfoErrorKind::StreamNotFound),
        "the group's DLQ stream, with its durable"
    );
    assert!(!stream_exists(&js, &dlq_of_dlq).await, "the DLQ of its DLQ");
    assert!(stream_exists(&js, &topic).await, "the topic's stream stays");
    assert_eq!(
        consumer(&js, &topic, &other).await,
        Ok(()),
        "the other group stays"
    );
    assert_eq!(
        consumer(&js, &other_dlq, &other).await,
        Ok(()),
        "the other group's DLQ stays"
    );

    bus.remove_group(&topic, &group)
        .await
        .expect("removing a removed group");
    bus.provision(&topic, &group).await.unwrap();
    assert_eq!(
        consumer(&js, &topic, &group).await,
        Ok(()),
        "provisioned again after removal"
    );
    assert_eq!(consumer(&js, &dlq, &group).await, Ok(()), "and its DLQ");
    for g in [&group, &other] {
        bus.remove_group(&topic, g).await.unwrap();
    }
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dlq_stream_someone_else_reads_is_kept() {
    let fixture = NatsFixture::new().await;
    let bus = fixture.connect().await;
    let js = async_nats::jetstream::new(fixture.raw().await);
    let (topic, group, reader) = (unique("rm"), unique("g"), unique("reader"));
    let dlq = dead_letter_topic(&topic, &group);
    bus.provision(&topic, &group).await.unwrap();
    // An operator's tool reading the group's dead letters.
    let stream = within(CALL, "DLQ stream", js.get_stream(stream_of(&dlq)))
        .await
        .unwrap();
    within(
        CALL,
        "create the reader",
        stream.create_consumer(pull::Config {
            durable_name: Some(reader.clone()),
            ..Default::default()
        }),
    )
    .await
    .unwrap();

    bus.remove_group(&topic, &group).await.unwrap();

    assert_eq!(
        consumer(&js, &topic, &group).await,
        Err(ConsumerInfoErrorKind::NotFound)
    );
    assert_eq!(
        consumer(&js, &dlq, &group).await,
        Err(ConsumerInfoErrorKind::NotFound),
        "the group's durable on its DLQ is gone"
    );
    assert_eq!(
        consumer(&js, &dlq, &reader).await,
        Ok(()),
        "the DLQ stream, read by another consumer, stays"
    );
    // The reader's stream is the test's to delete: the bus kept it on purpose.
    within(CALL, "delete the DLQ stream", js.delete_stream(stream_of(&dlq)))
        .await
        .unwrap();
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_of_the_removed_group_ends_and_does_not_bring_it_back() {
    let fixture = NatsFixture::new().await;
    let bus = fixture.connect().await;
    let js = async_nats::jetstream::new(fixture.raw().await);
    let (topic, group) = (unique("rm"), unique("g"));
    let mut sub = bus
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .unwrap();

    bus.remove_group(&topic, &group).await.unwrap();

    let end = within(CALL, "the member to see the removal", sub.next()).await;
    assert!(matches!(end, Some(Err(_))), "the member ends with an error");
    assert!(
        within(CALL, "the member to end", sub.next()).await.is_none(),
        "and then ends"
    );
    assert_eq!(
        consumer(&js, &topic, &group).await,
        Err(ConsumerInfoErrorKind::NotFound),
        "the member did not declare the group again"
    );
    bus.shutdown().await;
}
