//! One AMQP connection that comes back: connected lazily, replaced with
//! jittered exponential backoff when it is lost, closed once on shutdown.
//! With several seed brokers (a cluster) an attempt tries each in turn,
//! beginning with the one after the broker last lost, and keeps the first
//! that answers.

use std::sync::Arc;
use std::time::Duration;

use busline_core::{ConnectionState, RetryPolicy};
use lapin::types::LongString;
use lapin::{Connection, ConnectionProperties};
use tokio::sync::{watch, Mutex};
use tokio::time::Instant;

use crate::seeds::{self, Seed};

/// Why no connection could be had.
#[derive(Debug, Clone)]
pub(crate) enum LinkError {
    /// The bus is shut down.
    Closed,
    /// The broker could not be reached or refused us; already redacted.
    Connect(String),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Closed => f.write_str("the bus is shut down"),
            LinkError::Connect(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for LinkError {}

/// A live connection and its generation: a new generation after every
/// reconnection, so holders of channels can tell theirs is stale.
pub(crate) struct Live {
    pub(crate) connection: Connection,
    pub(crate) generation: u64,
}

struct State {
    live: Option<Arc<Live>>,
    generation: u64,
    /// When the next connection attempt may be made, and the error that
    /// made us wait; callers in between fail fast with it instead of piling
    /// connection attempts onto a broker that is down.
    retry_at: Option<(Instant, String)>,
    /// Failed attempts in a row: the backoff grows with it.
    failures: u32,
    /// The seed an attempt tries first.
    next_seed: usize,
}

/// What [`Link::connection_state`] reads without waiting for the state
/// lock (a connection attempt holds that for up to `connect_timeout`).
#[derive(Default)]
struct Seen {
    live: Option<Arc<Live>>,
    /// Why the last connection went or could not be made.
    last_error: Option<String>,
}

pub(crate) struct Link {
    /// Never empty.
    seeds: Vec<Seed>,
    name: String,
    min_backoff: Duration,
    max_backoff: Duration,
    connect_timeout: Duration,
    tls: lapin::tcp::OwnedTLSConfig,
    state: Mutex<State>,
    seen: std::sync::Mutex<Seen>,
    closed: watch::Sender<bool>,
}

/// Options of a link, from the backend's configuration.
pub(crate) struct LinkOptions {
    pub(crate) name: String,
    pub(crate) heartbeat: Duration,
    pub(crate) min_backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) connect_timeout: Duration,
    /// Extra TLS settings of `amqps://` seeds (a CA, a client identity).
    pub(crate) tls: lapin::tcp::OwnedTLSConfig,
}

impl Link {
    /// A link to the broker or brokers of `url` (not connected yet); `Err`
    /// (without secrets) if the URL is not AMQP.
    pub(crate) fn new(url: &str, options: LinkOptions, closed: watch::Sender<bool>) -> Result<Self, String> {
        let mut seeds = seeds::parse(url)?;
        for seed in &mut seeds {
            let query = &mut seed.uri.query;
            if query.heartbeat.is_none() {
                query.heartbeat = Some(u16::try_from(options.heartbeat.as_secs()).unwrap_or(u16::MAX));
            }
            if query.connection_timeout.is_none() {
                query.connection_timeout =
                    Some(u64::try_from(options.connect_timeout.as_millis()).unwrap_or(u64::MAX));
            }
        }
        Ok(Self {
            seeds,
            name: options.name,
            min_backoff: options.min_backoff,
            max_backoff: options.max_backoff.max(options.min_backoff),
            connect_timeout: options.connect_timeout,
            tls: options.tls,
            state: Mutex::new(State {
                live: None,
                generation: 0,
                retry_at: None,
                failures: 0,
                next_seed: 0,
            }),
            seen: std::sync::Mutex::default(),
            closed,
        })
    }

    fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    fn see(&self, live: Option<Arc<Live>>, error: Option<String>) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.live = live;
        seen.last_error = error;
    }

    /// Connected, or why not, as last seen; never waits. A link not used
    /// yet has failed at nothing, so it counts as connected.
    pub(crate) fn connection_state(&self) -> ConnectionState {
        if self.is_closed() {
            return ConnectionState::Closed;
        }
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match (&seen.live, &seen.last_error) {
            (Some(live), _) if live.connection.status().connected() => ConnectionState::Connected,
            (Some(_), _) => ConnectionState::Reconnecting {
                reason: "the connection to the broker was lost".into(),
            },
            (None, Some(error)) => ConnectionState::Reconnecting {
                reason: error.clone(),
            },
            (None, None) => ConnectionState::Connected,
        }
    }

