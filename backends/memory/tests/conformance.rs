//! The whole conformance suite on the memory backend, with tokio's clock
//! paused: retry delays and timeouts cost no wall time. Scenario 15 (broker
//! restart) does not apply: the memory broker lives and dies with the process.

busline_testkit::conformance_suite!(busline_testkit::MemoryFixture::new(), paused_time);

// Scenario 18: every poison of "Untrusted wire input", written in wire form.
busline_testkit::hostile_input_suite!(busline_testkit::MemoryFixture::new(), paused_time);
