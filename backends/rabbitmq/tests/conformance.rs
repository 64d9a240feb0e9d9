//! The whole conformance suite against a real RabbitMQ (the env URL or
//! 127.0.0.1:5672). Scenario 15 (broker restart) is in `restart.rs`, run
//! apart.

mod common;

busline_testkit::conformance_suite!(common::RabbitFixture::new().await);

// Scenario 22 runs here by name: librdkafka's mock cluster, which runs the
// suite too, has no ListGroups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s22_list_topics_and_groups() {
    busline_testkit::scenarios::list_topics_and_groups(&common::RabbitFixture::new().await).await;
}
