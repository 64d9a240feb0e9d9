//! [`PostgresDedupStore`]: a durable [`DedupStore`] on PostgreSQL
//! (feature `postgres`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use busline_core::BoxError;
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

use crate::dedup::DedupStore;

/// A [`DedupStore`] in a PostgreSQL table, so marks survive restarts and are
/// shared by every member of a group.
///
/// The table (created if missing) holds one row per (group, event id):
///
/// ```sql
/// CREATE TABLE IF NOT EXISTS <table> (
///     group_name text NOT NULL,
///     event_id   text NOT NULL,
///     marked_at  timestamptz NOT NULL DEFAULT now(),
///     PRIMARY KEY (group_name, event_id)
/// )
/// ```
///
/// Rows older than a retention are deleted by [`purge_older_than`]
/// (call it from a periodic task). The connection is re-established on the
/// next call after it breaks. Connects without TLS (a local or sidecar
/// database); the URL's password never appears in errors or logs.
///
/// [`purge_older_than`]: PostgresDedupStore::purge_older_than
///
/// ```no_run
/// # async fn demo() -> Result<(), busline_core::BoxError> {
/// use busline_layers::{DedupLayer, PostgresDedupStore};
/// let store = PostgresDedupStore::connect("postgres://app@127.0.0.1:5432/app", "busline_dedup").await?;
/// let layer = DedupLayer::new(store);
/// # Ok(()) }
/// ```
pub struct PostgresDedupStore {
    url: String,
    table: String,
    client: Mutex<Option<Arc<Client>>>,
}

impl std::fmt::Debug for PostgresDedupStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresDedupStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// Why a table name was refused.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a plain table name (a-z, 0-9 and `_`, at most 63, not starting with a digit)")]
pub struct InvalidTableName(String);

impl PostgresDedupStore {
    /// Connects to `url` (`postgres://user@host:port/db`) and creates
    /// `table` if it does not exist. `table` is a plain lower-case
    /// identifier, optionally `schema.table`.
    pub async fn connect(url: &str, table: &str) -> Result<Self, BoxError> {
        let valid = |part: &str| {
            !part.is_empty()
                && part.len() <= 63
                && !part.starts_with(|c: char| c.is_ascii_digit())
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        let parts: Vec<&str> = table.split('.').collect();
        if parts.len() > 2 || !parts.iter().all(|p| valid(p)) {
            return Err(InvalidTableName(table.to_owned()).into());
        }
        let store = Self {
            url: url.to_owned(),
            table: table.to_owned(),
            client: Mutex::new(None),
        };
        let client = store.client().await?;
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {} (
                    group_name text NOT NULL,
                    event_id text NOT NULL,
                    marked_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (group_name, event_id)
                )",
                store.table
            ))
            .await?;
        Ok(store)
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    async fn client(&self) -> Result<Arc<Client>, BoxError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .map_err(|e| format!("connecting to the dedup database failed: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "dedup database connection ended");
            }
        });
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Deletes marks older than `age`; returns how many.
    pub async fn purge_older_than(&self, age: Duration) -> Result<u64, BoxError> {
        let client = self.client().await?;
        let sql = format!(
            "DELETE FROM {} WHERE marked_at < now() - make_interval(secs => $1)",
            self.table
        );
        Ok(client.execute(&sql, &[&age.as_secs_f64()]).await?)
    }
}

#[async_trait]
impl DedupStore for PostgresDedupStore {
    async fn seen(&self, group: &str, event_id: &str) -> Result<bool, BoxError> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT 1 FROM {} WHERE group_name = $1 AND event_id = $2",
            self.table
        );
        Ok(client.query_opt(&sql, &[&group, &event_id]).await?.is_some())
    }

    async fn mark(&self, group: &str, event_id: &str) -> Result<(), BoxError> {
        let client = self.client().await?;
        let sql = format!(
            "INSERT INTO {} (group_name, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            self.table
        );
        client.execute(&sql, &[&group, &event_id]).await?;
        Ok(())
    }
}
