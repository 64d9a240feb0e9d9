//! The whole conformance suite against a real Kafka-protocol broker
//! (`BUSLINE_TEST_KAFKA_URL`, else 127.0.0.1:9092: tansu in CI). The mock
//! cluster runs it again in `tests/mock_conformance.rs`; scenario 15 runs
//! apart, in `tests/restart.rs`.

mod common;

use common::KafkaFixture;

busline_testkit::conformance_suite!(KafkaFixture::new().await);
