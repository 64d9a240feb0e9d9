//! busline over RabbitMQ against raw lapin, same broker, same run, same
//! messages on the wire (JSON body, persistent, the CloudEvents headers and
//! native properties):
//!
//! 1. publish N events with publisher confirms, 1,000 in flight at a time;
//! 2. consume them, decode the JSON into the same struct, ack (prefetch 256).
//!
//! `cargo bench -p busline-rabbitmq --bench throughput` (BENCH_EVENTS sets N,
//! BENCH_ROUNDS the rounds, BUSLINE_TEST_AMQP_URL the broker). Rounds
//! alternate which side goes first; the mean ratio is printed last.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use busline_core::{Bus, BusSettings, Context, DomainEvent, Event, HandlerError, Router, SubscribeOptions};
use busline_rabbitmq::{RabbitBus, RabbitConfig};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde::{Deserialize, Serialize};

const WINDOW: usize = 1_000;
const PREFETCH: u16 = 256;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: String,
    customer: String,
    total_cents: u64,
    lines: Vec<u32>,
}

impl Event for OrderPlaced {
    const TYPE: &'static str = "order.placed";
}

fn order(seq: u64) -> OrderPlaced {
    OrderPlaced {
        order_id: format!("order-{seq}"),
        customer: "customer-42".into(),
        total_cents: seq * 7,
        lines: vec![1, 2, 3],
    }
}

