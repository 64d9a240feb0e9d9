//! The whole conformance suite against a real RabbitMQ (the env URL or
//! 127.0.0.1:5672). Scenario 15 (broker restart) is in `restart.rs`, run
//! apart.

mod common;

busline_testkit::conformance_suite!(common::RabbitFixture::new().await);
