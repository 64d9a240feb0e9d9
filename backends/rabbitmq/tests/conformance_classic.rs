//! The whole conformance suite on classic group queues (the default is
//! quorum): `queue_type = "classic"` stays a first-class choice.

mod common;

busline_testkit::conformance_suite!(common::RabbitFixture::classic().await);
