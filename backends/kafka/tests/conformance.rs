//! The whole conformance suite against a real Kafka-protocol broker
//! (`BUSLINE_TEST_KAFKA_URL`, else 127.0.0.1:9092: tansu in CI). The mock
//! cluster runs it again in `tests/mock_conformance.rs`; scenario 15 runs
//! apart, in `tests/restart.rs`.

mod common;

use common::KafkaFixture;

busline_testkit::conformance_suite!(KafkaFixture::new().await);

// Scenario 22 runs here by name: librdkafka's mock cluster, which runs the
// suite too, has no ListGroups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s22_list_topics_and_groups() {
    busline_testkit::scenarios::list_topics_and_groups(&KafkaFixture::new().await).await;
}
