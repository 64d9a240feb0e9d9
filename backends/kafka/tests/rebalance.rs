//! Rebalances: a member whose partitions are revoked waits (bounded) for
//! their deliveries in flight to settle and commits them before it gives
//! the partitions up, so the next owner neither handles a key while the
//! old handler still runs nor redelivers what was settled; and a reader of
//! a group's dead-letter topic is no member of the group's consumer group,
//! so it joining does not rebalance the main subscription. Each test runs
//! on the real broker (tansu in CI) and on the mock cluster.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use busline_core::{
    dead_letter_topic, Bus, Context, DomainEvent, EventService, HandlerError, HandlerWithoutStateExt, Router,
    RunningRouter, SubscribeOptions,
};
use busline_kafka::KafkaBus;
use busline_testkit::events::Ping;
use busline_testkit::support::{eventually, unique, within, Collector, WAIT};
use busline_testkit::test_settings;
use common::KafkaFixture;
use futures::StreamExt;

/// How long the first handling of each key's first event takes: long
/// enough that the second member's join lands while it runs (the member's
/// heartbeat, every second, learns of the rebalance) and that, without the
/// wait, the rebalance completes while it runs (the mock cluster holds a
/// join open for `session.timeout.ms` − 1 s, 9 s here); below the wait of a
/// revocation (`revoke_timeout`, 30 s).
const SLOW: Duration = Duration::from_secs(12);

/// Keys, spread over the topic's partitions, so that some move to the
/// second member whichever partitions it is given.
const KEYS: usize = 8;

/// Events per key.
const PER_KEY: u64 = 10;

