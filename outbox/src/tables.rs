//! The outbox and inbox tables: names, schema, installation.

use std::sync::Arc;

use crate::{OutboxError, OutboxErrorKind};

/// The schema of the default table names, as shipped in `migrations/` for
/// applications that run their migrations with `sqlx migrate` (or any
/// other tool); [`OutboxTables::install`] creates the same for any names.
pub const DEFAULT_MIGRATION: &str = include_str!("../migrations/20261202000000_busline_outbox.sql");

/// Names of the outbox and inbox tables.
///
/// Names are plain identifiers (`a-z`, `0-9`, `_`, at most 48 characters,
/// not starting with a digit): they are written into SQL, never quoted or
/// taken from input. The relay's `LISTEN` channel is `<outbox>_ready`.
///
/// ```
/// use busline_outbox::OutboxTables;
/// let tables = OutboxTables::new("orders_outbox", "orders_inbox").unwrap();
/// assert_eq!(tables.outbox(), "orders_outbox");
/// assert!(OutboxTables::new("orders; drop table x", "inbox").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxTables {
    outbox: Arc<str>,
    inbox: Arc<str>,
}

impl Default for OutboxTables {
    /// `busline_outbox` and `busline_inbox`.
    fn default() -> Self {
        Self {
            outbox: "busline_outbox".into(),
            inbox: "busline_inbox".into(),
        }
    }
}

fn check(name: &str) -> Result<Arc<str>, OutboxError> {
    let ok = (1..=48).contains(&name.len())
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(name.into())
    } else {
        Err(
            OutboxError::new(OutboxErrorKind::InvalidTableName).with_source(format!(
            "`{name}` is not a plain table name (a-z, 0-9 and `_`, at most 48, not starting with a digit)"
        )),
        )
    }
}

impl OutboxTables {
    /// Tables of the given names.
    pub fn new(outbox: &str, inbox: &str) -> Result<Self, OutboxError> {
        Ok(Self {
            outbox: check(outbox)?,
            inbox: check(inbox)?,
        })
    }

    /// The outbox table.
    pub fn outbox(&self) -> &str {
        &self.outbox
    }

    /// The inbox table.
    pub fn inbox(&self) -> &str {
        &self.inbox
    }

    /// The channel the relay listens on and [`Outbox`](crate::Outbox)
    /// notifies when a transaction with events commits.
    pub fn channel(&self) -> String {
        format!("{}_ready", self.outbox)
    }

    /// The schema, `CREATE ... IF NOT EXISTS` throughout.
    pub fn schema(&self) -> String {
        DEFAULT_MIGRATION
            .replace("busline_outbox", &self.outbox)
            .replace("busline_inbox", &self.inbox)
    }

    /// Creates the tables and indexes that are missing, within 30 s. Safe
    /// to call from several processes at once (they take turns on an
    /// advisory lock).
    pub async fn install(&self, pool: &sqlx::PgPool) -> Result<(), OutboxError> {
        const LIMIT: std::time::Duration = std::time::Duration::from_secs(30);
        tokio::time::timeout(LIMIT, self.install_now(pool))
            .await
            .map_err(|_| {
                OutboxError::new(OutboxErrorKind::Database)
                    .with_source(format!("installing the tables took over {LIMIT:?}"))
            })?
    }

    async fn install_now(&self, pool: &sqlx::PgPool) -> Result<(), OutboxError> {
        let mut tx = pool.begin().await.map_err(OutboxError::database)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("busline-outbox-install:{}", self.outbox))
            .execute(&mut *tx)
            .await
            .map_err(OutboxError::database)?;
        sqlx::raw_sql(&self.schema())
            .execute(&mut *tx)
            .await
            .map_err(OutboxError::database)?;
        tx.commit().await.map_err(OutboxError::database)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_identifiers() {
        for bad in [
            "",
            "1outbox",
            "Outbox",
            "out-box",
            "out box",
            "x\"y",
            &"a".repeat(49),
        ] {
            assert!(OutboxTables::new(bad, "inbox").is_err(), "{bad:?}");
            assert!(OutboxTables::new("outbox", bad).is_err(), "{bad:?}");
        }
        assert!(OutboxTables::new("o_1", "i_2").is_ok());
    }

    #[test]
    fn the_shipped_migration_is_the_schema_of_the_default_names() {
        assert_eq!(OutboxTables::default().schema(), DEFAULT_MIGRATION);
        let custom = OutboxTables::new("shop_out", "shop_in").unwrap().schema();
        assert!(!custom.contains("busline_"), "{custom}");
        assert!(custom.contains("CREATE TABLE IF NOT EXISTS shop_out"));
        assert!(custom.contains("CREATE TABLE IF NOT EXISTS shop_in"));
    }
}
