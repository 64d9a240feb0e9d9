//! Scenario 15: brokers fail twice during a stream of 10,000 events and
//! every confirmed event is handled. tansu with memory storage loses its
//! data on restart, so the outages happen on a 3-broker mock cluster: a
//! broker is taken down (connections cut, none accepted) for 2 s and
//! brought back, a different one each time.

mod common;

use common::KafkaFixture;

busline_testkit::broker_restart_suite!(KafkaFixture::mock(3));
