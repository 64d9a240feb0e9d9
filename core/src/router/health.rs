//! What a running router says about its subscriptions: which are taking
//! deliveries, which are paused by a gate, which have died and why. A dead
//! consumer is never hidden behind `Ok`: its state says so here, and the
//! router's `run_until`/`shutdown` return its error.

use std::sync::{Arc, Mutex};

/// The state of one subscription of a running router.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscriptionState {
    /// Taking deliveries.
    Running,
    /// Alive, but a handler's gate (a circuit breaker, a store outage) holds
    /// consumption back; events wait in the broker.
    Paused,
    /// Stopped by shutdown.
    Stopped,
    /// Died: the broker stream failed or ended, or the consumer panicked.
    /// The router's `run_until` and `shutdown` return this as an error.
    Failed {
        /// What went wrong.
        error: String,
    },
}

/// One subscription's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionHealth {
    /// The topic.
    pub topic: String,
    /// Its state.
    pub state: SubscriptionState,
}

/// A snapshot of a running router's health, for readiness and liveness
/// probes.
///
/// ```no_run
/// # async fn demo(router: busline_core::RunningRouter) {
/// let health = router.health();
/// if !health.is_alive() {
///     for (topic, error) in health.failures() {
///         eprintln!("{} on {topic} died: {error}", health.group);
///     }
/// }
/// let ready = health.is_ready(); // for a readiness probe
/// # let _ = ready; }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouterHealth {
    /// The router's group.
    pub group: String,
    /// Every subscription, in topic order.
    pub subscriptions: Vec<SubscriptionHealth>,
    /// Whether its bus reaches the broker ([`Bus::connection_state`](crate::Bus::connection_state)).
    pub connection: crate::ConnectionState,
}

impl RouterHealth {
    /// Every subscription is taking deliveries (none paused, stopped or
    /// failed) and the bus is not known to be disconnected: the router is
    /// ready for traffic. A reconnecting bus is alive, not ready.
    pub fn is_ready(&self) -> bool {
        self.connection.is_usable()
            && self
                .subscriptions
                .iter()
                .all(|s| s.state == SubscriptionState::Running)
    }

    /// No subscription has failed (paused ones are alive).
    pub fn is_alive(&self) -> bool {
        self.subscriptions
            .iter()
            .all(|s| !matches!(s.state, SubscriptionState::Failed { .. }))
    }

    /// The subscriptions that failed, with their errors.
    pub fn failures(&self) -> impl Iterator<Item = (&str, &str)> {
        self.subscriptions.iter().filter_map(|s| match &s.state {
            SubscriptionState::Failed { error } => Some((s.topic.as_str(), error.as_str())),
            _ => None,
        })
    }
}

/// Where consumer tasks write their state and the router reads it.
#[derive(Debug, Clone)]
pub(crate) struct HealthBoard {
    group: Arc<str>,
    states: Arc<Mutex<Vec<SubscriptionHealth>>>,
}

impl HealthBoard {
    pub(crate) fn new(group: Arc<str>, topics: impl IntoIterator<Item = Arc<str>>) -> Self {
        let states = topics
            .into_iter()
            .map(|t| SubscriptionHealth {
                topic: t.to_string(),
                state: SubscriptionState::Running,
            })
            .collect();
        Self {
            group,
            states: Arc::new(Mutex::new(states)),
        }
    }

    pub(crate) fn set(&self, index: usize, state: SubscriptionState) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = states.get_mut(index) {
            // A failure is final: a later "stopped" must not paper over it.
            if !matches!(s.state, SubscriptionState::Failed { .. }) {
                s.state = state;
            }
        }
    }

    pub(crate) fn snapshot(&self, connection: crate::ConnectionState) -> RouterHealth {
        RouterHealth {
            group: self.group.to_string(),
            subscriptions: self.states.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            connection,
        }
    }
}

/// A handle on a running router's health and counters that can be cloned
/// and moved into a task (a probe endpoint, a metrics exporter) while the
/// [`RunningRouter`](crate::RunningRouter) itself stays with whoever shuts
/// it down. It reads the state the router's consumers write, so it shows a
/// subscription's death, and after shutdown says `Stopped`.
///
/// ```no_run
/// # async fn demo(router: busline_core::RunningRouter) {
/// let probe = router.probe();
/// tokio::spawn(async move {
///     loop {
///         if !probe.health().is_alive() {
///             eprintln!("{} has a dead subscription", probe.group());
///         }
///         tokio::time::sleep(std::time::Duration::from_secs(10)).await;
///     }
/// });
/// # }
/// ```
#[derive(Clone)]
pub struct RouterProbe {
    pub(crate) board: HealthBoard,
    pub(crate) shared: Arc<super::shared::Shared>,
}

impl std::fmt::Debug for RouterProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterProbe")
            .field("group", &self.board.group)
            .finish()
    }
}

impl RouterProbe {
    /// The router's group.
    pub fn group(&self) -> &str {
        &self.board.group
    }

    /// Which subscriptions are taking deliveries, paused, stopped or dead.
    pub fn health(&self) -> RouterHealth {
        self.board.snapshot(self.shared.bus.connection_state())
    }

    /// The router's counters so far.
    pub fn stats(&self) -> super::RouterStats {
        self.shared.counters.snapshot()
    }
}
