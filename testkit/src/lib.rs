//! busline-testkit: the conformance suite every backend is held to, a
//! [`TestHarness`] for users' unit tests on the memory bus, and broker
//! fixtures for integration tests.
//!
//! A backend crate runs the whole suite with one macro call:
//!
//! ```ignore
//! busline_testkit::conformance_suite!(busline_testkit::MemoryFixture::new(), paused_time);
//! ```

#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod bench;
pub mod brokers;
pub mod events;
mod fixture;
mod harness;
pub mod logs;
pub mod proxy;
pub mod scenarios;
pub mod support;
pub mod tls;

pub use fixture::{test_settings, BusFixture, Declared, MemoryFixture, WireInput};
pub use harness::{DeadLettered, TestHarness};

/// Expands into one `#[tokio::test]` per conformance scenario for a fixture
/// expression (evaluated once per test).
///
/// `paused_time` runs each test on a current-thread runtime with tokio's
/// clock paused, so retry delays and timeouts take no wall time: only for
/// backends that do no real I/O (the memory bus). Without it, tests run on a
/// two-worker runtime in real time. The crate using the macro needs `tokio`
/// (with `macros` and `rt-multi-thread`) as a dev-dependency.
#[macro_export]
macro_rules! conformance_suite {
    ($fixture:expr, paused_time) => {
        $crate::conformance_suite!(@each $fixture, (start_paused = true));
    };
    ($fixture:expr) => {
        $crate::conformance_suite!(@each $fixture, (flavor = "multi_thread", worker_threads = 2));
    };
    (@each $fixture:expr, $rt:tt) => {
        $crate::conformance_suite!(@tests $fixture, $rt,
            s01_envelope_round_trip => envelope_round_trip,
            s01_structured_mode_round_trip => structured_mode_round_trip,
            s02_concurrent_publishers_and_consumers => concurrent_publishers_and_consumers,
            s03_topics_are_isolated => topics_are_isolated,
            s04_groups_fan_out_and_members_share => groups_fan_out_and_members_share,
            s05_nack_redelivers_with_delay => nack_redelivers_with_delay,
            s06_dead_letter_after_max_attempts => dead_letter_after_max_attempts,
            s07_permanent_error_and_poison_go_to_dlq => permanent_error_and_poison_go_to_dlq,
            s08_panic_and_timeout_are_retried => panic_and_timeout_are_retried,
            s09_unacked_deliveries_survive_consumer_restart => unacked_deliveries_survive_consumer_restart,
            s10_order_per_key => order_per_key,
            s11_typed_routing_and_versions => typed_routing_and_versions,
            s12_correlation_and_causation => correlation_and_causation,
            s13_graceful_shutdown => graceful_shutdown,
            s14_publisher_closed_with_events_in_flight => publisher_closed_with_events_in_flight,
            s16_dlq_replay => dlq_replay,
            s17_provisioned_group_keeps_events => provisioned_group_keeps_events,
            s20_remove_group_deletes_its_events => remove_group_deletes_its_events,
            s21_browse_dead_letters_and_settle_each => browse_dead_letters_and_settle_each,
        );
    };
    (@tests $fixture:expr, $rt:tt, $($name:ident => $scenario:ident,)*) => {
        $(
            #[tokio::test $rt]
            async fn $name() {
                let fixture = $fixture;
                $crate::scenarios::$scenario(&fixture).await;
            }
        )*
    };
}

/// Expands into one test per hostile-input poison (scenario 18,
/// [`scenarios::Poison`]) for a fixture expression; `paused_time` as for
/// [`conformance_suite!`].
#[macro_export]
macro_rules! hostile_input_suite {
    ($fixture:expr, paused_time) => {
        $crate::hostile_input_suite!(@each $fixture, (start_paused = true));
    };
    ($fixture:expr) => {
        $crate::hostile_input_suite!(@each $fixture, (flavor = "multi_thread", worker_threads = 2));
    };
    (@each $fixture:expr, $rt:tt) => {
        $crate::hostile_input_suite!(@tests $fixture, $rt,
            h01_foreign_header_name_not_utf8 => ForeignNameNotUtf8,
            h02_foreign_header_value_not_utf8 => ForeignValueNotUtf8,
            h03_attribute_name_not_utf8 => AttributeNameNotUtf8,
            h04_attribute_value_not_utf8 => AttributeValueNotUtf8,
            h05_attribute_name_not_ascii => AttributeNameNotAscii,
            h06_missing_id => MissingId,
            h07_duplicate_id => DuplicateId,
            h08_wrong_specversion => WrongSpecVersion,
            h09_unknown_content_type => UnknownContentType,
            h10_malformed_content_type => MalformedContentType,
            h11_time_out_of_range => TimeOutOfRange,
            h12_large_header => LargeHeader,
            h13_structured_mode => StructuredValid,
            h14_structured_mode_malformed => StructuredMalformed,
            h15_deeply_nested_payload => DeepNesting,
            h16_body_above_producer_limits => LargeBody,
            h17_undecodable_body_above_producer_limits => LargeUndecodableBody,
        );
    };
    (@tests $fixture:expr, $rt:tt, $($name:ident => $poison:ident,)*) => {
        $(
            #[tokio::test $rt]
            async fn $name() {
                let fixture = $fixture;
                $crate::scenarios::hostile_input(&fixture, $crate::scenarios::Poison::$poison).await;
            }
        )*
    };
}

/// Expands into the cluster-failover scenario (19) for a fixture whose
/// broker is a cluster it controls; run it one at a time, apart from the
/// parallel suite, like the restart scenario.
#[macro_export]
macro_rules! cluster_failover_suite {
    ($fixture:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn s19_cluster_member_killed_mid_stream() {
            let fixture = $fixture;
            let _ = $crate::scenarios::cluster_member_killed_mid_stream(&fixture).await;
        }
    };
}

/// Expands into the broker-restart scenario (15) for a fixture; run these
/// tests one at a time, apart from the parallel suite.
#[macro_export]
macro_rules! broker_restart_suite {
    ($fixture:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn s15_broker_restart_loses_no_confirmed_event() {
            let fixture = $fixture;
            $crate::scenarios::broker_restart_loses_no_confirmed_event(&fixture).await;
        }
    };
}
