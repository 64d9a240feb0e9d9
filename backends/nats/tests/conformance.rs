//! The whole conformance suite against a real NATS server with JetStream
//! (`BUSLINE_TEST_NATS_URL`, else 127.0.0.1:4222). Scenario 15 (broker
//! restart) runs apart, in `tests/restart.rs`.

mod common;

use common::NatsFixture;

busline_testkit::conformance_suite!(NatsFixture::new().await);
