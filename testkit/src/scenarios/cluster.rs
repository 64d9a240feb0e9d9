//! Scenario 19: the cluster member that leads a topic's storage is killed
//! (SIGKILL) mid-stream and brought back later, while a publisher and a
//! router carry on against the other members.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use busline_core::{Context, DomainEvent, HandlerError, Router};

use super::skip;
use crate::events::Ping;
use crate::support::{unique, Collector};
use crate::BusFixture;

/// What one run of scenario 19 saw, printed by the scenario and returned
/// for a backend's own checks.
#[derive(Debug, Clone)]
pub struct Failover {
    /// The member that was killed.
    pub killed: String,
    /// Events published and confirmed.
    pub confirmed: u64,
    /// Deliveries handled more than once (at-least-once permits them).
    pub duplicates: u64,
    /// From the kill to the first confirmed publish after it.
    pub publish_recovery: Duration,
    /// From the kill to the first handled event that was published after
    /// it: how long consumption stood still.
    pub consume_recovery: Duration,
}

/// How long publishing or consuming may stand still after the kill before
/// the scenario fails. The README states the measured figures per broker.
pub(crate) const FAILOVER_BOUND: Duration = Duration::from_secs(60);

/// Scenario 19: `restart_stream_len` events published in batches of 100;
/// the leader of the topic's storage is killed at a third, brought back at
/// two thirds. Every confirmed event is handled, and both publishing and
/// consuming resume within 60 s (`FAILOVER_BOUND`) of the kill.
pub async fn cluster_member_killed_mid_stream(fixture: &dyn BusFixture) -> Option<Failover> {
    let n = fixture.restart_stream_len();
    let (topic, group) = (unique("failover"), unique("g"));
    let consumer = fixture.connect().await;
    let seen = Collector::<(u64, Instant)>::new();
    let sink = seen.clone();
    let router = Router::new(consumer.clone(), &group)
        .with_max_in_flight(64)
        .on(&topic, move |_ctx: Context, e: DomainEvent<Ping>| {
            let sink = Arc::clone(&sink);
            async move {
                sink.push((e.data.seq, Instant::now()));
                Ok::<_, HandlerError>(())
            }
        })
        .start()
        .await
        .unwrap();
    let publisher = fixture.connect().await;

    let mut confirmed = BTreeSet::new();
    let mut killed: Option<(String, Instant)> = None;
    let mut revived = false;
    let mut first_after_kill: Option<(u64, Instant)> = None;
    let mut seq = 0;
    while seq < n {
        if killed.is_none() && seq + 100 > n / 3 {
            match fixture.kill_leader(&topic, &group).await {
                None => {
                    skip(
                        fixture.name(),
                        "cluster_failover",
                        "the fixture has no cluster it controls",
                    );
                    router.shutdown().await.unwrap();
                    publisher.shutdown().await;
                    consumer.shutdown().await;
                    return None;
                }
                Some(Err(e)) => panic!("killing the leader on {}: {e}", fixture.name()),
                Some(Ok(member)) => {
                    eprintln!("{}: killed {member} at event {seq}", fixture.name());
                    killed = Some((member, Instant::now()));
                }
            }
        }
        if let Some((member, _)) = &killed {
            if !revived && seq + 100 > 2 * n / 3 {
                fixture
                    .revive_member(member)
                    .await
                    .unwrap_or_else(|e| panic!("reviving {member}: {e}"));
                revived = true;
            }
        }
        let batch: Vec<_> = (seq..(seq + 100).min(n))
            .map(|s| DomainEvent::new(Ping::new(s)))
            .collect();
        let len = batch.len() as u64;
        // A batch that fails during the election is published again: the
        // caller's retry, which at-least-once permits.
        let started = Instant::now();
        loop {
            match publisher.publish_batch(&topic, batch.clone()).await {
                Ok(()) => break,
                Err(e) if started.elapsed() < FAILOVER_BOUND => {
                    tracing::debug!(error = %busline_core::ErrorChain(&e), "publish failed during the failover; again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!(
                    "publishing on {} did not recover within {FAILOVER_BOUND:?}: {e}",
                    fixture.name()
                ),
            }
        }
        if killed.is_some() && first_after_kill.is_none() {
            first_after_kill = Some((seq, Instant::now()));
        }
        confirmed.extend(seq..seq + len);
        seq += len;
    }
    let handled = seen
        .wait_until(
            Duration::from_secs(300),
            "every confirmed event across the failover",
            // The count first: the set is built only once enough arrived.
            |s| {
                s.len() >= confirmed.len()
                    && s.iter()
                        .map(|(q, _)| *q)
                        .collect::<BTreeSet<_>>()
                        .is_superset(&confirmed)
            },
        )
        .await;
    router.shutdown().await.unwrap();
    publisher.shutdown().await;
    consumer.shutdown().await;

    let (member, at) = killed.expect("the leader was killed");
    let (first_seq, published) = first_after_kill.expect("events were published after the kill");
    let consumed = handled
        .iter()
        .filter(|(q, _)| *q >= first_seq)
        .map(|(_, t)| *t)
        .min()
        .expect("events published after the kill were handled");
    let distinct = handled.iter().map(|(q, _)| *q).collect::<BTreeSet<_>>().len() as u64;
    let failover = Failover {
        killed: member,
        confirmed: confirmed.len() as u64,
        duplicates: handled.len() as u64 - distinct,
        publish_recovery: published - at,
        consume_recovery: consumed.saturating_duration_since(at),
    };
    eprintln!(
        "{}: {failover:?} (an event published after the kill handled {:?} after it)",
        fixture.name(),
        failover.consume_recovery
    );
    assert!(
        failover.consume_recovery < FAILOVER_BOUND,
        "consumption on {} stood still for {:?} after the kill",
        fixture.name(),
        failover.consume_recovery
    );
    Some(failover)
}
