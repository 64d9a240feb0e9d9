//! The whole conformance suite against librdkafka's in-process mock
//! cluster (3 brokers, a fresh cluster per test).

mod common;

use common::KafkaFixture;

busline_testkit::conformance_suite!(KafkaFixture::mock(3));
