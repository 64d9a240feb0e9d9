//! Soak: 25 broker restarts under a publishing and consuming load. Every
//! publish call returns (Ok or a typed error) within its deadline, nothing
//! wedges, and every confirmed event is handled.
//!
//! Restarts a private RabbitMQ node (`.ci/rabbitmq-restartable.sh`, port
//! 5673), never the shared broker, with the command in
//! `BUSLINE_TEST_AMQP_SOAK_RESTART` (skipped, saying so, when unset); it
//! runs in the serial step with the other restart tests.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use busline_core::{Bus, Context, DomainEvent, HandlerError, Router};
use busline_rabbitmq::{RabbitBus, RabbitConfig};
use busline_testkit::events::Ping;
use busline_testkit::support::{unique, within, Collector, WAIT};
use busline_testkit::{brokers, test_settings};

const RESTARTS: usize = 25;
/// Confirmed publishes between two restarts, so each restart hits a stream
/// that is really flowing.
const BETWEEN: u64 = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_under_load_wedge_no_publish_and_lose_no_confirmed_event() {
    let Some(restart) = std::env::var("BUSLINE_TEST_AMQP_SOAK_RESTART")
        .ok()
        .filter(|c| !c.trim().is_empty())
    else {
        eprintln!("SKIPPED soak: BUSLINE_TEST_AMQP_SOAK_RESTART is not set");
        return;
    };
    let url = std::env::var("BUSLINE_TEST_AMQP_SOAK_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5673/%2f".into());
    let config = RabbitConfig {
        operation_timeout: Duration::from_secs(5),
        confirm_timeout: Duration::from_secs(10),
        reconnect_max_backoff: Duration::from_secs(1),
        ..RabbitConfig::default()
    };
    // RabbitConfig::operation_timeout's documented bound on one publish,
    // plus room for a loaded machine's scheduling.
    let bound = config.operation_timeout * 2 + config.confirm_timeout + Duration::from_secs(5);
    let rabbit = RabbitBus::connect(&url, "busline-soak", config)
        .await
        .expect("the private RabbitMQ node (bash .ci/rabbitmq-restartable.sh start)");
    let bus = Bus::new(rabbit, test_settings());
    let (topic, group) = (unique("soak"), unique("g"));
    bus.provision(&topic, &group).await.unwrap();

    let handled = Collector::<u64>::new();
    let sink = handled.clone();
    let router = Router::new(bus.clone(), &group)
        .on(&topic, move |_c: Context, e: DomainEvent<Ping>| {
            let sink = sink.clone();
            async move {
                sink.push(e.data.seq);
                Ok::<_, HandlerError>(())
            }
        })
        .start()
        .await
        .unwrap();

    // One publisher: each seq is published until the broker confirms it.
    let confirmed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let slowest = Arc::new(Mutex::new(Duration::ZERO));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (bus, topic) = (bus.clone(), topic.clone());
        let (confirmed, errors, slowest, stop) =
            (confirmed.clone(), errors.clone(), slowest.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let result = tokio::time::timeout(bound, bus.publish(&topic, Ping::new(seq))).await;
                let took = started.elapsed();
                {
                    let mut s = slowest.lock().unwrap();
                    *s = (*s).max(took);
                }
                match result {
                    Err(_) => panic!("publish of {seq} did not return within {bound:?}: wedged"),
                    Ok(Ok(_)) => {
                        seq += 1;
                        confirmed.store(seq, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => {
                        *errors
                            .lock()
                            .unwrap()
                            .entry(format!("{:?}", e.kind()))
                            .or_default() += 1;
                        // The broker is restarting; try the same seq again
                        // soon, not in a hot loop.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            seq
        })
    };

    for i in 0..RESTARTS {
        let target = confirmed.load(Ordering::Relaxed) + BETWEEN;
        within(
            WAIT,
            &format!("{BETWEEN} confirmed publishes before restart {i}"),
            async {
                while confirmed.load(Ordering::Relaxed) < target {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
        )
        .await;
        brokers::run_restart(&restart)
            .await
            .unwrap_or_else(|e| panic!("restart {i}: {e}"));
    }
    let target = confirmed.load(Ordering::Relaxed) + BETWEEN;
    within(WAIT, "publishing after the last restart", async {
        while confirmed.load(Ordering::Relaxed) < target {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let published = within(WAIT, "the publisher to stop", publisher).await.unwrap();

    let want: HashSet<u64> = (0..published).collect();
    let got = handled
        .wait_until(
            Duration::from_secs(120),
            "every confirmed event to be handled",
            |h| {
                let seen: HashSet<&u64> = h.iter().collect();
                want.iter().all(|seq| seen.contains(seq))
            },
        )
        .await;
    let duplicates = got.len() - got.iter().collect::<HashSet<_>>().len();
    eprintln!(
        "soak: {RESTARTS} restarts, {published} confirmed, {} handled ({duplicates} duplicates), \
         publish errors {:?}, slowest publish {:?} (bound {bound:?})",
        got.len(),
        errors.lock().unwrap(),
        slowest.lock().unwrap()
    );
    within(
        Duration::from_secs(45),
        "the router to shut down",
        router.shutdown(),
    )
    .await
    .unwrap();
    within(Duration::from_secs(45), "the bus to shut down", bus.shutdown()).await;
}
