//! The whole conformance suite against a real NATS server with JetStream
//! (`BUSLINE_TEST_NATS_URL`, else 127.0.0.1:4222). Scenario 15 (broker
//! restart) runs apart, in `tests/restart.rs`.

mod common;

use common::NatsFixture;

busline_testkit::conformance_suite!(NatsFixture::new().await);

// Scenario 22 runs here by name: librdkafka's mock cluster, which runs the
// suite too, has no ListGroups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s22_list_topics_and_groups() {
    busline_testkit::scenarios::list_topics_and_groups(&NatsFixture::new().await).await;
}