    /// The live connection, connecting once if there is none. Concurrent
    /// callers share one attempt; after a failure, callers fail fast until
    /// the backoff has passed.
    pub(crate) async fn connection(&self) -> Result<Arc<Live>, LinkError> {
        if self.is_closed() {
            return Err(LinkError::Closed);
        }
        let mut state = self.state.lock().await;
        if self.is_closed() {
            return Err(LinkError::Closed);
        }
        if let Some(live) = &state.live {
            if live.connection.status().connected() {
                return Ok(live.clone());
            }
            // Its broker is gone or unreachable: begin with the next one,
            // so a broker that died costs no attempt (a host that drops
            // packets would cost `connect_timeout`).
            state.live = None;
            state.next_seed = (state.next_seed + 1) % self.seeds.len();
            self.see(None, Some("the connection to the broker was lost".into()));
        }
        if let Some((at, error)) = &state.retry_at {
            if Instant::now() < *at {
                return Err(LinkError::Connect(error.clone()));
            }
        }
        match self.connect_round(&mut state).await {
            Ok(connection) => {
                state.generation += 1;
                let live = Arc::new(Live {
                    connection,
                    generation: state.generation,
                });
                state.live = Some(live.clone());
                state.retry_at = None;
                state.failures = 0;
                self.see(Some(live.clone()), None);
                if self.is_closed() {
                    // Shutdown began while we connected: do not leak it.
                    let _ = live.connection.close(200, "shutdown".into()).await;
                    state.live = None;
                    return Err(LinkError::Closed);
                }
                Ok(live)
            }
            Err(error) => {
                state.failures = state.failures.saturating_add(1);
                // Jittered, so the connections of many services a broker
                // dropped at once do not come back in step.
                let wait = RetryPolicy::default()
                    .with_backoff(self.min_backoff, self.max_backoff)
                    .with_jitter(0.25)
                    .backoff(state.failures);
                state.retry_at = Some((Instant::now() + wait, error.clone()));
                self.see(None, Some(error.clone()));
                Err(LinkError::Connect(error))
            }
        }
    }

    /// One attempt: every seed once, from `next_seed` on, each within
    /// `connect_timeout`; the first that answers becomes `next_seed`.
    async fn connect_round(&self, state: &mut State) -> Result<Connection, String> {
        let n = self.seeds.len();
        let start = state.next_seed;
        let mut errors = Vec::with_capacity(n);
        for i in (0..n).map(|k| (start + k) % n) {
            if self.is_closed() {
                break;
            }
            // A caller's deadline may end the attempt while this seed
            // hangs: the next attempt then begins with the seed after it,
            // or a hanging first seed would take every attempt.
            state.next_seed = (i + 1) % n;
            match self.connect_once(&self.seeds[i]).await {
                Ok(connection) => {
                    if i != start {
                        tracing::info!(connection = %self.name, broker = %self.seeds[i].redacted, "connected to another seed broker");
                    }
                    state.next_seed = i;
                    return Ok(connection);
                }
                Err(e) => errors.push(e),
            }
        }
        state.next_seed = start;
        if errors.is_empty() {
            return Err("the bus is shutting down".to_owned());
        }
        Err(errors.join("; "))
    }

    async fn connect_once(&self, seed: &Seed) -> Result<Connection, String> {
        let props =
            ConnectionProperties::default().with_connection_name(LongString::from(self.name.as_str()));
        let runtime = lapin::runtime::default_runtime()
            .map_err(|e| format!("connecting to {}: no runtime: {e}", seed.redacted))?;
        let attempt = Connection::connect_uri_with_config(seed.uri.clone(), props, self.tls.clone(), runtime);
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(format!("connecting to {} failed: {e}", seed.redacted)),
            Err(_) => Err(format!(
                "connecting to {} timed out after {:?}",
                seed.redacted, self.connect_timeout
            )),
        }
    }

    /// The live connection, waiting through reconnection attempts with
    /// backoff; `Closed` once the bus shuts down.
    pub(crate) async fn connection_retrying(&self) -> Result<Arc<Live>, LinkError> {
        let mut closed = self.closed.subscribe();
        loop {
            match self.connection().await {
                Ok(live) => return Ok(live),
                Err(LinkError::Closed) => return Err(LinkError::Closed),
                Err(LinkError::Connect(e)) => {
                    let wait = {
                        let state = self.state.lock().await;
                        state
                            .retry_at
                            .as_ref()
                            .map(|(at, _)| at.saturating_duration_since(Instant::now()))
                            .unwrap_or(self.min_backoff)
                    };
                    tracing::debug!(connection = %self.name, error = %e, ?wait, "broker unreachable; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait.max(Duration::from_millis(10))) => {}
                        _ = closed.wait_for(|c| *c) => return Err(LinkError::Closed),
                    }
                }
            }
        }
    }

    /// Forgets `live` if it is still the current connection: a call on it
    /// got no answer, and a connection whose I/O has stopped can still say
    /// it is connected, which would hand it out forever. The next
    /// `connection()` makes a new one, beginning with the next seed broker
    /// (this one may hang); the old one closes (in lapin's background) once
    /// its last channel is dropped.
    pub(crate) async fn discard(&self, live: &Live) {
        let mut state = self.state.lock().await;
        if state
            .live
            .as_ref()
            .is_some_and(|l| l.generation == live.generation)
        {
            state.live = None;
            state.next_seed = (state.next_seed + 1) % self.seeds.len();
            self.see(
                None,
                Some("the broker stopped answering on the connection".into()),
            );
        }
    }

    /// Closes the connection (the bus is shutting down; `closed` is set).
    pub(crate) async fn close(&self) {
        let live = self.state.lock().await.live.take();
        if let Some(live) = live {
            if live.connection.status().connected() {
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    live.connection.close(200, "busline shutdown".into()),
                )
                .await;
            }
        }
    }
}
