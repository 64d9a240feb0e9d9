//! The memory bus end to end (typed publish → router → handler → ack)
//! against a raw baseline doing the same work by hand: serde_json encode, a
//! bounded tokio channel, serde_json decode, a handler call.
//!
//! Prints events/s of both and the ratio, publish-to-handler latency p50/p99
//! at a steady rate, and memory held by a backlog.
//!
//! `cargo bench --bench memory` (set `BENCH_EVENTS` to change the count).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use busline::memory::{MemoryBroker, MemoryConfig};
use busline::{Bus, BusSettings, Context, DomainEvent, Event, HandlerError, Router};
use busline_testkit::bench::{env_u64, median};
use busline_testkit::support::Countdown;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: u64,
    customer: String,
    total_cents: u64,
    sent_nanos: u64,
}

impl Event for OrderPlaced {
    const TYPE: &'static str = "bench.order_placed";
}

fn order(i: u64, sent_nanos: u64) -> OrderPlaced {
    OrderPlaced {
        order_id: i,
        customer: "customer-4711".into(),
        total_cents: 1999 + i % 100,
        sent_nanos,
    }
}

struct Busline {
    bus: Bus,
    done: Arc<Countdown>,
    latencies: Arc<std::sync::Mutex<Vec<u64>>>,
    record_latency: Arc<std::sync::atomic::AtomicBool>,
    _router: busline::RunningRouter,
}

static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// The memory bus's wire mapping (its default) unless `BENCH_WIRE_MAPPING=0`.
fn wire_mapping() -> bool {
    std::env::var("BENCH_WIRE_MAPPING").map_or(true, |v| v != "0")
}

fn now_nanos() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

async fn busline_setup(capacity: usize) -> Busline {
    let broker = MemoryBroker::with_config(MemoryConfig {
        queue_capacity: capacity,
        wire_mapping: wire_mapping(),
    });
    let bus = Bus::new(broker.connect(), BusSettings::default().with_service("bench"));
    let done = Arc::new(Countdown::default());
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record_latency = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (d, l, r) = (done.clone(), latencies.clone(), record_latency.clone());
    let router = Router::new(bus.clone(), "billing")
        .with_max_in_flight(256)
        .on("orders", move |_ctx: Context, e: DomainEvent<OrderPlaced>| {
            let (d, l, r) = (d.clone(), l.clone(), r.clone());
            async move {
                if r.load(Ordering::Relaxed) {
                    l.lock().unwrap().push(now_nanos() - e.data.sent_nanos);
                }
                std::hint::black_box(&e.data);
                d.hit();
                Ok::<_, HandlerError>(())
            }
        })
        .start()
        .await
        .expect("router starts");
    Busline {
        bus,
        done,
        latencies,
        record_latency,
        _router: router,
    }
}

struct Raw {
    tx: mpsc::Sender<Vec<u8>>,
    done: Arc<Countdown>,
    latencies: Arc<std::sync::Mutex<Vec<u64>>>,
    record_latency: Arc<std::sync::atomic::AtomicBool>,
}

/// The baseline: what a hand-written pipeline on tokio does for the same
/// typed event.
fn raw_setup(capacity: usize) -> Raw {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(capacity);
    let done = Arc::new(Countdown::default());
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record_latency = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (d, l, r) = (done.clone(), latencies.clone(), record_latency.clone());
    tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            let e: OrderPlaced = serde_json::from_slice(&bytes).expect("decodes");
            if r.load(Ordering::Relaxed) {
                l.lock().unwrap().push(now_nanos() - e.sent_nanos);
            }
            std::hint::black_box(&e);
            d.hit();
        }
    });
    Raw {
        tx,
        done,
        latencies,
        record_latency,
    }
}

async fn busline_throughput(b: &Busline, n: u64) -> f64 {
    b.done.reset(n);
    let start = Instant::now();
    for i in 0..n {
        b.bus.publish("orders", order(i, 0)).await.expect("publish");
    }
    b.done.wait(n).await;
    n as f64 / start.elapsed().as_secs_f64()
}

async fn raw_throughput(r: &Raw, n: u64) -> f64 {
    r.done.reset(n);
    let start = Instant::now();
    for i in 0..n {
        let bytes = serde_json::to_vec(&order(i, 0)).expect("encodes");
        r.tx.send(bytes).await.expect("send");
    }
    r.done.wait(n).await;
    n as f64 / start.elapsed().as_secs_f64()
}

