//! The inbox: a handler's database effects once per (group, event).

use std::sync::Arc;

use busline_core::Context;
use sqlx::{Postgres, Transaction};

use crate::{OutboxError, OutboxTables};

/// Records handled event ids in the handler's own transaction.
///
/// [`once`](Self::once) inserts (group, event id) into the inbox table in
/// `tx` and says whether it was new. The handler applies its effects only
/// then, in the same transaction: if it commits, the mark and the effects
/// are there together, and a redelivery finds the mark; if it rolls back,
/// neither is, and the redelivery applies them. A redelivery that arrives
/// while the first delivery's transaction is still open waits for it on
/// the row lock, then sees the mark.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool, ctx: busline_core::Context) -> Result<(), busline_outbox::OutboxError> {
/// use busline_outbox::{Inbox, OutboxTables};
/// let inbox = Inbox::new(&OutboxTables::default());
/// let mut tx = pool.begin().await.unwrap();
/// if inbox.once_for(&mut tx, &ctx).await? {
///     // reserve stock, on `tx`
/// }
/// tx.commit().await.unwrap();
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Inbox {
    insert: Arc<str>,
}

impl Inbox {
    /// The inbox of `tables`.
    pub fn new(tables: &OutboxTables) -> Self {
        Self {
            insert: format!(
                "INSERT INTO {} (group_name, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                tables.inbox()
            )
            .into(),
        }
    }

    /// Marks `event_id` handled by `group` in `tx`: `true` the first time,
    /// `false` when a committed transaction marked it before. While another
    /// transaction holds an uncommitted mark of the same event, this waits for
    /// it: `false` if it commits, `true` if it rolls back, so copies handled
    /// side by side still take effect once.
    pub async fn once(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        group: &str,
        event_id: &str,
    ) -> Result<bool, OutboxError> {
        let done = sqlx::query(&self.insert)
            .bind(group)
            .bind(event_id)
            .execute(&mut **tx)
            .await
            .map_err(OutboxError::database)?;
        Ok(done.rows_affected() == 1)
    }

    /// [`once`](Self::once) for the delivery a handler's context describes.
    pub async fn once_for(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        ctx: &Context,
    ) -> Result<bool, OutboxError> {
        self.once(tx, ctx.group(), ctx.event_id()).await
    }
}