fn url() -> String {
    std::env::var("BUSLINE_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn rate(n: u64, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

/// The same wire message busline writes, built by hand as a raw lapin user
/// following the CloudEvents AMQP binding would.
fn raw_properties(seq: u64) -> BasicProperties {
    let id = busline_core::EventId::new().to_string();
    let time = chrono::Utc::now();
    let mut headers = FieldTable::default();
    for (k, v) in [
        ("cloudEvents_specversion", "1.0".to_owned()),
        ("cloudEvents_id", id.clone()),
        ("cloudEvents_type", "order.placed".to_owned()),
        ("cloudEvents_source", "bench".to_owned()),
        ("cloudEvents_time", time.to_rfc3339()),
        ("cloudEvents_dataversion", "1".to_owned()),
        ("cloudEvents_correlationid", id.clone()),
        ("cloudEvents_partitionkey", format!("order-{seq}")),
    ] {
        headers.insert(k.into(), AMQPValue::LongString(LongString::from(v)));
    }
    BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(ShortString::from(id.clone()))
        .with_correlation_id(ShortString::from(id))
        .with_type("order.placed".into())
        .with_app_id("bench".into())
        .with_timestamp(time.timestamp() as u64)
}

async fn declare(channel: &Channel, topic: &str, queue: &str) {
    channel
        .exchange_declare(
            ShortString::from(topic),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    // The queue type busline declares by default, so both sides of the
    // ratio write to the same kind of queue.
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel
        .queue_declare(ShortString::from(queue), QueueDeclareOptions::durable(), args)
        .await
        .unwrap();
    channel
        .queue_bind(
            ShortString::from(queue),
            ShortString::from(topic),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

async fn raw_publish(conn: &Connection, topic: &str, n: u64) -> Duration {
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let start = Instant::now();
    let mut seq = 0;
    while seq < n {
        let end = (seq + WINDOW as u64).min(n);
        let mut confirms = Vec::with_capacity(WINDOW);
        for s in seq..end {
            let body = serde_json::to_vec(&order(s)).unwrap();
            confirms.push(
                channel
                    .basic_publish(
                        ShortString::from(topic),
                        "order.placed".into(),
                        BasicPublishOptions::default(),
                        &body,
                        raw_properties(s),
                    )
                    .await
                    .unwrap(),
            );
        }
        for c in futures::future::join_all(confirms).await {
            assert!(c.unwrap().is_ack());
        }
        seq = end;
    }
    start.elapsed()
}

async fn busline_publish(bus: &Bus, topic: &str, n: u64) -> Duration {
    let start = Instant::now();
    let mut seq = 0;
    while seq < n {
        let end = (seq + WINDOW as u64).min(n);
        let batch = (seq..end)
            .map(|s| DomainEvent::new(order(s)).with_key(format!("order-{s}")))
            .collect();
        bus.publish_batch(topic, batch).await.unwrap();
        seq = end;
    }
    start.elapsed()
}

async fn raw_consume(conn: &Connection, queue: &str, n: u64) -> Duration {
    let channel = conn.create_channel().await.unwrap();
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .unwrap();
    let start = Instant::now();
    let mut consumer = channel
        .basic_consume(
            ShortString::from(queue),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut got = 0;
    let mut sum = 0u64;
    while got < n {
        let d = consumer.next().await.unwrap().unwrap();
        let o: OrderPlaced = serde_json::from_slice(&d.data).unwrap();
        sum = sum.wrapping_add(o.total_cents);
        d.ack(BasicAckOptions::default()).await.unwrap();
        got += 1;
    }
    let took = start.elapsed();
    std::hint::black_box(sum);
    let _ = channel.close(200, "done".into()).await;
    took
}

/// Through the raw subscription: stream, decode with the bus's codec, ack.
async fn busline_consume_stream(bus: &Bus, topic: &str, group: &str, n: u64) -> Duration {
    let start = Instant::now();
    let mut sub = bus
        .subscribe(
            topic,
            group,
            SubscribeOptions::default().max_in_flight(PREFETCH as usize),
        )
        .await
        .unwrap();
    let mut got = 0;
    let mut sum = 0u64;
    while got < n {
        let d = sub.next().await.unwrap().unwrap();
        let raw = d.event().unwrap();
        let o: OrderPlaced = bus.codecs().decode(raw.content_type(), &raw.data.bytes).unwrap();
        sum = sum.wrapping_add(o.total_cents);
        d.ack().await.unwrap();
        got += 1;
    }
    std::hint::black_box(sum);
    start.elapsed()
}

/// Through a typed Router handler (a task per delivery, as applications run).
async fn busline_consume_router(bus: &Bus, topic: &str, group: &str, n: u64) -> Duration {
    let count = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let (c, d) = (count.clone(), done.clone());
    let start = Instant::now();
    let router = Router::new(bus.clone(), group)
        .with_max_in_flight(PREFETCH as usize)
        .on(topic, move |_ctx: Context, e: DomainEvent<OrderPlaced>| {
            let (c, d) = (c.clone(), d.clone());
            async move {
                std::hint::black_box(e.data.total_cents);
                if c.fetch_add(1, Ordering::SeqCst) + 1 == n {
                    d.notify_one();
                }
                Ok::<_, HandlerError>(())
            }
        })
        .start()
        .await
        .unwrap();
    done.notified().await;
    let took = start.elapsed();
    router.shutdown().await.unwrap();
    took
}

async fn cleanup(conn: &Connection, queues: &[String]) {
    let channel = conn.create_channel().await.unwrap();
    for q in queues {
        let _ = channel
            .queue_delete(ShortString::from(q.as_str()), QueueDeleteOptions::default())
            .await;
    }
}

fn main() {
    let n: u64 = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let url = url();
        let conn = Connection::connect(&url, ConnectionProperties::default()).await.unwrap();
        let rabbit = RabbitBus::connect(&url, "busline-bench", RabbitConfig::default())
            .await
            .unwrap();
        let bus = Bus::new(rabbit, BusSettings::default().with_service("bench"));
        let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let setup = conn.create_channel().await.unwrap();
        let mut queues = Vec::new();

        println!("RabbitMQ throughput, {n} events, {WINDOW} publishes in flight, prefetch {PREFETCH}");
        let mut pub_ratios = Vec::new();
        let mut stream_ratios = Vec::new();
        let mut router_ratios = Vec::new();
        let rounds: u32 = std::env::var("BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4);
        for round in 1..=rounds {
            // Two queues on each side, so the broker stores every event
            // twice for both: two raw queues, two busline groups.
            let raw_topic = format!("bench-raw-{run}-{round}");
            let raw_queues = [format!("{raw_topic}::a"), format!("{raw_topic}::b")];
            for q in &raw_queues {
                declare(&setup, &raw_topic, q).await;
            }
            let bus_topic = format!("bench-busline-{run}-{round}");
            let (stream_group, router_group) = ("stream", "router");
            bus.provision(&bus_topic, stream_group).await.unwrap();
            bus.provision(&bus_topic, router_group).await.unwrap();
            queues.extend(raw_queues.iter().cloned());
            // What provisioning declares on quorum queues: each group's
            // queue and parking queue, for the group and its DLQ. (Retry
            // buckets are declared at the first retry; nothing retries here.)
            for g in [stream_group, router_group] {
                for q in [format!("{bus_topic}::{g}"), format!("{bus_topic}.{g}.dlq::{g}")] {
                    queues.push(format!("{q}::unparseable"));
                    queues.push(q);
                }
            }

            let (raw_pub, bus_pub) = if round % 2 == 1 {
                let r = raw_publish(&conn, &raw_topic, n).await;
                (r, busline_publish(&bus, &bus_topic, n).await)
            } else {
                let b = busline_publish(&bus, &bus_topic, n).await;
                (raw_publish(&conn, &raw_topic, n).await, b)
            };
            let (r, b) = (rate(n, raw_pub), rate(n, bus_pub));
            println!(
                "round {round} publish  raw lapin {r:>9.0} ev/s   busline {b:>9.0} ev/s   ratio {:.3}",
                b / r
            );
            pub_ratios.push(b / r);

            // Alternate who goes first, so a drift of the shared broker does
            // not always favour the same side.
            let (raw_a, stream) = if round % 2 == 1 {
                let r = rate(n, raw_consume(&conn, &raw_queues[0], n).await);
                (r, rate(n, busline_consume_stream(&bus, &bus_topic, stream_group, n).await))
            } else {
                let s = rate(n, busline_consume_stream(&bus, &bus_topic, stream_group, n).await);
                (rate(n, raw_consume(&conn, &raw_queues[0], n).await), s)
            };
            let (raw_b, router) = if round % 2 == 1 {
                let r = rate(n, raw_consume(&conn, &raw_queues[1], n).await);
                (r, rate(n, busline_consume_router(&bus, &bus_topic, router_group, n).await))
            } else {
                let t = rate(n, busline_consume_router(&bus, &bus_topic, router_group, n).await);
                (rate(n, raw_consume(&conn, &raw_queues[1], n).await), t)
            };
            println!(
                "round {round} consume  raw lapin {raw_a:>9.0} ev/s   busline subscription {stream:>9.0} ev/s   ratio {:.3}",
                stream / raw_a
            );
            println!(
                "round {round} consume  raw lapin {raw_b:>9.0} ev/s   busline router       {router:>9.0} ev/s   ratio {:.3}",
                router / raw_b
            );
            stream_ratios.push(stream / raw_a);
            router_ratios.push(router / raw_b);
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        println!(
            "mean ratios busline/raw: publish {:.3}, consume (subscription) {:.3}, consume (router) {:.3}",
            mean(&pub_ratios),
            mean(&stream_ratios),
            mean(&router_ratios)
        );
        bus.shutdown().await;
        cleanup(&conn, &queues).await;
        let _ = conn.close(200, "done".into()).await;
    });
}
