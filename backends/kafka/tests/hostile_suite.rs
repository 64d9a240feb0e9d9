//! Scenario 18 (hostile input): every poison of the testkit, written below
//! busline by the fixture's raw writer (librdkafka's C API), on the real
//! broker (tansu in CI) and on the mock cluster.

mod common;

use busline_testkit::scenarios::{HostileOutcome, Poison};
use busline_testkit::Declared;

/// The 2 MiB undecodable body is read (the foreign producer raised its
/// limit), but its dead letter is above busline's own producer limit
/// (`message.max.bytes` 1,000,000): it is written as a letter that fits.
fn declared(fixture: common::KafkaFixture) -> Declared<common::KafkaFixture> {
    Declared::new(fixture).with(
        Poison::LargeUndecodableBody,
        HostileOutcome::DeadLettered("too_large"),
    )
}

mod broker {
    busline_testkit::hostile_input_suite!(super::declared(super::common::KafkaFixture::new().await));
}

mod mock {
    busline_testkit::hostile_input_suite!(super::declared(super::common::KafkaFixture::mock(1)));
}
