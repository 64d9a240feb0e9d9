//! Throughput of busline-nats against raw async-nats JetStream, same
//! workload, same server, one run:
//!
//! 1. acked publishes, a batch of 1,000 in flight at a time;
//! 2. pull, decode (serde_json into the same struct), ack.
//!
//! The raw side writes three header sets, so the cost of the wire format
//! shows apart from busline's own: `raw` only `Nats-Msg-Id` and
//! `content-type`; `raw+ce` exactly the headers busline writes for the
//! bench's events (set by hand); `raw+ce10` the ten headers busline wrote
//! before 2026-12-02 (also `ce-dataversion`, `ce-correlationid` and
//! `content-type`).
//!
//! Each side runs `BENCH_ROUNDS` (3) times on fresh streams, taking turns
//! to go first; the best round of each is compared and every round is
//! printed (the server shares the machine, so single rounds are noisy).
//!
//! `cargo bench -p busline-nats --bench throughput`; the server is
//! `BUSLINE_TEST_NATS_URL` or 127.0.0.1:4222, N is `BENCH_N` (20,000).

use busline_testkit::bench::{best, order, report, OrderPlaced};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use busline_core::{Bus, BusConfig, BusSettings, DomainEvent, Event, StartFrom, SubscribeOptions};
use busline_nats::{NatsBus, NatsConfig, TopicNames};
use futures::StreamExt;

const CHUNK: usize = 1_000;
const IN_FLIGHT: usize = 256;

/// The header sets the raw side writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Set {
    /// `Nats-Msg-Id` and `content-type` only.
    Plain,
    /// Exactly what busline writes for these events (no key, no causation
    /// id, no extension, version 1, correlation id = id).
    Busline,
    /// The ten headers busline wrote before 2026-12-02.
    Ten,
}

const SETS: [Set; 3] = [Set::Plain, Set::Busline, Set::Ten];

impl Set {
    fn label(self) -> &'static str {
        match self {
            Set::Plain => "raw",
            Set::Busline => "raw+ce",
            Set::Ten => "raw+ce10",
        }
    }
}

fn headers(set: Set, id: String) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if set != Set::Plain {
        let time = busline_core::wire::format_time(&chrono::Utc::now());
        headers.insert("ce-specversion", "1.0");
        headers.insert("ce-id", id.as_str());
        headers.insert("ce-type", OrderPlaced::TYPE);
        headers.insert("ce-source", "bench");
        headers.insert("ce-time", time);
        headers.insert("ce-datacontenttype", "application/json");
    }
    if set == Set::Ten {
        headers.insert("ce-dataversion", "1");
        headers.insert("ce-correlationid", id.as_str());
    }
    if set != Set::Busline {
        headers.insert("content-type", "application/json");
    }
    headers.insert("Nats-Msg-Id", id);
    headers
}

