//! Writing events into the caller's transaction.

use std::time::Duration;

use busline_core::{Bus, DomainEvent, Event, EventId, RawEvent};
use sqlx::{Postgres, Transaction};

use crate::{stored, OutboxError, OutboxErrorKind, OutboxTables};

/// Writes events into the caller's transaction, for a [`Relay`](crate::Relay)
/// to publish once it commits.
///
/// The event is encoded by the bus's codec and content mode at once, so an
/// event that cannot be encoded fails the call, inside the transaction,
/// not later in the relay.
#[derive(Debug, Clone)]
pub struct Outbox {
    bus: Bus,
    tables: OutboxTables,
    insert: std::sync::Arc<str>,
}

/// What waits in the outbox ([`Outbox::pending`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Pending {
    /// Rows not yet published.
    pub rows: u64,
    /// How long the oldest of them has waited (zero when there is none).
    pub oldest: Duration,
    /// Rows the relay set aside: their envelope cannot be read, or the
    /// broker refused them for good (see `last_error`); they hold back
    /// later rows of their key.
    pub parked: u64,
}

impl Outbox {
    /// An outbox over `tables` (see [`OutboxTables::install`]), encoding
    /// with `bus`'s settings.
    pub fn new(bus: Bus, tables: OutboxTables) -> Self {
        let insert = format!(
            "WITH row AS (INSERT INTO {} (topic, event_id, ordering_key, headers, body) \
             VALUES ($1, $2, $3, $4, $5) RETURNING seq) \
             SELECT pg_notify($6, '') FROM row",
            tables.outbox()
        );
        Self {
            bus,
            tables,
            insert: insert.into(),
        }
    }

    /// The tables.
    pub fn tables(&self) -> &OutboxTables {
        &self.tables
    }

    /// Writes `data` as a new event for `topic` into `tx`; returns the
    /// event id.
    pub async fn publish<E: Event>(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        topic: &str,
        data: E,
    ) -> Result<EventId, OutboxError> {
        self.publish_event(tx, topic, DomainEvent::new(data)).await
    }

    /// Writes a prepared envelope (key, correlation, extensions) into `tx`;
    /// returns the event id.
    pub async fn publish_event<E: Event>(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        topic: &str,
        event: DomainEvent<E>,
    ) -> Result<EventId, OutboxError> {
        let raw = self
            .bus
            .encode(topic, event)
            .map_err(|e| OutboxError::new(OutboxErrorKind::Encode).with_source(e))?;
        let id = raw.id.clone();
        self.publish_raw(tx, topic, raw).await?;
        Ok(id)
    }

    /// Writes an encoded envelope into `tx` as it is.
    pub async fn publish_raw(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        topic: &str,
        event: RawEvent,
    ) -> Result<(), OutboxError> {
        let headers = stored::headers_of(&event)
            .map_err(|e| OutboxError::new(OutboxErrorKind::Encode).with_source(e))?;
        sqlx::query(&self.insert)
            .bind(topic)
            .bind(event.id.as_str())
            .bind(event.key.as_deref())
            .bind(headers)
            .bind(event.data.bytes.as_ref())
            .bind(self.tables.channel())
            .execute(&mut **tx)
            .await
            .map_err(OutboxError::database)?;
        Ok(())
    }

    /// How many rows wait, and for how long the oldest has (10 s at most,
    /// then a `Database` error).
    pub async fn pending(&self, pool: &sqlx::PgPool) -> Result<Pending, OutboxError> {
        pending_of(pool, &self.tables, Duration::from_secs(10)).await
    }
}

/// [`Outbox::pending`] of `tables`, within `limit`.
pub(crate) async fn pending_of(
    pool: &sqlx::PgPool,
    tables: &OutboxTables,
    limit: Duration,
) -> Result<Pending, OutboxError> {
    let query = format!(
        "SELECT count(*), EXTRACT(EPOCH FROM now() - min(created_at))::float8, \
         count(*) FILTER (WHERE lease_until = 'infinity') FROM {}",
        tables.outbox()
    );
    let row: (i64, Option<f64>, i64) = tokio::time::timeout(limit, sqlx::query_as(&query).fetch_one(pool))
        .await
        .map_err(|_| {
            OutboxError::new(OutboxErrorKind::Database).with_source(format!("no answer within {limit:?}"))
        })?
        .map_err(OutboxError::database)?;
    let (rows, oldest, parked) = row;
    Ok(Pending {
        rows: rows.max(0) as u64,
        oldest: Duration::from_secs_f64(oldest.unwrap_or(0.0).max(0.0)),
        parked: parked.max(0) as u64,
    })
}