/// What the handlers of both members saw, per key.
#[derive(Default)]
struct KeyLog {
    state: Mutex<HashMap<String, KeyState>>,
    started: Arc<Collector<(&'static str, String, u64)>>,
    handled: Arc<Collector<(&'static str, String, u64)>>,
    /// Violations: a handler started while another of its key ran, or
    /// before the event before it was handled.
    concurrent: Mutex<Vec<String>>,
    out_of_order: Mutex<Vec<String>>,
    /// Slow handlers of the first member during which its partitions were
    /// revoked: without one, the test would pass whether the revocation
    /// waits or not.
    revoked_while_slow: AtomicUsize,
}

#[derive(Default)]
struct KeyState {
    /// Handlers of the key running now: (member, seq).
    running: Vec<(&'static str, u64)>,
    /// Sequence numbers handled at least once.
    done: BTreeSet<u64>,
}

impl KeyLog {
    fn running(&self) -> usize {
        self.state.lock().unwrap().values().map(|k| k.running.len()).sum()
    }
}

/// `bus`: the member's connection, whose revocations the handler watches.
fn handler(member: &'static str, log: &Arc<KeyLog>, bus: &KafkaBus) -> impl EventService<Ping> {
    let (log, bus) = (log.clone(), bus.clone());
    let handle = move |ctx: Context, e: DomainEvent<Ping>| {
        let (log, bus) = (log.clone(), bus.clone());
        async move {
            let seq = e.data.seq;
            let key = e.key.as_deref().unwrap_or_default().to_owned();
            {
                let mut all = log.state.lock().unwrap();
                let s = all.entry(key.clone()).or_default();
                if !s.running.is_empty() {
                    log.concurrent
                        .lock()
                        .unwrap()
                        .push(format!("{member} started {key}/{seq} while {:?} ran", s.running));
                }
                if seq > 0 && !s.done.contains(&(seq - 1)) {
                    log.out_of_order.lock().unwrap().push(format!(
                        "{member} started {key}/{seq} before {} was handled",
                        seq - 1
                    ));
                }
                s.running.push((member, seq));
            }
            log.started.push((member, key.clone(), seq));
            let slow = seq == 0 && ctx.attempt() == 1;
            let revocations = bus.revocations();
            tokio::time::sleep(if slow { SLOW } else { Duration::from_millis(20) }).await;
            if slow && bus.revocations() > revocations {
                log.revoked_while_slow.fetch_add(1, Ordering::Relaxed);
            }
            {
                let mut all = log.state.lock().unwrap();
                let s = all.entry(key.clone()).or_default();
                if let Some(i) = s.running.iter().position(|r| *r == (member, seq)) {
                    s.running.remove(i);
                }
                s.done.insert(seq);
            }
            log.handled.push((member, key, seq));
            Ok::<_, HandlerError>(())
        }
    };
    handle.into_service()
}

/// A router of `group` on `topic` with one slot per key, handling as
/// `name` on connection `kafka` (`bus` wraps it).
async fn member(
    bus: &Bus,
    kafka: &KafkaBus,
    group: &str,
    topic: &str,
    name: &'static str,
    log: &Arc<KeyLog>,
) -> RunningRouter {
    Router::new(bus.clone(), group)
        .with_max_in_flight(KEYS)
        .on(topic, handler(name, log, kafka))
        .start()
        .await
        .unwrap()
}

async fn a_rebalance_waits_for_handlers_of_revoked_partitions(fixture: KafkaFixture) {
    let total = KEYS * PER_KEY as usize;
    let (topic, group) = (unique("rebalance"), unique("g"));
    let log = Arc::new(KeyLog::default());
    let first = fixture.connect_kafka().await;
    let a = Bus::new(first.clone(), test_settings());
    let router_a = member(&a, &first, &group, &topic, "a", &log).await;
    let events = (0..PER_KEY)
        .flat_map(|seq| (0..KEYS).map(move |k| DomainEvent::new(Ping::new(seq)).with_key(format!("k{k}"))))
        .collect();
    a.publish_batch(&topic, events).await.unwrap();
    log.started
        .wait_len(KEYS, WAIT, "the slow first handler of every key to start")
        .await;

    let second = fixture.connect_kafka().await;
    let b = Bus::new(second.clone(), test_settings());
    let router_b = member(&b, &second, &group, &topic, "b", &log).await;
    log.handled
        .wait_until(WAIT, "every event handled", |h| {
            h.iter()
                .map(|(_, k, s)| (k.clone(), *s))
                .collect::<BTreeSet<_>>()
                .len()
                == total
        })
        .await;
    // Let handlers still running (without the wait: the first member's
    // slow ones) finish, so their completions are counted.
    eventually(WAIT, "the handlers still running to finish", || {
        log.running() == 0
    })
    .await;
    router_a.shutdown().await.unwrap();
    router_b.shutdown().await.unwrap();

    let handled = log.handled.snapshot();
    let duplicates = handled.len() - total;
    let by_b = handled.iter().filter(|(m, _, _)| *m == "b").count();
    let concurrent = log.concurrent.lock().unwrap().clone();
    let out_of_order = log.out_of_order.lock().unwrap().clone();
    eprintln!(
        "rebalance: revocations a={} b={}; {} slow handlers revoked mid-way; commit failures a={}; {} handled ({by_b} by b), {duplicates} duplicates, {} concurrent, {} out of order",
        first.revocations(),
        log.revoked_while_slow.load(Ordering::Relaxed),
        second.revocations(),
        first.commit_failures(),
        handled.len(),
        concurrent.len(),
        out_of_order.len()
    );
    assert!(
        first.revocations() >= 1,
        "the second member's join revoked the first member's partitions"
    );
    assert!(
        log.revoked_while_slow.load(Ordering::Relaxed) > 0,
        "the revocation came after the slow handlers had finished: nothing was in flight to wait for"
    );
    assert!(
        concurrent.is_empty(),
        "one key handled twice at once: {concurrent:?}"
    );
    assert!(out_of_order.is_empty(), "order per key broken: {out_of_order:?}");
    // What settled was committed before the partitions moved: nothing is
    // handled again, unless the broker refused that commit (the mock
    // cluster refuses commits while a join is open,
    // REBALANCE_IN_PROGRESS; Kafka takes them from the current
    // generation): then what was in flight at the revocation, and only
    // that, comes again, after it finished.
    if first.commit_failures() == 0 {
        assert_eq!(duplicates, 0, "handled more than once: {handled:?}");
    } else {
        assert!(
            duplicates <= KEYS,
            "more than the deliveries in flight at the revocation handled again: {handled:?}"
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}

async fn a_dlq_reader_does_not_rebalance_the_main_subscription(fixture: KafkaFixture) {
    let (topic, group) = (unique("dlqgroup"), unique("g"));
    let main = fixture.connect_kafka().await;
    let bus = Bus::new(main.clone(), test_settings());
    let seen = Collector::<u64>::new();
    let sink = seen.clone();
    let router = Router::new(bus.clone(), &group)
        .on(&topic, move |_ctx: Context, e: DomainEvent<Ping>| {
            let sink = sink.clone();
            async move {
                sink.push(e.data.seq);
                if e.data.seq == 2 {
                    return Err(HandlerError::permanent("for the dead-letter topic"));
                }
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    bus.publish(&topic, Ping::new(1)).await.unwrap();
    seen.wait_len(1, WAIT, "the main subscription's first event")
        .await;

    // A DLQ reader on another connection, under the same group name, as
    // the testkit's reader and replay subscribe.
    let reader = busline_testkit::BusFixture::connect(&fixture).await;
    let mut dlq = reader
        .subscribe(
            &dead_letter_topic(&topic, &group),
            &group,
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
    bus.publish(&topic, Ping::new(2)).await.unwrap();
    let letter = within(WAIT, "the dead letter", dlq.next())
        .await
        .expect("the DLQ subscription is open")
        .expect("a dead letter");
    letter.ack().await.unwrap();
    bus.publish(&topic, Ping::new(3)).await.unwrap();
    let got = seen.wait_len(3, WAIT, "the events after the reader joined").await;
    eprintln!(
        "dlq reader: main revocations {}, main handled {got:?}",
        main.revocations()
    );
    assert_eq!(
        main.revocations(),
        0,
        "the DLQ reader's join took the main subscription's partitions"
    );
    assert_eq!(got, vec![1, 2, 3], "nothing handled twice");
    drop(dlq);
    reader.shutdown().await;
    router.shutdown().await.unwrap();
    bus.shutdown().await;
}

/// Events a member acked before a rebalance revoked its partitions are not
/// delivered again when the broker refuses the commit on revocation
/// (librdkafka's mock cluster refuses commits for the whole join phase;
/// Kafka while the new generation syncs): the connection keeps the points
/// and its member that gets the partitions back starts there.
async fn acked_events_stay_settled_when_the_commit_on_revocation_is_refused(mut fixture: KafkaFixture) {
    // Commits only on revocation: the periodic commit would otherwise save
    // the offsets before the rebalance, and the test would show nothing.
    fixture.kafka.commit_interval = Duration::from_secs(600);
    let (topic, other_topic, group) = (unique("refused"), unique("refused-other"), unique("g"));
    let kafka = fixture.connect_kafka().await;
    let bus = Bus::new(kafka.clone(), test_settings());
    let mut first = bus
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .unwrap();
    const ACKED: u64 = 5;
    for seq in 0..ACKED {
        bus.publish(&topic, Ping::new(seq)).await.unwrap();
    }
    for _ in 0..ACKED {
        let d = within(WAIT, "the first events", first.next())
            .await
            .expect("the subscription is open")
            .unwrap();
        d.ack().await.unwrap();
    }
    let refused_before = kafka.commit_failures();
    // A member of the same group on another topic: the group rebalances,
    // and the first member's partitions are revoked and assigned again.
    let second = bus
        .subscribe(&other_topic, &group, SubscribeOptions::default())
        .await
        .unwrap();
    eventually(WAIT, "the first member's partitions to be revoked", || {
        kafka.revocations() > 0
    })
    .await;
    bus.publish(&topic, Ping::new(ACKED)).await.unwrap();
    let d = within(WAIT, "the event after the rebalance", first.next())
        .await
        .expect("the subscription is open")
        .unwrap();
    let raw = d.event().unwrap().clone();
    let ping: Ping = bus.codecs().decode(raw.content_type(), &raw.data.bytes).unwrap();
    let refused = kafka.commit_failures() - refused_before;
    eprintln!(
        "{}: commits refused during the rebalance {refused}, next event {}",
        fixture.url, ping.seq
    );
    assert_eq!(ping.seq, ACKED, "an event acked before the rebalance came again");
    if fixture.mock_cluster().is_some() {
        assert!(
            refused > 0,
            "the mock cluster took the commit on revocation: the case under test did not happen"
        );
    }
    d.ack().await.unwrap();
    drop((first, second));
    bus.shutdown().await;
}

mod broker {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rebalance_waits_for_handlers_of_revoked_partitions() {
        super::a_rebalance_waits_for_handlers_of_revoked_partitions(KafkaFixture::new().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dlq_reader_does_not_rebalance_the_main_subscription() {
        super::a_dlq_reader_does_not_rebalance_the_main_subscription(KafkaFixture::new().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acked_events_stay_settled_when_the_commit_on_revocation_is_refused() {
        super::acked_events_stay_settled_when_the_commit_on_revocation_is_refused(KafkaFixture::new().await)
            .await;
    }
}

mod mock {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rebalance_waits_for_handlers_of_revoked_partitions() {
        super::a_rebalance_waits_for_handlers_of_revoked_partitions(KafkaFixture::mock(1)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dlq_reader_does_not_rebalance_the_main_subscription() {
        super::a_dlq_reader_does_not_rebalance_the_main_subscription(KafkaFixture::mock(1)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acked_events_stay_settled_when_the_commit_on_revocation_is_refused() {
        super::acked_events_stay_settled_when_the_commit_on_revocation_is_refused(KafkaFixture::mock(1))
            .await;
    }
}
