//! Scenario 19 on a 3-node NATS cluster with JetStream (`.ci/nats-cluster.sh`,
//! streams with 3 replicas): the stream's leader is killed with SIGKILL
//! mid-stream and revived later. In the serial step (the binary's name
//! starts with `restart`), because it kills processes the other tests do not
//! expect to die; skipped, saying so, when `BUSLINE_TEST_NATS_CLUSTER_URL`
//! and `BUSLINE_TEST_NATS_CLUSTER` are unset.

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s19_cluster_member_killed_mid_stream() {
    let Some(fixture) = common::NatsFixture::cluster() else {
        eprintln!("SKIPPED s19 on nats: BUSLINE_TEST_NATS_CLUSTER_URL / BUSLINE_TEST_NATS_CLUSTER unset");
        return;
    };
    // The scenario asserts what it measures; `None` would mean the fixture
    // did not kill anything.
    busline_testkit::scenarios::cluster_member_killed_mid_stream(&fixture)
        .await
        .expect("the cluster fixture kills its leader");
}
