//! [`PostgresDedupStore`]: a durable [`DedupStore`] on PostgreSQL
//! (feature `postgres`).

use std::time::Duration;

use async_trait::async_trait;
use busline_core::BoxError;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Config, NoTls, Socket};

use crate::dedup::DedupStore;

mod pool;

use pool::Pool;

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
/// (call it from a periodic task).
///
/// Calls share a few connections ([`PostgresOptions`]: 4 by default),
/// opened on demand; a broken or timed-out one is dropped and the next call
/// opens another. Every wait is bounded (connect 5 s, statement 5 s, and
/// the same for a free connection), so an unreachable database shows as an
/// error within seconds, which the [`DedupLayer`](crate::DedupLayer) turns
/// into a pause of consumption. [`connect`](Self::connect) uses no TLS (a
/// local or sidecar database); [`connect_with`](Self::connect_with) takes
/// any tokio-postgres TLS connector (e.g. from `postgres-native-tls` or
/// `tokio-postgres-rustls`). The URL's password never appears in errors or
/// logs.
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
    table: String,
    pool: Pool,
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

/// Connections and time limits of a [`PostgresDedupStore`].
///
/// ```
/// use std::time::Duration;
/// use busline_layers::postgres::PostgresOptions;
/// let options = PostgresOptions::default()
///     .with_pool_size(8)
///     .with_connect_timeout(Duration::from_secs(3))
///     .with_statement_timeout(Duration::from_secs(2));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostgresOptions {
    pool_size: usize,
    connect_timeout: Duration,
    statement_timeout: Duration,
}

impl Default for PostgresOptions {
    /// 4 connections, 5 s to connect, 5 s per statement.
    fn default() -> Self {
        Self {
            pool_size: 4,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
        }
    }
}

impl PostgresOptions {
    /// At most this many connections (at least 1).
    pub fn with_pool_size(mut self, n: usize) -> Self {
        self.pool_size = n.max(1);
        self
    }

    /// Longest a connect (TCP, TLS, authentication) may take.
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d.max(Duration::from_millis(1));
        self
    }

    /// Longest a statement may take, enforced by the client (a frozen
    /// connection) and asked of the server (`statement_timeout`).
    pub fn with_statement_timeout(mut self, d: Duration) -> Self {
        self.statement_timeout = d.max(Duration::from_millis(1));
        self
    }
}

impl PostgresDedupStore {
    /// Connects to `url` (`postgres://user@host:port/db`) without TLS, with
    /// the default [`PostgresOptions`], and creates `table` if it does not
    /// exist. `table` is a plain lower-case identifier, optionally
    /// `schema.table`.
    pub async fn connect(url: &str, table: &str) -> Result<Self, BoxError> {
        Self::connect_with(url, table, PostgresOptions::default(), NoTls).await
    }

    /// Like [`connect`](Self::connect), with `options` and the TLS
    /// connector `tls`.
    pub async fn connect_with<T>(
        url: &str,
        table: &str,
        options: PostgresOptions,
        tls: T,
    ) -> Result<Self, BoxError>
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + 'static,
        T::TlsConnect: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
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
        let config: Config = url
            .parse()
            .map_err(|e| format!("the dedup database URL is not valid: {e}"))?;
        let store = Self {
            table: table.to_owned(),
            pool: Pool::new(
                config,
                tls,
                options.pool_size,
                options.connect_timeout,
                options.statement_timeout,
            ),
        };
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} (
                group_name text NOT NULL,
                event_id text NOT NULL,
                marked_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (group_name, event_id)
            )",
            store.table
        );
        store
            .pool
            .run(|link| async move { link.client.batch_execute(&sql).await })
            .await?;
        Ok(store)
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Deletes marks older than `age`; returns how many.
    pub async fn purge_older_than(&self, age: Duration) -> Result<u64, BoxError> {
        let sql = format!(
            "DELETE FROM {} WHERE marked_at < now() - make_interval(secs => $1)",
            self.table
        );
        let secs = age.as_secs_f64();
        self.pool
            .run(|link| async move { link.client.execute(&sql, &[&secs]).await })
            .await
    }
}

#[async_trait]
impl DedupStore for PostgresDedupStore {
    async fn seen(&self, group: &str, event_id: &str) -> Result<bool, BoxError> {
        let sql = format!(
            "SELECT 1 FROM {} WHERE group_name = $1 AND event_id = $2",
            self.table
        );
        self.pool
            .run(|link| async move { link.client.query_opt(&sql, &[&group, &event_id]).await })
            .await
            .map(|row| row.is_some())
    }

    async fn mark(&self, group: &str, event_id: &str) -> Result<(), BoxError> {
        let sql = format!(
            "INSERT INTO {} (group_name, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            self.table
        );
        self.pool
            .run(|link| async move { link.client.execute(&sql, &[&group, &event_id]).await })
            .await
            .map(|_| ())
    }
}