/// Publishes `n` events at about `rate` per second, one at a time, and waits
/// until all are handled (the handlers record the latencies).
async fn latency<F, Fut>(n: u64, rate: u64, done: &Countdown, publish: F)
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    done.reset(n);
    let gap = Duration::from_nanos(1_000_000_000 / rate);
    let mut next = tokio::time::Instant::now();
    for i in 0..n {
        publish(i).await;
        next += gap;
        tokio::time::sleep_until(next).await;
    }
    done.wait(n).await;
}

fn percentile(sorted: &[u64], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Duration::from_nanos(sorted[idx])
}

/// The system allocator, counting the bytes live at any moment: the memory a
/// backlog holds, independent of what the allocator keeps cached.
struct Counting;

static LIVE_BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_kib() -> u64 {
    LIVE_BYTES.load(Ordering::Relaxed) / 1024
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env_u64("BENCH_EVENTS", 500_000);
    let capacity = 100_000;
    now_nanos();
    println!(
        "memory bus (wire mapping {}) vs raw tokio channel + serde_json, {n} events per run, 2 worker threads",
        if wire_mapping() { "on" } else { "off: BENCH_WIRE_MAPPING=0" }
    );

    let b = busline_setup(capacity).await;
    let r = raw_setup(capacity);
    // One side alone, once, for instruction counting under callgrind.
    match std::env::var("BENCH_ONLY").as_deref() {
        Ok("busline-once") => return println!("{:.0} ev/s", busline_throughput(&b, n).await),
        Ok("raw-once") => return println!("{:.0} ev/s", raw_throughput(&r, n).await),
        _ => {}
    }
    // Warm up both paths, then alternate runs so that neither gets a
    // quieter machine.
    busline_throughput(&b, n / 10).await;
    raw_throughput(&r, n / 10).await;
    let (mut bus_runs, mut raw_runs) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        bus_runs.push(busline_throughput(&b, n).await);
        raw_runs.push(raw_throughput(&r, n).await);
    }
    let (bus_rate, raw_rate) = (median(bus_runs), median(raw_runs));
    println!(
        "throughput  busline {:>10.0} ev/s   raw {:>10.0} ev/s   ratio {:.2}",
        bus_rate,
        raw_rate,
        bus_rate / raw_rate
    );

    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "throughput") {
        return;
    }
    // Latency at a steady 20,000 events/s, below both paths' capacity.
    let samples = 20_000;
    b.record_latency.store(true, Ordering::Relaxed);
    latency(samples, 20_000, &b.done, |i| {
        let bus = b.bus.clone();
        async move {
            bus.publish("orders", order(i, now_nanos()))
                .await
                .expect("publish");
        }
    })
    .await;
    r.record_latency.store(true, Ordering::Relaxed);
    latency(samples, 20_000, &r.done, |i| {
        let tx = r.tx.clone();
        async move {
            tx.send(serde_json::to_vec(&order(i, now_nanos())).unwrap())
                .await
                .unwrap();
        }
    })
    .await;
    for (name, lat) in [("busline", &b.latencies), ("raw", &r.latencies)] {
        let mut v = lat.lock().unwrap().clone();
        v.sort_unstable();
        println!(
            "latency     {name:<8} p50 {:>9.1?}   p99 {:>9.1?}   ({} samples at 20,000 ev/s)",
            percentile(&v, 0.50),
            percentile(&v, 0.99),
            v.len()
        );
    }
    drop(b);
    drop(r);

    // Memory held by a backlog of 1M events nobody consumes yet.
    let backlog: u64 = 1_000_000;
    let before = live_kib();
    let broker = MemoryBroker::with_config(MemoryConfig {
        queue_capacity: backlog as usize,
        wire_mapping: wire_mapping(),
    });
    let bus = Bus::new(broker.connect(), BusSettings::default().with_service("bench"));
    bus.provision("backlog", "later").await.unwrap();
    for i in 0..backlog {
        bus.publish("backlog", order(i, 0)).await.unwrap();
    }
    let bus_kib = live_kib().saturating_sub(before);
    drop(bus);
    drop(broker);
    let before = live_kib();
    let (tx, rx) = mpsc::channel::<Vec<u8>>(backlog as usize);
    for i in 0..backlog {
        tx.send(serde_json::to_vec(&order(i, 0)).unwrap()).await.unwrap();
    }
    let raw_kib = live_kib().saturating_sub(before).max(1);
    drop((tx, rx));
    println!(
        "backlog     busline {:>7.1} MiB   raw {:>7.1} MiB   ratio {:.2}   (1,000,000 events waiting, bytes allocated)",
        bus_kib as f64 / 1024.0,
        raw_kib as f64 / 1024.0,
        bus_kib as f64 / raw_kib as f64
    );
}
