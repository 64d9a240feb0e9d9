//! The order flow from microservice practice, on one bus:
//!
//! - the order service publishes `OrderCreated`;
//! - inventory reserves the items and publishes `ItemsReserved` in the same
//!   correlation chain;
//! - payment fails twice (a flaky gateway) and then succeeds: retries with
//!   backoff;
//! - a legacy producer sends a malformed `OrderCreated`: it lands in the
//!   inventory group's dead-letter queue, an operator repairs it, and it is
//!   replayed and handled.
//!
//! Runs on the in-memory bus by default and on any broker given by
//! `BUSLINE_URL` (with that backend's cargo feature enabled):
//!
//! ```text
//! cargo run --example quickstart
//! BUSLINE_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run --example quickstart --features rabbitmq
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use busline::{
    Attempt, BusConfig, Context, DomainEvent, Event, HandlerError, Payload, Repair, ReplayOptions,
    RetryPolicy, Router, State,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderCreated {
    order_id: String,
    items: Vec<String>,
    total_cents: u64,
}

impl Event for OrderCreated {
    const TYPE: &'static str = "order.created";
    const VERSION: u32 = 2;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ItemsReserved {
    order_id: String,
    total_cents: u64,
}

impl Event for ItemsReserved {
    const TYPE: &'static str = "inventory.items_reserved";
}

/// Prints one line of the trace, with time since start.
#[derive(Clone)]
struct Trace {
    start: Instant,
    paid: Arc<(Mutex<Vec<String>>, Notify)>,
}

impl Trace {
    fn line(&self, who: &str, what: impl AsRef<str>) {
        let ms = self.start.elapsed().as_millis();
        println!("{ms:>6} ms  {who:<10} {}", what.as_ref());
    }

    fn paid(&self, order: &str) {
        self.paid.0.lock().unwrap().push(order.to_owned());
        self.paid.1.notify_waiters();
    }

    async fn wait_paid(&self, n: usize) -> Result<(), String> {
        let wait = async {
            loop {
                let notified = self.paid.1.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.paid.0.lock().unwrap().len() >= n {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .map_err(|_| format!("timed out waiting for {n} paid orders"))
    }
}

/// Inventory: reserves the items and publishes `ItemsReserved` as a
/// consequence of the order (same correlation id, the order as its cause).
async fn reserve_items(
    State(t): State<Trace>,
    ctx: Context,
    e: DomainEvent<OrderCreated>,
) -> Result<(), HandlerError> {
    t.line(
        "inventory",
        format!(
            "reserving {:?} for {} (correlation …{})",
            e.data.items,
            e.data.order_id,
            short(&e.correlation_id)
        ),
    );
    let reserved = ItemsReserved {
        order_id: e.data.order_id.clone(),
        total_cents: e.data.total_cents,
    };
    ctx.publish("inventory", reserved).await?;
    Ok(())
}

/// Payment: the gateway times out on the first two attempts of o-1002.
async fn charge(
    State(t): State<Trace>,
    Attempt(attempt): Attempt,
    e: DomainEvent<ItemsReserved>,
) -> Result<(), HandlerError> {
    let order = &e.data.order_id;
    if order == "o-1002" && attempt <= 2 {
        t.line(
            "payment",
            format!("{order}: gateway timeout on attempt {attempt}"),
        );
        return Err(HandlerError::retryable("payment gateway timeout"));
    }
    t.line(
        "payment",
        format!(
            "{order}: charged {:.2} on attempt {attempt} (correlation …{}, caused by …{})",
            e.data.total_cents as f64 / 100.0,
            short(&e.correlation_id),
            short(e.causation_id.as_deref().unwrap_or("-")),
        ),
    );
    t.paid(order);
    Ok(())
}

fn short(id: &str) -> &str {
    &id[id.len().saturating_sub(6)..]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = BusConfig::from_env()?
        .with_service("order-service")
        .with_retry(RetryPolicy::default().with_backoff(Duration::from_millis(100), Duration::from_secs(2)));
    println!("busline quickstart on {}", config.url);
    let bus = busline::connect(&config).await?;
    let trace = Trace {
        start: Instant::now(),
        paid: Arc::default(),
    };

    // Inventory reserves the items, then tells payment, in the same chain;
    // payment's gateway times out on the first two attempts of one order.
    // Both are plain async fns taking the trace from the routers' state.
    let inventory = Router::new(bus.clone(), "inventory")
        .with_state(trace.clone())
        .on("orders", reserve_items)
        .start()
        .await?;
    let payment = Router::new(bus.clone(), "payment")
        .with_state(trace.clone())
        .on("inventory", charge)
        .start()
        .await?;

    // The order service publishes two well-formed orders.
    for (id, items, total) in [
        ("o-1001", vec!["book"], 1250),
        ("o-1002", vec!["lamp", "bulb"], 3999),
    ] {
        let order = OrderCreated {
            order_id: id.into(),
            items: items.into_iter().map(String::from).collect(),
            total_cents: total,
        };
        let event = DomainEvent::new(order).with_key(id);
        let event_id = bus.publish_event("orders", event).await?;
        trace.line(
            "orders",
            format!("published order.created {id} (id …{})", short(&event_id)),
        );
    }

    // A legacy producer writes the total as a decimal string.
    let legacy = bus.encode(
        "orders",
        DomainEvent::new(OrderCreated {
            order_id: "o-1003".into(),
            items: vec!["desk".into()],
            total_cents: 0,
        })
        .with_source("legacy-shop"),
    )?;
    let malformed = legacy.map_data(|payload| {
        Payload::new(
            payload.content_type,
            r#"{"order_id":"o-1003","items":["desk"],"total_cents":"249.00"}"#,
        )
    });
    bus.publish_raw("orders", malformed).await?;
    trace.line(
        "legacy",
        "published order.created o-1003 with total_cents as a string",
    );

    trace.wait_paid(2).await?;

    // The operator looks at the dead-letter queue and replays it, repaired.
    let report = bus
        .replay_dead_letters_with(
            "orders",
            "inventory",
            ReplayOptions::default()
                .max(1)
                .idle_timeout(Duration::from_secs(10)),
            |mut event, letter| {
                if let Some(letter) = letter {
                    trace.line(
                        "operator",
                        format!(
                            "dead letter …{} from {}: {}",
                            short(&event.id),
                            letter.group,
                            letter.reason
                        ),
                    );
                    trace.line("operator", format!("  error: {}", letter.error));
                }
                match repair_total(&event.data.bytes) {
                    Some(fixed) => {
                        event.data.bytes = fixed.into();
                        trace.line("operator", "repaired total_cents, replaying");
                        Repair::Replay(event)
                    }
                    None => Repair::Keep,
                }
            },
        )
        .await?;
    trace.line("operator", format!("replayed {} dead letter(s)", report.moved));
    trace.wait_paid(3).await?;

    let inventory_stats = inventory.shutdown().await?;
    let payment_stats = payment.shutdown().await?;
    trace.line(
        "summary",
        format!(
            "inventory handled {} / dead-lettered {}; payment handled {} / retried {}",
            inventory_stats.handled,
            inventory_stats.dead_lettered,
            payment_stats.handled,
            payment_stats.retried
        ),
    );
    bus.shutdown().await;
    Ok(())
}

/// Turns `"total_cents": "249.00"` into `"total_cents": 24900`.
fn repair_total(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut value: HashMap<String, serde_json::Value> = serde_json::from_slice(bytes).ok()?;
    let text = value.get("total_cents")?.as_str()?.to_owned();
    let (units, cents) = text.split_once('.').unwrap_or((&text, "0"));
    let cents = units.parse::<u64>().ok()? * 100 + format!("{cents:0<2}")[..2].parse::<u64>().ok()?;
    value.insert("total_cents".into(), cents.into());
    serde_json::to_vec(&value).ok()
}
