//! What the brokers' throughput benches print the same way: several rounds
//! of the raw client and of busline, the best round of each (the one least
//! disturbed by the broker sharing the machine), their ratio and every round.

use std::time::Duration;

use busline_core::Event;
use serde::{Deserialize, Serialize};

/// The event the Kafka and NATS benches publish: a sequence number (which
/// the consuming side sums to check that every event arrived once), an
/// order id and a total.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// Position in the run, from 0.
    pub seq: u64,
    /// `order-` and the sequence number.
    pub order_id: String,
    /// Seven cents per sequence number.
    pub total_cents: u64,
}

impl Event for OrderPlaced {
    const TYPE: &'static str = "order.placed";
}

/// The `seq`th event of a run.
pub fn order(seq: u64) -> OrderPlaced {
    OrderPlaced {
        seq,
        order_id: format!("order-{seq:08}"),
        total_cents: seq * 7,
    }
}

/// Events per second of `n` events in `elapsed`.
pub fn rate(n: u64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

/// The best rate of the rounds.
pub fn best(n: u64, rounds: &[Duration]) -> f64 {
    rounds.iter().map(|d| rate(n, *d)).fold(0.0, f64::max)
}

/// Prints one line: the best raw and busline rates, the ratio busline/raw,
/// and the rate of every round.
///
/// ```
/// use std::time::Duration;
/// busline_testkit::bench::report(
///     "publish",
///     1_000,
///     &[Duration::from_millis(10)],
///     &[Duration::from_millis(11), Duration::from_millis(12)],
/// );
/// ```
pub fn report(what: &str, n: u64, raw: &[Duration], busline: &[Duration]) {
    let (r, b) = (best(n, raw), best(n, busline));
    let each = |ds: &[Duration]| {
        ds.iter()
            .map(|d| format!("{:.0}", rate(n, *d)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "{what:<28} raw {r:>10.0} ev/s   busline {b:>10.0} ev/s   ratio busline/raw {:.3}   (rounds: raw {} | busline {})",
        b / r,
        each(raw),
        each(busline)
    );
}

/// A number from the environment (`BENCH_N`, `BENCH_ROUNDS`), or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median of `values` (the upper one of an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}
