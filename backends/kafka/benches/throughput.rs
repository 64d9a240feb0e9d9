//! Throughput of busline-kafka against raw rdkafka, same workload, same
//! broker, one run:
//!
//! 1. acked publishes, chunks of 1,000 in flight at a time (one
//!    `publish_batch` per chunk; raw: `send_result` for the chunk, then
//!    every delivery report awaited), same producer settings (idempotent,
//!    `acks=all`, `linger.ms=5`);
//! 2. consume, decode (serde_json into the same struct), ack (raw: store
//!    the offset, commits every 100 ms like busline's), timed from the
//!    first event received (joining the group is not part of it).
//!
//! The raw side runs twice: with only `content-type`, and with the same
//! CloudEvents `ce_` headers busline writes (set by hand), so the cost of
//! the wire format shows apart from busline's own.
//!
//! Each side runs `BENCH_ROUNDS` (3) times on fresh topics, taking turns to
//! go first; the best round of each is compared (the broker shares the
//! machine, so single rounds are noisy).
//!
//! `cargo bench -p busline-kafka --bench throughput`; the broker is
//! `BUSLINE_TEST_KAFKA_URL` or 127.0.0.1:9092, N is `BENCH_N` (20,000).

use busline_testkit::bench::{order, report, OrderPlaced};
use std::time::{Duration, Instant};

use busline_core::{Bus, BusConfig, BusSettings, DomainEvent, Event, StartFrom, SubscribeOptions};
use busline_kafka::{KafkaBus, KafkaConfig};
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

const CHUNK: usize = 1_000;
const IN_FLIGHT: usize = 256;

fn raw_producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .unwrap()
}

async fn raw_publish(producer: &FutureProducer, topic: &str, n: u64, cloudevents: bool) -> Duration {
    let start = Instant::now();
    let mut seq = 0;
    while seq < n {
        let mut reports = Vec::with_capacity(CHUNK);
        for s in seq..(seq + CHUNK as u64).min(n) {
            let mut headers = OwnedHeaders::new_with_capacity(8);
            if cloudevents {
                let id = busline_core::EventId::new().to_string();
                let time = busline_core::wire::format_time(&chrono::Utc::now());
                for (k, v) in [
                    ("ce_specversion", "1.0"),
                    ("ce_id", id.as_str()),
                    ("ce_type", OrderPlaced::TYPE),
                    ("ce_source", "bench"),
                    ("ce_time", time.as_str()),
                    ("ce_dataversion", "1"),
                    ("ce_correlationid", id.as_str()),
                ] {
                    headers = headers.insert(Header {
                        key: k,
                        value: Some(v),
                    });
                }
            }
            headers = headers.insert(Header {
                key: "content-type",
                value: Some("application/json"),
            });
            let body = serde_json::to_vec(&order(s)).unwrap();
            let record = FutureRecord::<(), _>::to(topic).payload(&body).headers(headers);
            reports.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        }
        seq += reports.len() as u64;
        for r in reports {
            r.await.unwrap().map_err(|(e, _)| e).unwrap();
        }
    }
    start.elapsed()
}

async fn busline_publish(bus: &Bus, topic: &str, n: u64) -> Duration {
    let start = Instant::now();
    let mut seq = 0;
    while seq < n {
        let batch: Vec<_> = (seq..(seq + CHUNK as u64).min(n))
            .map(|s| DomainEvent::new(order(s)))
            .collect();
        seq += batch.len() as u64;
        bus.publish_batch(topic, batch).await.unwrap();
    }
    start.elapsed()
}

async fn raw_consume(bootstrap: &str, topic: &str, group: &str, n: u64) -> Duration {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "100")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut start = Instant::now();
    let mut sum = 0;
    for i in 0..n {
        let m = consumer.recv().await.unwrap();
        if i == 0 {
            start = Instant::now();
        }
        let content_type = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "content-type").map(|h| h.value));
        assert!(content_type.is_some());
        let o: OrderPlaced = serde_json::from_slice(m.payload().unwrap()).unwrap();
        sum += o.seq;
        consumer.store_offset_from_message(&m).unwrap();
    }
    assert_eq!(sum, n * (n - 1) / 2);
    start.elapsed()
}