async fn raw_publish(js: &jetstream::Context, subject: &str, n: u64, set: Set) -> Duration {
    let start = Instant::now();
    let mut seq = 0;
    while seq < n {
        let mut acks = Vec::with_capacity(CHUNK);
        for s in seq..(seq + CHUNK as u64).min(n) {
            let headers = headers(set, busline_core::EventId::new().to_string());
            let body = serde_json::to_vec(&order(s)).unwrap();
            acks.push(
                js.publish_with_headers(subject.to_owned(), headers, body.into())
                    .await
                    .unwrap(),
            );
        }
        seq += acks.len() as u64;
        for ack in acks {
            ack.await.unwrap();
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

async fn raw_consume(js: &jetstream::Context, stream_name: &str, n: u64) -> Duration {
    let stream = js.get_stream(stream_name).await.unwrap();
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 1024,
            max_deliver: -1,
            ..Default::default()
        })
        .await
        .unwrap();
    let start = Instant::now();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(IN_FLIGHT)
        .messages()
        .await
        .unwrap();
    let mut sum = 0;
    for _ in 0..n {
        let m = messages.next().await.unwrap().unwrap();
        let o: OrderPlaced = serde_json::from_slice(&m.payload).unwrap();
        sum += o.seq;
        m.ack().await.unwrap();
    }
    assert_eq!(sum, n * (n - 1) / 2);
    start.elapsed()
}

async fn busline_consume(bus: &Bus, topic: &str, n: u64) -> Duration {
    let opts = SubscribeOptions::default()
        .max_in_flight(IN_FLIGHT)
        .start_from(StartFrom::Earliest);
    let start = Instant::now();
    let mut sub = bus.subscribe(topic, "bench", opts).await.unwrap();
    let mut sum = 0;
    for _ in 0..n {
        let d = sub.next().await.unwrap().unwrap();
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
    raw: [Vec<Duration>; 3],
    busline: Vec<Duration>,
}

impl Times {
    fn report(&self, what: &str, n: u64) {
        for (i, set) in SETS.iter().enumerate() {
            report(
                &format!("{what} vs {}", set.label()),
                n,
                &self.raw[i],
                &self.busline,
            );
        }
        // The wire format's own cost: raw against raw.
        let plain = best(n, &self.raw[0]);
        for (i, set) in SETS.iter().enumerate().skip(1) {
            println!(
                "{what:<28} {} / raw: {:.3}",
                set.label(),
                best(n, &self.raw[i]) / plain
            );
        }
    }
}

#[tokio::main]
async fn main() {
    let env = busline_testkit::bench::env_u64;
    let n = env("BENCH_N", 20_000);
    let rounds = env("BENCH_ROUNDS", 3) as usize;
    let url = std::env::var("BUSLINE_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let nats = NatsConfig {
        max_age: Duration::from_secs(3600),
        fetch_batch: IN_FLIGHT,
        ..NatsConfig::default()
    };
    let transport = NatsBus::connect(&BusConfig::from_url(&url), nats).await.unwrap();
    let bus = Bus::new(transport.clone(), BusSettings::default().with_service("bench"));
    let client = async_nats::connect(url.trim_start_matches("nats://"))
        .await
        .unwrap();
    let js = jetstream::new(client);

    // Same stream settings for all; the raw side uses the topic naming too.
    let mut raw_streams: Vec<[TopicNames; 3]> = Vec::new();
    let mut bus_topics = Vec::new();
    for r in 0..rounds {
        let names = SETS
            .map(|set| TopicNames::of(&format!("bench-{}-{id}-{r}", set.label().replace('+', "-"))).unwrap());
        for n in &names {
            js.create_stream(stream::Config {
                name: n.stream.clone(),
                subjects: vec![n.wildcard()],
                max_age: Duration::from_secs(3600),
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        raw_streams.push(names);
        let topic = format!("bench-busline-{id}-{r}");
        bus.provision(&topic, "warmup").await.unwrap();
        bus_topics.push(topic);
    }

    println!(
        "busline-nats throughput, N = {n} per round, {rounds} rounds (best shown), publish chunks of {CHUNK}, {IN_FLIGHT} in flight when consuming"
    );
    println!(
        "raw = async-nats with Nats-Msg-Id and content-type; raw+ce = exactly the headers busline writes; raw+ce10 = the ten busline wrote before 2026-12-02"
    );
    let mut publish = Times::default();
    for r in 0..rounds {
        // Who goes first alternates, so warm-up favours no one.
        if r % 2 == 1 {
            publish
                .busline
                .push(busline_publish(&bus, &bus_topics[r], n).await);
        }
        for (i, set) in SETS.iter().enumerate() {
            let subject = raw_streams[r][i].subject(OrderPlaced::TYPE);
            publish.raw[i].push(raw_publish(&js, &subject, n, *set).await);
        }
        if r % 2 == 0 {
            publish
                .busline
                .push(busline_publish(&bus, &bus_topics[r], n).await);
        }
    }
    publish.report("publish (acked)", n);
    let mut consume = Times::default();
    for r in 0..rounds {
        if r % 2 == 1 {
            consume
                .busline
                .push(busline_consume(&bus, &bus_topics[r], n).await);
        }
        for (times, names) in consume.raw.iter_mut().zip(&raw_streams[r]) {
            times.push(raw_consume(&js, &names.stream, n).await);
        }
        if r % 2 == 0 {
            consume
                .busline
                .push(busline_consume(&bus, &bus_topics[r], n).await);
        }
    }
    consume.report("consume", n);

    let mut streams = transport.declared_streams();
    streams.extend(raw_streams.iter().flatten().map(|s| s.stream.clone()));
    bus.shutdown().await;
    for s in streams {
        let _ = js.delete_stream(&s).await;
    }
}
