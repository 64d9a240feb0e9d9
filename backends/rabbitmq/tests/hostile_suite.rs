//! Scenario 18 (hostile input) against the real RabbitMQ: every poison of
//! the testkit, written below busline by the fixture's writer. That writer
//! is lapin, which cannot write a header name that is not UTF-8 (AMQP short
//! strings are `String`s there); those two poisons are refused by the writer
//! until a raw AMQP writer is in. lapin's field table keeps one value per
//! key, so a duplicate `id` arrives as one (the last): a valid event.

mod common;

use busline_testkit::scenarios::{HostileOutcome, Poison};
use busline_testkit::Declared;

const LAPIN: &str = "lapin writes only UTF-8 header names";

busline_testkit::hostile_input_suite!(Declared::new(common::RabbitFixture::new().await)
    .with(Poison::ForeignNameNotUtf8, HostileOutcome::Refused(LAPIN))
    .with(Poison::AttributeNameNotUtf8, HostileOutcome::Refused(LAPIN))
    .with(Poison::DuplicateId, HostileOutcome::Handled));
