//! The cost of the layer stack on the memory bus: the same router and
//! handler, bare and wrapped in `default_stack()` (tracing + metrics), and
//! in a full resilience stack (plus timeout, circuit breaker, bulkhead,
//! rate limit far above the load, in-memory dedup), in one run, runs
//! alternating. No tracing subscriber or metrics recorder is installed: this
//! is the layers' own overhead, not an exporter's.
//!
//! `cargo bench -p busline-layers --bench stack` (`BENCH_EVENTS` sets the
//! events per run, default 100,000; `BENCH_RUNS` the rounds, default 11).

use std::sync::Arc;
use std::time::{Duration, Instant};

use busline_core::{Bus, BusSettings, DomainEvent, Event, HandlerError, Router, RunningRouter};
use busline_layers::{
    default_stack, BulkheadLayer, CircuitBreakerLayer, DefaultStack, MemoryDedupStore, RateLimitLayer,
    RouterExt,
};
use busline_memory::{MemoryBroker, MemoryConfig};
use busline_testkit::bench::{env_u64, median};
use busline_testkit::support::Countdown;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: u64,
    customer: String,
    total_cents: u64,
}

impl Event for OrderPlaced {
    const TYPE: &'static str = "bench.order_placed";
}

struct Setup {
    bus: Bus,
    done: Arc<Countdown>,
    _router: RunningRouter,
}

fn handler(
    done: Arc<Countdown>,
) -> impl Fn(DomainEvent<OrderPlaced>) -> std::future::Ready<Result<(), HandlerError>>
       + Clone
       + Send
       + Sync
       + 'static {
    move |e: DomainEvent<OrderPlaced>| {
        std::hint::black_box(&e.data);
        done.hit();
        std::future::ready(Ok(()))
    }
}

async fn setup(stack: Option<DefaultStack>) -> Setup {
    let broker = MemoryBroker::with_config(MemoryConfig {
        queue_capacity: 100_000,
        ..MemoryConfig::default()
    });
    let bus = Bus::new(broker.connect(), BusSettings::default().with_service("bench"));
    let done = Arc::new(Countdown::default());
    let router = Router::new(bus.clone(), "billing").with_max_in_flight(256);
    let router = match stack {
        None => router.on("orders", handler(done.clone())).start().await,
        Some(stack) => {
            router
                .with_stack(stack)
                .on("orders", handler(done.clone()))
                .start()
                .await
        }
    }
    .expect("router starts");
    Setup {
        bus,
        done,
        _router: router,
    }
}

async fn throughput(s: &Setup, n: u64) -> f64 {
    s.done.reset(n);
    let start = Instant::now();
    for i in 0..n {
        let order = OrderPlaced {
            order_id: i,
            customer: "customer-4711".into(),
            total_cents: 1999 + i % 100,
        };
        s.bus.publish("orders", order).await.expect("publish");
    }
    s.done.wait(n).await;
    n as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env_u64("BENCH_EVENTS", 100_000);
    let runs = env_u64("BENCH_RUNS", 11) as usize;
    println!("layer stack on the memory bus, {n} events per run, {runs} runs each, 2 worker threads");
    let full = default_stack()
        .with_timeout(Duration::from_secs(30))
        .with_circuit_breaker(CircuitBreakerLayer::new())
        .with_bulkhead(BulkheadLayer::new(1024))
        .with_rate_limit(RateLimitLayer::per_second(1e9).with_burst(1_000_000))
        .with_dedup(Arc::new(MemoryDedupStore::new(
            Duration::from_secs(60),
            1_000_000,
        )));
    let setups = [
        ("bare router", setup(None).await),
        ("default_stack()", setup(Some(default_stack())).await),
        ("full stack", setup(Some(full)).await),
    ];
    for (_, s) in &setups {
        throughput(s, n / 10).await;
    }
    // Rounds alternate the setups; each round gives a ratio to the bare
    // router measured moments apart, and the median of those ratios is
    // what a noisy 2-core machine can still tell.
    let mut rates = vec![Vec::new(); setups.len()];
    let mut ratios = vec![Vec::new(); setups.len()];
    for round in 0..runs {
        let mut this_round = vec![0.0; setups.len()];
        // Start each round with a different setup.
        for k in 0..setups.len() {
            let i = (k + round) % setups.len();
            this_round[i] = throughput(&setups[i].1, n).await;
        }
        for i in 0..setups.len() {
            rates[i].push(this_round[i]);
            ratios[i].push(this_round[i] / this_round[0]);
        }
    }
    for (i, (name, _)) in setups.iter().enumerate() {
        let ratio = median(ratios[i].clone());
        println!(
            "{name:<16} {:>10.0} ev/s (median)   ratio to bare {:.3} (median of {runs} rounds)   overhead {:>5.1}%",
            median(rates[i].clone()),
            ratio,
            (1.0 / ratio - 1.0) * 100.0
        );
    }
}
