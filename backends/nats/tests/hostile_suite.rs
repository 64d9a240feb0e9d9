//! Scenario 18 (hostile input) against the real NATS server: every poison
//! of the testkit, written below busline by the fixture's raw socket writer.
//! async-nats drops the connection on a header that is not UTF-8; busline
//! moves such a message aside through JetStream's max-deliver advisory and
//! the stream message API (see tests/hostile.rs), which takes
//! max_deliver x ack_wait: the fixture's 5 s ack_wait keeps that in bounds.

mod common;

use busline_testkit::scenarios::{HostileOutcome, Poison};
use busline_testkit::Declared;

busline_testkit::hostile_input_suite!(Declared::new(common::NatsFixture::new().await)
    .with(Poison::ForeignNameNotUtf8, HostileOutcome::MovedAside)
    .with(Poison::ForeignValueNotUtf8, HostileOutcome::MovedAside)
    .with(Poison::AttributeNameNotUtf8, HostileOutcome::MovedAside)
    .with(Poison::AttributeValueNotUtf8, HostileOutcome::MovedAside)
    // async-nats refuses header names outside visible ASCII too; the
    // advisory task writes its letter (`unparseable_message`), not the router.
    .with(Poison::AttributeNameNotAscii, HostileOutcome::MovedAside)
    // The server's default max_payload is 1 MiB: it refuses a 2 MiB message
    // from any client ("Maximum Payload Violation"), so no such poison can
    // reach a consumer, and a dead letter is never larger than what was read.
    .with(Poison::LargeBody, HostileOutcome::Refused("max_payload"))
    .with(
        Poison::LargeUndecodableBody,
        HostileOutcome::Refused("max_payload")
    ));
