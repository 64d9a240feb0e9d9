//! Listing topics and groups on a server that other programs use too:
//! streams and consumers made with async-nats directly, under names
//! busline's escaping never makes or over subjects it never captures, are
//! left out rather than shown as topics or groups under a wrong name.

mod common;

use std::time::Duration;

use async_nats::jetstream::{consumer, stream};
use busline_nats::{consumer_name, TopicNames};
use busline_testkit::support::{unique, within};
use busline_testkit::BusFixture;
use common::NatsFixture;

/// Every server call of these tests answers within this, or the test fails.
const CALL: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_consumers_busline_did_not_make_are_left_out() {
    let fixture = NatsFixture::new().await;
    let bus = fixture.connect().await;
    let js = async_nats::jetstream::new(fixture.raw().await);
    let topic = unique("inv-raw");
    let group = unique("g");
    bus.provision(&topic, &group).await.unwrap();

    // A stream whose name no escape makes (`_x` is no escape), one whose
    // name is a valid escape but that captures other subjects, and on the
    // topic's own stream a durable with a foreign name and an ephemeral.
    let foreign = format!("RAW_x{}", &unique("s")[2..]);
    let elsewhere = unique("inv-other");
    for (name, subjects) in [
        (foreign.clone(), vec![format!("{foreign}.>")]),
        (elsewhere.clone(), vec![format!("not-{elsewhere}.>")]),
    ] {
        within(
            CALL,
            "creating a raw stream",
            js.create_stream(stream::Config {
                name,
                subjects,
                ..Default::default()
            }),
        )
        .await
        .expect("a raw stream");
    }
    let names = TopicNames::of(&topic).unwrap();
    let own = within(CALL, "the topic's stream", js.get_stream(&names.stream))
        .await
        .unwrap();
    within(
        CALL,
        "a foreign durable",
        own.create_consumer(consumer::pull::Config {
            durable_name: Some("audit_zz".into()),
            ..Default::default()
        }),
    )
    .await
    .expect("a foreign durable");
    let _ephemeral = within(
        CALL,
        "an ephemeral consumer",
        own.create_consumer(consumer::pull::Config::default()),
    )
    .await
    .expect("an ephemeral consumer");

    let topics = within(CALL, "listing topics", bus.list_topics()).await.unwrap();
    let listed: Vec<&str> = topics.iter().map(|t| t.topic.as_str()).collect();
    assert!(listed.contains(&topic.as_str()), "{listed:?}");
    assert!(
        !listed.iter().any(|t| t.contains("RAW") || *t == elsewhere),
        "foreign streams are not topics: {listed:?}"
    );

    let groups = within(CALL, "listing groups", bus.list_groups(&topic))
        .await
        .unwrap();
    let names: Vec<&str> = groups.iter().map(|g| g.group.as_str()).collect();
    assert_eq!(names, vec![group.as_str()], "only busline's durable is a group");
    assert_eq!(consumer_name(&group).as_deref(), Some(group.as_str()));

    let not_ours = within(CALL, "listing a foreign stream", bus.list_groups(&elsewhere))
        .await
        .expect_err("a stream capturing other subjects is no busline topic");
    assert_eq!(
        not_ours.kind(),
        busline_core::InspectErrorKind::NotFound,
        "{not_ours}"
    );

    for name in [foreign, elsewhere] {
        let _ = within(CALL, "deleting a raw stream", js.delete_stream(name)).await;
    }
    bus.shutdown().await;
}
