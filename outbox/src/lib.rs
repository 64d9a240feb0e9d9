//! busline-outbox: the transactional outbox and inbox on PostgreSQL (sqlx).
//!
//! A business write and the events it causes commit together:
//! [`Outbox::publish`] writes the encoded envelope into the caller's own
//! transaction, and a [`Relay`] beside the service publishes committed rows
//! to the broker and deletes them once the broker has them. A rollback
//! publishes nothing; a crash between commit and publish only delays the
//! event. The relay publishes each row with the event id it was written
//! with, so brokers that deduplicate by id (NATS JetStream's
//! `Nats-Msg-Id`) and the [`Inbox`] recognise a row published twice.
//!
//! On the consuming side, [`Inbox::once`] records the event id in the
//! handler's own transaction, so the handler's database effects happen once
//! per group however often the event is delivered.
//!
//! ```no_run
//! # async fn demo(bus: busline_core::Bus, pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! use busline_outbox::{Outbox, OutboxTables, Relay, RelayOptions};
//! # #[derive(serde::Serialize, serde::Deserialize)] struct OrderCreated { id: String }
//! # impl busline_core::Event for OrderCreated { const TYPE: &'static str = "order.created"; }
//! let tables = OutboxTables::default();
//! tables.install(&pool).await?;
//! let outbox = Outbox::new(bus.clone(), tables.clone());
//!
//! let mut tx = pool.begin().await?;
//! sqlx::query("INSERT INTO orders (id) VALUES ($1)").bind("o-1").execute(&mut *tx).await?;
//! outbox.publish(&mut tx, "orders", OrderCreated { id: "o-1".into() }).await?;
//! tx.commit().await?; // the row and the event, or neither
//!
//! let relay = Relay::new(pool, bus, tables, RelayOptions::default()).start();
//! // ... on shutdown:
//! relay.shutdown().await?;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

mod error;
mod inbox;
mod outbox;
mod relay;
mod stored;
mod tables;

pub use error::{OutboxError, OutboxErrorKind};
pub use inbox::Inbox;
pub use outbox::{Outbox, Pending};
pub use relay::{Relay, RelayOptions, RelayStats, RunningRelay};
pub use tables::{OutboxTables, DEFAULT_MIGRATION};
