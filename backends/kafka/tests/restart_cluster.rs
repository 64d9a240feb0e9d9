//! Scenario 19 on a 3-broker librdkafka mock cluster whose topics have
//! replication factor 3: the broker leading most of the topic's partitions
//! is taken down mid-stream (connections cut, none accepted), leadership
//! moves to surviving replicas, and the broker comes back later. In the
//! serial step (the binary's name starts with `restart`), with the other
//! broker-outage tests.

mod common;

use busline_testkit::BusFixture;
use common::KafkaFixture;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s19_cluster_member_killed_mid_stream() {
    let fixture = KafkaFixture::cluster();
    // Called directly rather than through `cluster_failover_suite!`, which
    // passes when the fixture kills nothing: this fixture always has a
    // cluster, so `None` is a failure here.
    let failover = busline_testkit::scenarios::cluster_member_killed_mid_stream(&fixture)
        .await
        .expect("the mock cluster fixture kills a leader");
    assert_eq!(failover.confirmed, fixture.restart_stream_len());
}
