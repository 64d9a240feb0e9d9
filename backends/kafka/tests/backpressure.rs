//! Backpressure: a member that buffers more than `max_buffered` records
//! pauses fetching and resumes later without losing or skipping anything.
//! Runs on the real broker (tansu in CI) and on the mock cluster.

mod common;

use std::collections::BTreeSet;

use busline_core::{DomainEvent, StartFrom, SubscribeOptions};
use busline_testkit::events::Ping;
use busline_testkit::support::{unique, within, WAIT};
use busline_testkit::BusFixture;
use common::KafkaFixture;
use futures::StreamExt;

const N: u64 = 3_000;

async fn a_paused_member_resumes_without_gaps(mut fixture: KafkaFixture) {
    fixture.kafka.max_buffered = 100;
    let bus = fixture.connect().await;
    let (topic, group) = (unique("backpressure"), unique("g"));
    for chunk in 0..N / 500 {
        let batch = (chunk * 500..(chunk + 1) * 500)
            .map(|seq| DomainEvent::new(Ping::new(seq)))
            .collect();
        bus.publish_batch(&topic, batch).await.unwrap();
    }
    let mut sub = bus
        .subscribe(
            &topic,
            &group,
            SubscribeOptions::default()
                .max_in_flight(8)
                .start_from(StartFrom::Earliest),
        )
        .await
        .unwrap();
    let mut got = BTreeSet::new();
    within(WAIT, "every event through a paused and resumed member", async {
        while (got.len() as u64) < N {
            let d = sub.next().await.unwrap().unwrap();
            let raw = d.event().unwrap();
            let ping: Ping = bus.codecs().decode(raw.content_type(), &raw.data.bytes).unwrap();
            got.insert(ping.seq);
            // Slower than fetching, so the buffer fills up.
            tokio::task::yield_now().await;
            d.ack().await.unwrap();
        }
    })
    .await;
    assert_eq!(got, (0..N).collect());
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_a_paused_member_resumes_without_gaps() {
    a_paused_member_resumes_without_gaps(KafkaFixture::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_a_paused_member_resumes_without_gaps() {
    a_paused_member_resumes_without_gaps(KafkaFixture::mock(3)).await;
}
