//! The relay: committed outbox rows to the broker.
//!
//! Each round claims up to `batch_size` rows in one short transaction
//! (`FOR UPDATE SKIP LOCKED`, so relays in several processes never claim
//! the same row, and a lease token with an expiry written into the row),
//! commits, and only then publishes: no row lock is held across a broker
//! call. A row is claimable when its lease has expired (or it has none) and
//! it is the first remaining row of its key, so two rows of one key are
//! never in flight at once and a key's rows go out in `seq` order. Rows the
//! broker confirmed are deleted if the relay still owns them (a relay that
//! outlived its lease deletes nothing another relay has since claimed).
//! A failed publish leaves its row for the next try after a backoff, and
//! the relay itself backs off while publishes or the database fail. A row
//! whose envelope cannot be read, or that the broker refuses for good, is
//! parked (`lease_until = 'infinity'`, `last_error` says why) and holds back
//! the later rows of its key until an operator deals with it.
//!
//! The relay sleeps on `LISTEN <outbox>_ready` ([`Outbox`](crate::Outbox)
//! notifies on commit), and polls every `poll_interval` in case a
//! notification was missed (a reconnect, rows written by other means).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use busline_core::{Bus, ErrorChain};
use serde_json::Value;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::{stored, OutboxError, OutboxErrorKind, OutboxTables};

/// How a [`Relay`] claims, publishes and waits.
///
/// ```
/// use std::time::Duration;
/// use busline_outbox::RelayOptions;
/// let options = RelayOptions::default()
///     .with_batch_size(500)
///     .with_poll_interval(Duration::from_millis(250));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RelayOptions {
    /// Rows claimed per round.
    pub batch_size: usize,
    /// How long claimed rows stay the relay's; another relay may claim them
    /// after it (a relay that died mid-batch). Keep it well above
    /// `publish_timeout`.
    pub lease: Duration,
    /// Limit of one publish, until the broker confirms.
    pub publish_timeout: Duration,
    /// Limit of each database call.
    pub statement_timeout: Duration,
    /// How often the relay looks for rows without a notification.
    pub poll_interval: Duration,
    /// First and longest wait after a failed round (doubling, with jitter).
    pub backoff: (Duration, Duration),
}

impl Default for RelayOptions {
    /// 100 rows per round, 60 s lease, 10 s per publish and per statement,
    /// polling every second, backoff from 100 ms to 30 s.
    fn default() -> Self {
        Self {
            batch_size: 100,
            lease: Duration::from_secs(60),
            publish_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_secs(1),
            backoff: (Duration::from_millis(100), Duration::from_secs(30)),
        }
    }
}

impl RelayOptions {
    /// Rows claimed per round (at least 1).
    pub fn with_batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// How long claimed rows stay the relay's.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Limit of one publish.
    pub fn with_publish_timeout(mut self, limit: Duration) -> Self {
        self.publish_timeout = limit;
        self
    }

    /// How often to look for rows without a notification.
    pub fn with_poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every;
        self
    }

    /// First and longest wait after a failed round.
    pub fn with_backoff(mut self, first: Duration, longest: Duration) -> Self {
        self.backoff = (first, longest.max(first));
        self
    }
}

/// What a relay did since it started ([`RunningRelay::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RelayStats {
    /// Rows published and deleted.
    pub published: u64,
    /// Publishes that failed and were left for another try.
    pub retried: u64,
    /// Rows parked for good.
    pub parked: u64,
    /// Rounds that claimed at least one row.
    pub rounds: u64,
    /// Database calls that failed or timed out.
    pub database_errors: u64,
    /// Rounds after which the relay backed off (failed publishes or a
    /// failed database call): a broker outage of a minute costs about ten.
    pub backoffs: u64,
    /// Times the relay found nothing to claim and waited for a
    /// notification or the poll interval.
    pub idle_waits: u64,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    retried: AtomicU64,
    parked: AtomicU64,
    rounds: AtomicU64,
    database_errors: AtomicU64,
    backoffs: AtomicU64,
    idle_waits: AtomicU64,
    /// Waiting now for a notification or the poll interval.
    idle: std::sync::atomic::AtomicBool,
}

