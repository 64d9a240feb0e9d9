//! The conformance scenarios of DESIGN.md, each a public async function over
//! a [`BusFixture`](crate::BusFixture). [`conformance_suite!`](crate::conformance_suite)
//! turns them into one test each.

mod cluster;
mod delivery;
mod failure;
mod hostile;
mod inspect;
mod inventory;
mod lifecycle;
mod routing;

pub use cluster::{cluster_member_killed_mid_stream, Failover};
pub use delivery::{
    concurrent_publishers_and_consumers, envelope_round_trip, groups_fan_out_and_members_share,
    provisioned_group_keeps_events, structured_mode_round_trip, topics_are_isolated,
};
pub use failure::{
    dead_letter_after_max_attempts, nack_redelivers_with_delay, panic_and_timeout_are_retried,
    permanent_error_and_poison_go_to_dlq,
};
pub use hostile::{hostile_input, poison_message, HostileOutcome, Poison};
pub use inspect::browse_dead_letters_and_settle_each;
pub use inventory::list_topics_and_groups;
pub use lifecycle::{
    broker_restart_loses_no_confirmed_event, graceful_shutdown, publisher_closed_with_events_in_flight,
    remove_group_deletes_its_events, unacked_deliveries_survive_consumer_restart,
};
pub use routing::{correlation_and_causation, dlq_replay, order_per_key, typed_routing_and_versions};

use std::sync::Arc;

use busline_core::{
    dead_letter_topic, Bus, Delivery, DomainEvent, EnvelopeError, EventService, HandlerWithoutStateExt,
    RawEvent, SubscribeOptions, Subscription,
};
use futures::StreamExt;
use tokio::task::JoinHandle;

use crate::events::Ping;
use crate::support::{within, Collector, WAIT};

/// The next delivery of `sub`, within [`WAIT`].
pub(crate) async fn next_delivery(sub: &mut Subscription, what: &str) -> Delivery {
    within(WAIT, what, sub.next())
        .await
        .unwrap_or_else(|| panic!("subscription ended while waiting for {what}"))
        .unwrap_or_else(|e| {
            panic!(
                "subscription failed while waiting for {what}: {}",
                busline_core::ErrorChain(&e)
            )
        })
}

/// Reads a dead-letter topic in the background, acking what it reads.
pub(crate) struct DlqReader {
    pub(crate) letters: Arc<Collector<Result<RawEvent, EnvelopeError>>>,
    /// For each unreadable letter, what the backend kept of it as received.
    pub(crate) received: Arc<Collector<Option<busline_core::ReceivedMessage>>>,
    task: JoinHandle<()>,
}

impl DlqReader {
    /// Reads `<topic>.<group>.dlq` as `group`, the name other brokers
    /// declare a group's DLQ queue under. It is no member of the group's
    /// main subscriptions: Kafka reads a group's dead-letter topics in a
    /// consumer group of their own (`<group>.dlq`), so the reader joining
    /// does not rebalance them.
    pub(crate) async fn start(bus: &Bus, topic: &str, group: &str) -> Self {
        let mut sub = bus
            .subscribe(
                &dead_letter_topic(topic, group),
                group,
                SubscribeOptions::default(),
            )
            .await
            .expect("subscribe to the DLQ");
        let (letters, received) = (Collector::new(), Collector::new());
        let (sink, kept) = (letters.clone(), received.clone());
        let task = tokio::spawn(async move {
            while let Some(Ok(d)) = sub.next().await {
                if d.event().is_err() {
                    kept.push(d.received().cloned());
                }
                sink.push(d.event().cloned().map_err(Clone::clone));
                let _ = d.ack().await;
            }
        });
        Self {
            letters,
            received,
            task,
        }
    }
}

impl Drop for DlqReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A handler that records the sequence number of every ping it handles.
pub(crate) fn record_seqs(sink: &Arc<Collector<u64>>) -> impl EventService<Ping> {
    let sink = sink.clone();
    (move |e: DomainEvent<Ping>| async move { sink.push(e.data.seq) }).into_service()
}

/// Prints why a scenario does not apply to a backend.
pub(crate) fn skip(fixture: &str, scenario: &str, why: &str) {
    eprintln!("SKIPPED {scenario} on {fixture}: {why}");
}
