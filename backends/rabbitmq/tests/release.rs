//! `release` (shutdown's abandon) does not count as an attempt on either
//! queue type (issue 10, #10): the event comes back as a copy with the same
//! attempt number. A broker requeue would come back marked redelivered (an
//! attempt), and a quorum queue counts every requeue in `x-delivery-count`
//! (seen on 3.10: 0, 1, 2 over two `basic.nack(requeue)`), so a release by
//! requeue would also use up its `x-delivery-limit`. Scenario 13 of the
//! conformance suite checks the router's side.

mod common;

use busline_core::{Bus, SubscribeOptions};
use busline_rabbitmq::{QueueType, RabbitConfig};
use busline_testkit::events::Ping;
use busline_testkit::test_settings;
use common::{next, unique, RabbitFixture};

async fn releases_keep_the_attempt(queue_type: QueueType) {
    let fixture = RabbitFixture::new().await;
    let config = RabbitConfig {
        queue_type,
        ..RabbitConfig::default()
    };
    let bus = Bus::new(fixture.rabbit(&unique("release"), config).await, test_settings());
    assert!(bus.capabilities().release_keeps_attempt);
    let (topic, group) = (unique("release"), unique("g"));
    let mut sub = bus
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .unwrap();
    let id = bus.publish(&topic, Ping::new(1)).await.unwrap();
    for round in 1..=3 {
        let d = next(&mut sub, "the released event").await;
        assert_eq!(
            (d.event().unwrap().id.as_str(), d.attempt()),
            (id.as_str(), 1),
            "after {} releases",
            round - 1
        );
        d.into_parts().1.release().await.unwrap();
    }
    // Dropped undecided, it is requeued by the broker: that is an attempt.
    drop(next(&mut sub, "the released event").await);
    let d = next(&mut sub, "the requeued event").await;
    assert_eq!(d.attempt(), 2, "a broker requeue counts");
    d.ack().await.unwrap();
    drop(sub);
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_keeps_the_attempt_on_classic_queues() {
    releases_keep_the_attempt(QueueType::Classic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_keeps_the_attempt_on_quorum_queues() {
    releases_keep_the_attempt(QueueType::Quorum).await;
}
