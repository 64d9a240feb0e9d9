//! Throughput of busline-nats against raw async-nats JetStream, same
//! workload, same server, one run:
//!
//! 1. acked publishes, a batch of 1,000 in flight at a time;
//! 2. pull, decode (serde_json into the same struct), ack.
//!
//! `cargo bench -p busline-nats --bench throughput`; the server is
//! `BUSLINE_TEST_NATS_URL` or 127.0.0.1:4222, N is `BENCH_N` (20,000).

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use busline_core::{Bus, BusConfig, BusSettings, DomainEvent, Event, StartFrom, SubscribeOptions};
use busline_nats::{NatsBus, NatsConfig, TopicNames};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderPlaced {
    seq: u64,
    order_id: String,
    total_cents: u64,
}

impl Event for OrderPlaced {
    const TYPE: &'static str = "order.placed";
}

const CHUNK: usize = 1_000;
const IN_FLIGHT: usize = 256;

fn order(seq: u64) -> OrderPlaced {
    OrderPlaced {
        seq,
        order_id: format!("order-{seq:08}"),
        total_cents: seq * 7,
    }
}

/// `cloudevents`: the same headers busline writes, set by hand, so the
/// comparison can tell the cost of the wire format from busline's own.
async fn raw_publish(js: &jetstream::Context, subject: &str, n: u64, cloudevents: bool) -> Duration {
    let start = Instant::now();
    let mut seq = 0;
    while seq < n {
        let mut acks = Vec::with_capacity(CHUNK);
        for s in seq..(seq + CHUNK as u64).min(n) {
            let mut headers = HeaderMap::new();
            let id = busline_core::new_event_id();
            if cloudevents {
                let time = busline_core::wire::format_time(&chrono::Utc::now());
                headers.insert("ce-specversion", "1.0");
                headers.insert("ce-id", id.as_str());
                headers.insert("ce-type", OrderPlaced::TYPE);
                headers.insert("ce-source", "bench");
                headers.insert("ce-time", time);
                headers.insert("ce-dataversion", "1");
                headers.insert("ce-correlationid", id.as_str());
            }
            headers.insert("Nats-Msg-Id", id);
            headers.insert("content-type", "application/json");
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
    // Both raw streams hold the same events; a consumer per stream.
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

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn report(what: &str, n: u64, raw: Duration, busline: Duration) {
    let (r, b) = (rate(n, raw), rate(n, busline));
    println!(
        "{what:<26} raw {r:>10.0} ev/s   busline {b:>10.0} ev/s   ratio busline/raw {:.3}",
        b / r
    );
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
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
    let bus_topic = format!("bench-busline-{id}");
    let mut raw_streams = Vec::new();
    for kind in ["plain", "ce"] {
        let names = TopicNames::of(&format!("bench-raw-{kind}-{id}")).unwrap();
        js.create_stream(stream::Config {
            name: names.stream.clone(),
            subjects: vec![names.wildcard()],
            max_age: Duration::from_secs(3600),
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .unwrap();
        raw_streams.push(names);
    }
    bus.provision(&bus_topic, "warmup").await.unwrap();

    println!(
        "busline-nats throughput, N = {n}, publish chunks of {CHUNK}, {IN_FLIGHT} in flight when consuming"
    );
    println!(
        "raw = async-nats with Nats-Msg-Id and content-type; raw+ce = also the ce- headers busline writes"
    );
    let subject = |i: usize| raw_streams[i].subject(OrderPlaced::TYPE);
    let raw_pub = raw_publish(&js, &subject(0), n, false).await;
    let ce_pub = raw_publish(&js, &subject(1), n, true).await;
    let bus_pub = busline_publish(&bus, &bus_topic, n).await;
    report("publish (acked) vs raw", n, raw_pub, bus_pub);
    report("publish (acked) vs raw+ce", n, ce_pub, bus_pub);
    let raw_con = raw_consume(&js, &raw_streams[0].stream, n).await;
    let ce_con = raw_consume(&js, &raw_streams[1].stream, n).await;
    let bus_con = busline_consume(&bus, &bus_topic, n).await;
    report("consume vs raw", n, raw_con, bus_con);
    report("consume vs raw+ce", n, ce_con, bus_con);

    let mut streams = transport.declared_streams();
    streams.extend(raw_streams.iter().map(|s| s.stream.clone()));
    bus.shutdown().await;
    for s in streams {
        let _ = js.delete_stream(&s).await;
    }
}