async fn busline_consume(bus: &Bus, topic: &str, group: &str, n: u64) -> Duration {
    let opts = SubscribeOptions::default()
        .max_in_flight(IN_FLIGHT)
        .start_from(StartFrom::Earliest);
    let mut sub = bus.subscribe(topic, group, opts).await.unwrap();
    let mut start = Instant::now();
    let mut sum = 0;
    for i in 0..n {
        let d = sub.next().await.unwrap().unwrap();
        if i == 0 {
            start = Instant::now();
        }
        let raw = d.event().unwrap();
        let o: OrderPlaced = bus.codecs().decode(raw.content_type(), &raw.data.bytes).unwrap();
        sum += o.seq;
        d.ack().await.unwrap();
    }
    assert_eq!(sum, n * (n - 1) / 2);
    start.elapsed()
}

#[derive(Default)]
struct Times {
    raw: Vec<Duration>,
    ce: Vec<Duration>,
    busline: Vec<Duration>,
}

#[tokio::main]
async fn main() {
    let env = busline_testkit::bench::env_u64;
    let n = env("BENCH_N", 20_000);
    let rounds = env("BENCH_ROUNDS", 3) as usize;
    let url = std::env::var("BUSLINE_TEST_KAFKA_URL").unwrap_or_else(|_| "kafka://127.0.0.1:9092".into());
    let bootstrap = url.trim_start_matches("kafka://").to_owned();
    let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    // tansu 0.6 returns nothing for a fetch inside a record batch, which a
    // member resuming after backpressure does: rewind (as the tests do).
    let kafka = KafkaConfig {
        fetch_rewind: 10_000,
        ..KafkaConfig::default()
    };
    let transport = KafkaBus::connect(&BusConfig::from_url(&url), kafka)
        .await
        .unwrap();
    let bus = Bus::new(transport.clone(), BusSettings::default().with_service("bench"));
    let producer = raw_producer(&bootstrap);

    // Same topic settings for all: created by busline's admin path.
    let topics: Vec<[String; 3]> = (0..rounds)
        .map(|r| ["raw-plain", "raw-ce", "busline"].map(|kind| format!("bench-{kind}-{id}-{r}")))
        .collect();
    for t in topics.iter().flatten() {
        transport.ensure_topic(t).await.unwrap();
    }

    println!(
        "busline-kafka throughput, N = {n} per round, {rounds} rounds (best shown), publish chunks of {CHUNK}, {IN_FLIGHT} in flight when consuming, {} partitions",
        transport.config().partitions
    );
    println!("raw = rdkafka with content-type; raw+ce = also the ce_ headers busline writes");
    let mut publish = Times::default();
    for (r, [plain, ce, ours]) in topics.iter().enumerate() {
        // Who goes first alternates, so warm-up favours no one.
        if r % 2 == 1 {
            publish.busline.push(busline_publish(&bus, ours, n).await);
        }
        publish.raw.push(raw_publish(&producer, plain, n, false).await);
        publish.ce.push(raw_publish(&producer, ce, n, true).await);
        if r % 2 == 0 {
            publish.busline.push(busline_publish(&bus, ours, n).await);
        }
    }
    report("publish (acked) vs raw", n, &publish.raw, &publish.busline);
    report("publish (acked) vs raw+ce", n, &publish.ce, &publish.busline);
    let mut consume = Times::default();
    for (r, [plain, ce, ours]) in topics.iter().enumerate() {
        let group = format!("bench-{id}-{r}");
        if r % 2 == 1 {
            consume.busline.push(busline_consume(&bus, ours, &group, n).await);
        }
        consume.raw.push(raw_consume(&bootstrap, plain, &group, n).await);
        consume.ce.push(raw_consume(&bootstrap, ce, &group, n).await);
        if r % 2 == 0 {
            consume.busline.push(busline_consume(&bus, ours, &group, n).await);
        }
    }
    report("consume vs raw", n, &consume.raw, &consume.busline);
    report("consume vs raw+ce", n, &consume.ce, &consume.busline);
    bus.shutdown().await;
}
