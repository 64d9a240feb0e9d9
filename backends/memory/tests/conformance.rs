//! The whole conformance suite on the memory backend, with tokio's clock
//! paused: retry delays and timeouts cost no wall time. Scenario 15 (broker
//! restart) does not apply: the memory broker lives and dies with the process.

busline_testkit::conformance_suite!(busline_testkit::MemoryFixture::new(), paused_time);

// Scenario 18: every poison of "Untrusted wire input", written in wire form.
busline_testkit::hostile_input_suite!(busline_testkit::MemoryFixture::new(), paused_time);

// Scenario 22 (listing topics and groups) is run by name by each backend.
#[tokio::test(start_paused = true)]
async fn s22_list_topics_and_groups() {
    busline_testkit::scenarios::list_topics_and_groups(&busline_testkit::MemoryFixture::new()).await;
}