impl Counters {
    fn snapshot(&self) -> RelayStats {
        RelayStats {
            published: self.published.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            parked: self.parked.load(Ordering::Relaxed),
            rounds: self.rounds.load(Ordering::Relaxed),
            database_errors: self.database_errors.load(Ordering::Relaxed),
            backoffs: self.backoffs.load(Ordering::Relaxed),
            idle_waits: self.idle_waits.load(Ordering::Relaxed),
        }
    }
}

/// What the relay reports through the `metrics` facade, labelled
/// `outbox = <table>` (see [`Relay`]).
struct Meters {
    published: metrics::Counter,
    failed: metrics::Counter,
    parked: metrics::Counter,
    pending: metrics::Gauge,
    oldest: metrics::Gauge,
    parked_rows: metrics::Gauge,
}

impl Meters {
    fn new(outbox: &str) -> Self {
        let labels = [("outbox", outbox.to_owned())];
        Self {
            published: metrics::counter!("busline_outbox_published_total", &labels),
            failed: metrics::counter!("busline_outbox_publish_failures_total", &labels),
            parked: metrics::counter!("busline_outbox_parked_total", &labels),
            pending: metrics::gauge!("busline_outbox_pending_rows", &labels),
            oldest: metrics::gauge!("busline_outbox_oldest_seconds", &labels),
            parked_rows: metrics::gauge!("busline_outbox_parked_rows", &labels),
        }
    }
}

/// Publishes committed outbox rows (see the [module docs](self)).
///
/// Metrics (through the `metrics` facade, label `outbox`):
/// `busline_outbox_published_total`, `busline_outbox_publish_failures_total`,
/// `busline_outbox_parked_total` (counters), and, sampled at most once per
/// `poll_interval`, `busline_outbox_pending_rows`,
/// `busline_outbox_oldest_seconds` (the lag) and `busline_outbox_parked_rows`
/// (gauges).
pub struct Relay {
    pool: PgPool,
    bus: Bus,
    tables: OutboxTables,
    options: RelayOptions,
    counters: Arc<Counters>,
    meters: Meters,
    claim: String,
    delete: String,
    release: String,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("tables", &self.tables)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// A claimed row: (seq, topic, headers, body).
type Claimed = (i64, String, Value, Vec<u8>);

/// What became of one claimed row.
enum Fate {
    Published(i64),
    Retry(i64, String),
    Park(i64, String),
}

impl Relay {
    /// A relay of `tables` onto `bus`.
    pub fn new(pool: PgPool, bus: Bus, tables: OutboxTables, options: RelayOptions) -> Self {
        let t = tables.outbox();
        let claim = format!(
            "WITH claimable AS ( \
                 SELECT o.seq FROM {t} o \
                 WHERE (o.lease_until IS NULL OR o.lease_until < now()) \
                   AND (o.ordering_key IS NULL OR NOT EXISTS ( \
                       SELECT 1 FROM {t} e WHERE e.ordering_key = o.ordering_key AND e.seq < o.seq)) \
                 ORDER BY o.seq LIMIT $1 FOR UPDATE SKIP LOCKED) \
             UPDATE {t} o SET lease_token = $2, lease_until = now() + make_interval(secs => $3), \
                 attempts = o.attempts + 1 \
             FROM claimable c WHERE o.seq = c.seq \
             RETURNING o.seq, o.topic, o.headers, o.body"
        );
        let delete = format!("DELETE FROM {t} WHERE seq = ANY($1) AND lease_token = $2");
        // A failed row goes back with its error: for another try after a
        // delay ($3 seconds), or parked for good ($3 NULL).
        let release = format!(
            "UPDATE {t} o SET lease_token = NULL, last_error = f.error, \
                 lease_until = CASE WHEN $3::float8 IS NULL THEN 'infinity'::timestamptz \
                     ELSE now() + make_interval(secs => $3::float8) END \
             FROM unnest($1::bigint[], $4::text[]) AS f(seq, error) \
             WHERE o.seq = f.seq AND o.lease_token = $2"
        );
        Self {
            meters: Meters::new(tables.outbox()),
            pool,
            bus,
            tables,
            options,
            counters: Arc::default(),
            claim,
            delete,
            release,
        }
    }

