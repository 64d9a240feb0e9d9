//! The order service writes an order row and its `OrderPlaced` event in one
//! transaction; the inventory handler reserves stock and marks the inbox in
//! one transaction; the relay is stopped with events still in the outbox
//! and started again.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/test \
//!     cargo run -p busline-outbox --example shop
//! # on a broker: BUSLINE_URL=nats://127.0.0.1:4222 (or amqp://…, kafka://…) in front
//! ```

use std::time::Duration;

use busline::{Context, DomainEvent, Event, HandlerError, Router};
use busline_outbox::{Inbox, Outbox, OutboxTables, Relay, RelayOptions};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: String,
    sku: String,
}

impl Event for OrderPlaced {
    const TYPE: &'static str = "shop.order.placed";
}

type Error = Box<dyn std::error::Error + Send + Sync>;

async fn place_order(pool: &PgPool, outbox: &Outbox, order_id: &str, commit: bool) -> Result<(), Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO shop_orders (id, sku) VALUES ($1, 'sku-1')")
        .bind(order_id)
        .execute(&mut *tx)
        .await?;
    let event = OrderPlaced {
        order_id: order_id.into(),
        sku: "sku-1".into(),
    };
    outbox
        .publish_event(&mut tx, "shop.orders", DomainEvent::new(event).with_key(order_id))
        .await?;
    if commit {
        tx.commit().await?;
    } else {
        tx.rollback().await?;
    }
    Ok(())
}

/// Waits (at most 30 s) until `n` reservations are made.
async fn until_reserved(pool: &PgPool, n: i32) -> Result<(), Error> {
    tokio::time::timeout(Duration::from_secs(30), async {
        while reserved(pool).await? < n {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok::<_, Error>(())
    })
    .await
    .map_err(|_| format!("{n} reservations not made within 30 s"))?
}

async fn reserved(pool: &PgPool) -> Result<i32, Error> {
    let (n,): (i32,) = sqlx::query_as("SELECT reserved FROM shop_stock WHERE sku = 'sku-1'")
        .fetch_one(pool)
        .await?;
    Ok(n)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let database = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/test".into());
    let url = std::env::var("BUSLINE_URL").unwrap_or_else(|_| "memory://shop".into());
    let pool = PgPool::connect(&database).await?;
    let bus = busline::connect_url(&url).await?;

    let tables = OutboxTables::new("shop_outbox", "shop_inbox")?;
    tables.install(&pool).await?;
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS shop_orders, shop_stock; \
         CREATE TABLE shop_orders (id text PRIMARY KEY, sku text NOT NULL); \
         CREATE TABLE shop_stock (sku text PRIMARY KEY, reserved integer NOT NULL); \
         INSERT INTO shop_stock VALUES ('sku-1', 0); \
         TRUNCATE shop_outbox, shop_inbox;",
    )
    .execute(&pool)
    .await?;

    // Inventory: the reservation and the inbox mark commit together.
    let inbox = Inbox::new(&tables);
    let inventory = Router::new(bus.clone(), "inventory")
        .with_state((pool.clone(), inbox))
        .on(
            "shop.orders",
            |busline::State((pool, inbox)): busline::State<(PgPool, Inbox)>,
             ctx: Context,
             e: DomainEvent<OrderPlaced>| async move {
                let mut tx = pool.begin().await.map_err(HandlerError::retryable)?;
                if inbox
                    .once_for(&mut tx, &ctx)
                    .await
                    .map_err(HandlerError::retryable)?
                {
                    sqlx::query("UPDATE shop_stock SET reserved = reserved + 1 WHERE sku = $1")
                        .bind(&e.data.sku)
                        .execute(&mut *tx)
                        .await
                        .map_err(HandlerError::retryable)?;
                    println!("inventory: reserved {} for {}", e.data.sku, e.data.order_id);
                } else {
                    println!("inventory: {} seen before, nothing to do", e.data.order_id);
                }
                tx.commit().await.map_err(HandlerError::retryable)?;
                Ok::<_, HandlerError>(())
            },
        )
        .start()
        .await?;

    let outbox = Outbox::new(bus.clone(), tables.clone());
    let options = RelayOptions::default().with_poll_interval(Duration::from_millis(200));
    let relay = Relay::new(pool.clone(), bus.clone(), tables.clone(), options.clone()).start();
    place_order(&pool, &outbox, "o-1", true).await?;
    place_order(&pool, &outbox, "o-2", false).await?; // rolled back: no event
    place_order(&pool, &outbox, "o-3", true).await?;
    until_reserved(&pool, 2).await?;

    // The relay goes away; orders keep committing into the outbox.
    let stats = relay.shutdown().await?;
    println!("relay stopped after {} events", stats.published);
    place_order(&pool, &outbox, "o-4", true).await?;
    println!("waiting in the outbox: {:?}", outbox.pending(&pool).await?);

    let relay = Relay::new(pool.clone(), bus.clone(), tables, options).start();
    until_reserved(&pool, 3).await?;
    relay.shutdown().await?;
    inventory.shutdown().await?;
    bus.shutdown().await;
    println!(
        "reserved: {} (o-1, o-3, o-4; o-2 rolled back)",
        reserved(&pool).await?
    );
    Ok(())
}
