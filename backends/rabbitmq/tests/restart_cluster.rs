//! Scenario 19 on a 3-node RabbitMQ cluster (`.ci/rabbitmq-cluster.sh`,
//! quorum group queues): the node leading the group's queue is killed with
//! SIGKILL mid-stream and revived later, while busline's connections fail
//! over to the other seeds. In the serial step (the binary's name starts
//! with `restart`), because it kills processes the other tests do not
//! expect to die; skipped, saying so, when `BUSLINE_TEST_AMQP_CLUSTER_URL`
//! and `BUSLINE_TEST_AMQP_CLUSTER` are unset.

mod common;

use busline_testkit::BusFixture;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s19_cluster_member_killed_mid_stream() {
    let Some(fixture) = common::RabbitFixture::cluster() else {
        eprintln!("SKIPPED s19 on rabbitmq: BUSLINE_TEST_AMQP_CLUSTER_URL / BUSLINE_TEST_AMQP_CLUSTER unset");
        return;
    };
    let failover = busline_testkit::scenarios::cluster_member_killed_mid_stream(&fixture)
        .await
        .expect("the cluster fixture kills its leader");
    assert_eq!(failover.confirmed, fixture.restart_stream_len());
}
