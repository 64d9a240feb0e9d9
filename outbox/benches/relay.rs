//! Committed events per second through the outbox against plain publishes
//! of the same events, on each broker that answers, in one run: the outbox
//! with a transaction per event (insert + commit, the relay publishing
//! beside it), the same commits without a relay (what the database alone
//! allows), and the outbox with 100 events per transaction (what the relay
//! moves when commits are not the limit).
//!
//! Every side runs `WRITERS` concurrent writers; its time ends when the
//! broker has confirmed its last event (for the outbox: the relay deleted
//! the last row). Prints events/s and the ratios to plain publishing.
//!
//! `cargo bench -p busline-outbox --bench relay` (needs PostgreSQL at
//! `BUSLINE_TEST_POSTGRES_URL`; `BENCH_EVENTS` sets the count, default
//! 4,000 per broker).

use std::time::{Duration, Instant};

use busline::{Bus, Event};
use busline_outbox::{Outbox, OutboxTables, Relay, RelayOptions};
use busline_testkit::brokers::answers;
use busline_testkit::support::unique;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

const WRITERS: u64 = 8;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: u64,
    customer: String,
    total_cents: u64,
}

impl Event for OrderPlaced {
    const TYPE: &'static str = "bench.order_placed";
}

fn order(i: u64) -> OrderPlaced {
    OrderPlaced {
        order_id: i,
        customer: "customer-4711".into(),
        total_cents: 1999 + i % 100,
    }
}

async fn plain(bus: &Bus, topic: &str, events: u64) -> f64 {
    let started = Instant::now();
    let writers = (0..WRITERS).map(|w| {
        let (bus, topic) = (bus.clone(), topic.to_owned());
        tokio::spawn(async move {
            for i in (w..events).step_by(WRITERS as usize) {
                bus.publish(&topic, order(i)).await.expect("publish");
            }
        })
    });
    for w in futures::future::join_all(writers).await {
        w.unwrap();
    }
    events as f64 / started.elapsed().as_secs_f64()
}

/// Events/s through the outbox, `per_tx` events per transaction; with
/// `relay: false`, the commits alone (the database's part).
async fn through_outbox(pool: &PgPool, bus: &Bus, topic: &str, events: u64, per_tx: u64, relay: bool) -> f64 {
    let suffix = unique("b").replace('-', "_");
    let tables = OutboxTables::new(
        &format!("bench_outbox_{suffix}"),
        &format!("bench_inbox_{suffix}"),
    )
    .unwrap();
    tables.install(pool).await.unwrap();
    let outbox = Outbox::new(bus.clone(), tables.clone());
    let relay =
        relay.then(|| Relay::new(pool.clone(), bus.clone(), tables.clone(), RelayOptions::default()).start());
    let started = Instant::now();
    let writers = (0..WRITERS).map(|w| {
        let (pool, outbox, topic) = (pool.clone(), outbox.clone(), topic.to_owned());
        tokio::spawn(async move {
            let mine: Vec<u64> = (w..events).step_by(WRITERS as usize).collect();
            for chunk in mine.chunks(per_tx as usize) {
                let mut tx = pool.begin().await.unwrap();
                for i in chunk {
                    outbox.publish(&mut tx, &topic, order(*i)).await.unwrap();
                }
                tx.commit().await.unwrap();
            }
        })
    });
    for w in futures::future::join_all(writers).await {
        w.unwrap();
    }
    if let Some(relay) = &relay {
        while relay.stats().published < events {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let rate = events as f64 / started.elapsed().as_secs_f64();
    if let Some(relay) = relay {
        let stats = relay.shutdown().await.unwrap();
        eprintln!("  relay ({per_tx} per transaction): {} rounds", stats.rounds);
    }
    sqlx::raw_sql(&format!("DROP TABLE {}, {}", tables.outbox(), tables.inbox()))
        .execute(pool)
        .await
        .unwrap();
    rate
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let events: u64 = std::env::var("BENCH_EVENTS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(4_000);
        let database = std::env::var("BUSLINE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/test".into());
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(WRITERS as u32 + 4)
            .connect(&database)
            .await
            .expect("PostgreSQL");
        let brokers = [
            ("memory", "memory://bench-outbox".to_owned(), None),
            ("NATS", "nats://127.0.0.1:4222".to_owned(), Some(4222)),
            (
                "RabbitMQ",
                "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
                Some(5672),
            ),
            ("Kafka", "kafka://127.0.0.1:9092".to_owned(), Some(9092)),
        ];
        println!("{events} events, {WRITERS} writers; outbox: a transaction per event");
        for (name, url, port) in brokers {
            if port.is_some_and(|p| !answers(("127.0.0.1", p), Duration::from_millis(500))) {
                println!("{name}: not running, skipped");
                continue;
            }
            let bus = busline::connect_url(&url).await.expect("connect");
            let topic = unique("bench-outbox");
            // Created before either side is timed.
            bus.provision(&topic, "bench").await.expect("provision");
            let plain_rate = plain(&bus, &topic, events).await;
            let one = through_outbox(&pool, &bus, &topic, events, 1, true).await;
            let commits = through_outbox(&pool, &bus, &topic, events, 1, false).await;
            let batched = through_outbox(&pool, &bus, &topic, events, 100, true).await;
            println!(
                "{name}: plain publish {plain_rate:.0} ev/s | outbox, 1 event per transaction {one:.0} ev/s \
                 ({:.2} of plain; the commits alone {commits:.0} ev/s) | outbox, 100 per transaction \
                 {batched:.0} ev/s ({:.2} of plain)",
                one / plain_rate,
                batched / plain_rate
            );
            bus.shutdown().await;
        }
    });
}
