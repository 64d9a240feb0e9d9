//! Scenario 18 (hostile input) against the real RabbitMQ: every poison of
//! the testkit, written below busline by the fixture's raw AMQP client
//! (`common::raw`), byte for byte.
//!
//! A header name that is not UTF-8 is an AMQP short string lapin cannot
//! parse: the consumer's connection drops at each delivery of it, and the
//! quorum group queue (the default) moves it into
//! `<topic>::<group>::unparseable` at its delivery limit (the crate's
//! tests/unparseable.rs checks it lands there, and classic queues). lapin
//! reads a header table into a map, so a duplicate `id` arrives as one
//! (the last): a valid event.

mod common;

use busline_testkit::scenarios::{HostileOutcome, Poison};
use busline_testkit::Declared;

busline_testkit::hostile_input_suite!(Declared::new(common::RabbitFixture::new().await)
    .with(Poison::ForeignNameNotUtf8, HostileOutcome::MovedAside)
    .with(Poison::AttributeNameNotUtf8, HostileOutcome::MovedAside)
    .with(Poison::DuplicateId, HostileOutcome::Handled));
