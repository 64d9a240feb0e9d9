//! Scenario 18 (hostile input): every poison of the testkit, written below
//! busline by the fixture's raw writer (librdkafka's C API), on the real
//! broker (tansu in CI) and on the mock cluster.

mod common;

mod broker {
    busline_testkit::hostile_input_suite!(super::common::KafkaFixture::new().await);
}

mod mock {
    busline_testkit::hostile_input_suite!(super::common::KafkaFixture::mock(1));
}