    /// Runs the relay on a task of its own until [`RunningRelay::shutdown`].
    pub fn start(self) -> RunningRelay {
        let (stop, stopped) = watch::channel(false);
        let counters = self.counters.clone();
        let task = tokio::spawn(self.run(stopped));
        RunningRelay { stop, task, counters }
    }

    async fn db<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, String> {
        let result = match tokio::time::timeout(self.options.statement_timeout, call).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => format!("{what}: {e}"),
            Err(_) => format!("{what}: no answer within {:?}", self.options.statement_timeout),
        };
        self.counters.database_errors.fetch_add(1, Ordering::Relaxed);
        Err(result)
    }

    async fn listen(&self) -> Option<PgListener> {
        let channel = self.tables.channel();
        let listener = self
            .db("LISTEN", async {
                let mut l = PgListener::connect_with(&self.pool).await?;
                l.listen(&channel).await?;
                Ok(l)
            })
            .await;
        match listener {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay cannot listen for notifications; polling");
                None
            }
        }
    }

    async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut listener = self.listen().await;
        let (first, longest) = self.options.backoff;
        let mut backoff = first;
        let mut sampled: Option<tokio::time::Instant> = None;
        loop {
            if *stop.borrow() {
                break;
            }
            if sampled.is_none_or(|at| at.elapsed() >= self.options.poll_interval) {
                sampled = Some(tokio::time::Instant::now());
                self.sample().await;
            }
            let wait = match self.round(backoff).await {
                Ok((claimed, 0)) => {
                    backoff = first;
                    if claimed > 0 {
                        // Later rows of the keys just published may be
                        // claimable now.
                        continue;
                    }
                    None
                }
                Ok((_, failed)) => {
                    tracing::debug!(failed, ?backoff, "outbox relay: publishes failed; backing off");
                    Some(backoff)
                }
                Err(e) => {
                    tracing::warn!(error = %e, ?backoff, "outbox relay: database call failed; backing off");
                    Some(backoff)
                }
            };
            if let Some(pause) = wait {
                self.counters.backoffs.fetch_add(1, Ordering::Relaxed);
                backoff = (backoff * 2).min(longest);
                let pause = pause.mul_f64(0.8 + 0.4 * fastrand::f64());
                tokio::select! {
                    _ = stop.changed() => {}
                    _ = tokio::time::sleep(pause) => {}
                }
                continue;
            }
            if listener.is_none() {
                listener = self.listen().await;
            }
            let poll = tokio::time::sleep(self.options.poll_interval);
            self.counters.idle_waits.fetch_add(1, Ordering::Relaxed);
            self.counters.idle.store(true, Ordering::Release);
            match listener.as_mut() {
                Some(l) => tokio::select! {
                    _ = stop.changed() => {}
                    _ = poll => {}
                    n = l.recv() => if let Err(e) = n {
                        tracing::debug!(error = %e, "outbox relay: notification connection lost");
                        listener = None;
                    },
                },
                None => tokio::select! {
                    _ = stop.changed() => {}
                    _ = poll => {}
                },
            }
            self.counters.idle.store(false, Ordering::Release);
        }
    }

    /// Sets the pending, lag and parked gauges.
    async fn sample(&self) {
        match crate::outbox::pending_of(&self.pool, &self.tables, self.options.statement_timeout).await {
            Ok(p) => {
                self.meters.pending.set(p.rows as f64);
                self.meters.oldest.set(p.oldest.as_secs_f64());
                self.meters.parked_rows.set(p.parked as f64);
            }
            Err(e) => {
                self.counters.database_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %ErrorChain(&e), "outbox relay: cannot sample the pending rows");
            }
        }
    }

    /// One round: (rows claimed, rows whose publish failed).
    async fn round(&self, backoff: Duration) -> Result<(usize, usize), String> {
        let token = fastrand::i64(1..);
        let mut rows: Vec<Claimed> = self
            .db(
                "claiming rows",
                sqlx::query_as(&self.claim)
                    .bind(self.options.batch_size as i64)
                    .bind(token)
                    .bind(self.options.lease.as_secs_f64())
                    .fetch_all(&self.pool),
            )
            .await?;
        if rows.is_empty() {
            return Ok((0, 0));
        }
        self.counters.rounds.fetch_add(1, Ordering::Relaxed);
        rows.sort_by_key(|r| r.0);
        let claimed = rows.len();
        // Every row is the head of its key: they may all go at once.
        let fates = futures::future::join_all(rows.into_iter().map(|row| self.publish(row))).await;
        let (mut done, mut retry, mut park) =
            (Vec::new(), (Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
        for fate in fates {
            match fate {
                Fate::Published(seq) => done.push(seq),
                Fate::Retry(seq, e) => {
                    retry.0.push(seq);
                    retry.1.push(e);
                }
                Fate::Park(seq, e) => {
                    tracing::error!(seq, error = %e, outbox = self.tables.outbox(), "outbox row parked");
                    park.0.push(seq);
                    park.1.push(e);
                }
            }
        }
        let c = &self.counters;
        if !done.is_empty() {
            self.db(
                "deleting published rows",
                sqlx::query(&self.delete)
                    .bind(&done)
                    .bind(token)
                    .execute(&self.pool),
            )
            .await?;
            c.published.fetch_add(done.len() as u64, Ordering::Relaxed);
            self.meters.published.increment(done.len() as u64);
        }
        if !retry.0.is_empty() {
            c.retried.fetch_add(retry.0.len() as u64, Ordering::Relaxed);
            self.meters.failed.increment(retry.0.len() as u64);
            self.release("releasing failed rows", &retry, token, Some(backoff))
                .await?;
        }
        if !park.0.is_empty() {
            c.parked.fetch_add(park.0.len() as u64, Ordering::Relaxed);
            self.meters.parked.increment(park.0.len() as u64);
            self.release("parking rows", &park, token, None).await?;
        }
        Ok((claimed, retry.0.len()))
    }

    /// Gives `rows` (seqs and their errors) back: claimable again after
    /// `delay`, or parked for good without one.
    async fn release(
        &self,
        what: &str,
        rows: &(Vec<i64>, Vec<String>),
        token: i64,
        delay: Option<Duration>,
    ) -> Result<(), String> {
        self.db(
            what,
            sqlx::query(&self.release)
                .bind(&rows.0)
                .bind(token)
                .bind(delay.map(|d| d.as_secs_f64()))
                .bind(&rows.1)
                .execute(&self.pool),
        )
        .await
        .map(drop)
    }

    async fn publish(&self, (seq, topic, headers, body): Claimed) -> Fate {
        let event = match stored::event_of(&headers, body) {
            Ok(e) => e,
            Err(e) => return Fate::Park(seq, format!("unreadable envelope: {e}")),
        };
        match tokio::time::timeout(self.options.publish_timeout, self.bus.publish_raw(&topic, event)).await {
            Ok(Ok(())) => Fate::Published(seq),
            Ok(Err(e)) if e.kind().is_transient() => Fate::Retry(seq, ErrorChain(&e).to_string()),
            Ok(Err(e)) => Fate::Park(seq, ErrorChain(&e).to_string()),
            Err(_) => Fate::Retry(
                seq,
                format!("no confirmation within {:?}", self.options.publish_timeout),
            ),
        }
    }
}

/// A relay running on its task.
#[derive(Debug)]
pub struct RunningRelay {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.snapshot().fmt(f)
    }
}

impl RunningRelay {
    /// What it did so far.
    pub fn stats(&self) -> RelayStats {
        self.counters.snapshot()
    }

    /// Whether it found nothing to claim and waits for a notification or
    /// the poll interval.
    pub fn is_idle(&self) -> bool {
        self.counters.idle.load(Ordering::Acquire)
    }

    /// Whether its task has ended (it ends only when shut down, or when it
    /// panicked: [`shutdown`](Self::shutdown) then returns the error).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops after the round in flight (its publishes confirmed or timed
    /// out, its rows deleted or released) and waits for the task; an error
    /// if the task panicked.
    pub async fn shutdown(self) -> Result<RelayStats, OutboxError> {
        let _ = self.stop.send(true);
        self.task
            .await
            .map_err(|e| OutboxError::new(OutboxErrorKind::RelayDied).with_source(e))?;
        Ok(self.counters.snapshot())
    }
}
