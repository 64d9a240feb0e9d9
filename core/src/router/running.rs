//! A started router: one consumer task per subscribed topic, each spawning a
//! task per delivery up to the in-flight bound; graceful shutdown.

use std::future::Future;

use std::sync::Arc;
use std::task::Poll;

use futures::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::dispatch;
use super::gate::{wait_all_open, Gate};
use super::health::{HealthBoard, RouterHealth, SubscriptionState};
use super::shared::{Counters, RouteTable, RouterStats, Shared};
use super::{RouterError, RouterSettings};
use crate::RouterObserver;
use crate::{Bus, ConsumeError, SubscribeOptions, Subscription};

/// A router that is handling deliveries.
pub struct RunningRouter {
    group: Arc<str>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    abandon: watch::Sender<bool>,
    consumers: JoinSet<Result<(), RouterError>>,
    health: HealthBoard,
}

impl std::fmt::Debug for RunningRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningRouter")
            .field("group", &self.group)
            .field("stats", &self.stats())
            .finish()
    }
}

pub(crate) async fn start(
    bus: Bus,
    group: String,
    tables: Vec<(String, RouteTable)>,
    settings: RouterSettings,
    observers: Vec<Arc<dyn RouterObserver>>,
) -> Result<RunningRouter, RouterError> {
    let options = SubscribeOptions::default()
        .max_in_flight(settings.max_in_flight)
        .start_from(settings.start_from);
    // Subscribe everything before spawning anything, so that a failure leaves
    // nothing running.
    let mut subscriptions = Vec::with_capacity(tables.len());
    for (topic, table) in tables {
        let sub = bus.subscribe(&topic, &group, options).await?;
        subscriptions.push((Arc::<str>::from(topic), Arc::new(table), sub));
    }
    let (stop, _) = watch::channel(false);
    let (abandon, abandon_rx) = watch::channel(false);
    let group: Arc<str> = group.into();
    let shared = Arc::new(Shared {
        bus,
        group: group.clone(),
        settings,
        counters: Counters::default(),
        witnesses: observers
            .iter()
            .filter(|o| o.wants_handled_events())
            .cloned()
            .collect(),
        observers: observers.into_boxed_slice(),
        abandon: abandon_rx,
    });
    let health = HealthBoard::new(group.clone(), subscriptions.iter().map(|(t, _, _)| t.clone()));
    let mut consumers = JoinSet::new();
    for (index, (topic, table, sub)) in subscriptions.into_iter().enumerate() {
        let consumer = consume(
            sub,
            topic.clone(),
            table,
            shared.clone(),
            stop.subscribe(),
            Slot {
                board: health.clone(),
                index,
            },
        );
        consumers.spawn(supervise(consumer, topic, health.clone(), index));
    }
    Ok(RunningRouter {
        group,
        shared,
        stop,
        abandon,
        consumers,
        health,
    })
}

/// How a consumer loop ended without an error.
enum Ended {
    /// Shutdown asked it to stop.
    Stopped,
    /// The broker's stream ended on its own: the subscription is gone.
    StreamEnded,
}

/// One consumer's place on the health board.
struct Slot {
    board: HealthBoard,
    index: usize,
}

impl Slot {
    fn set(&self, state: SubscriptionState) {
        self.board.set(self.index, state);
    }
}

/// Runs one consumer and turns every way it can end into a state on the
/// health board and a typed result: a stream error, a stream that ended on
/// its own and a panic all fail the router instead of vanishing.
async fn supervise(
    consumer: impl Future<Output = Result<Ended, ConsumeError>>,
    topic: Arc<str>,
    board: HealthBoard,
    index: usize,
) -> Result<(), RouterError> {
    let result = match std::panic::AssertUnwindSafe(consumer).catch_unwind().await {
        Ok(Ok(Ended::Stopped)) => Ok(()),
        Ok(Ok(Ended::StreamEnded)) => Err(RouterError::SubscriptionEnded {
            topic: topic.to_string(),
        }),
        Ok(Err(e)) => Err(RouterError::Consume(e)),
        Err(panic) => Err(RouterError::ConsumerPanicked {
            topic: topic.to_string(),
            message: dispatch::panic_message(panic.as_ref()),
        }),
    };
    match &result {
        Ok(()) => board.set(index, SubscriptionState::Stopped),
        Err(e) => {
            let chain = crate::ErrorChain(e).to_string();
            tracing::error!(topic = %topic, error = %chain, "subscription died");
            board.set(index, SubscriptionState::Failed { error: chain });
        }
    }
    result
}

async fn consume(
    mut sub: Subscription,
    topic: Arc<str>,
    routes: Arc<RouteTable>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    slot: Slot,
) -> Result<Ended, ConsumeError> {
    let max = shared.settings.max_in_flight;
    // Handlers that may hold consumption back (circuit breakers); almost
    // always none.
    let gates: Vec<Gate> = routes.values().filter_map(|r| r.gate()).collect();
    let mut tasks = JoinSet::new();
    let mut paused = false;
    let result = loop {
        if *stop.borrow() {
            break Ok(Ended::Stopped);
        }
        while tasks.try_join_next().is_some() {}
        if tasks.len() >= max {
            tokio::select! {
                changed = stop.changed() => if changed.is_err() { break Ok(Ended::Stopped) },
                _ = tasks.join_next() => {}
            }
            continue;
        }
        if !gates.is_empty() && !gates.iter().all(Gate::is_open) {
            if !paused {
                paused = true;
                slot.set(SubscriptionState::Paused);
            }
            // Events wait in the broker while a gate is closed; handlers
            // already running go on and settle.
            tokio::select! {
                biased;
                changed = stop.changed() => if changed.is_err() { break Ok(Ended::Stopped) },
                _ = wait_all_open(&gates) => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
            continue;
        }
        if paused {
            paused = false;
            slot.set(SubscriptionState::Running);
        }
        // Take what is ready without setting up the wait below: under load
        // a delivery almost always is.
        let next = match futures::poll!(sub.next()) {
            Poll::Ready(next) => next,
            Poll::Pending => tokio::select! {
                biased;
                // The router dropped without shutdown: its sender is gone,
                // and `changed` would be ready forever.
                changed = stop.changed() => if changed.is_err() { break Ok(Ended::Stopped) } else { continue },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
                next = sub.next() => next,
            },
        };
        match next {
            Some(Ok(delivery)) => {
                // Most handlers finish without waiting: they run and settle
                // right here, without a task of their own. One that waits
                // continues as a task, so slow handlers run concurrently up
                // to the in-flight bound.
                let settling = match dispatch::begin(delivery, &topic, &routes, &shared) {
                    dispatch::Start::Settle(acker, decision) => dispatch::settle(acker, decision, &shared),
                    dispatch::Start::Run(acker, mut call, retry) => {
                        let started = dispatch::call_started(&shared);
                        match dispatch::poll_once(&mut call).await {
                            Some(ended) => {
                                let decision =
                                    dispatch::decide(ended, acker.attempt(), retry.as_deref(), &shared);
                                dispatch::settle(acker, decision, &shared)
                            }
                            None => {
                                let rest: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> =
                                    Box::pin(dispatch::finish(acker, call, retry, started, shared.clone()));
                                Some(rest)
                            }
                        }
                    }
                };
                if let Some(mut settling) = settling {
                    if futures::poll!(settling.as_mut()).is_pending() {
                        tasks.spawn(settling);
                    }
                }
            }
            // The application closing the bus ends its subscriptions; that
            // is a stop, not a death.
            Some(Err(e)) if shared.bus.is_closed() && e.kind() == crate::ConsumeErrorKind::Closed => {
                break Ok(Ended::Stopped)
            }
            Some(Err(e)) => break Err(e),
            None if *stop.borrow() || shared.bus.is_closed() => break Ok(Ended::Stopped),
            None => break Ok(Ended::StreamEnded),
        }
    };
    // Leave the group first, so no new deliveries arrive while in-flight
    // handlers finish; each of them settles its own delivery.
    drop(sub);
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            // Handler panics are caught inside the task; this is a bug in
            // the dispatch code itself, and the delivery was dropped
            // undecided (so the broker redelivers it).
            tracing::error!(group = %shared.group, topic = %topic, error = %e, "delivery task failed");
        }
    }
    result
}

impl RunningRouter {
    /// Counters so far.
    pub fn stats(&self) -> RouterStats {
        self.shared.counters.snapshot()
    }

    /// The group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Which subscriptions are taking deliveries, paused or dead: for
    /// readiness and liveness probes.
    pub fn health(&self) -> RouterHealth {
        self.health.snapshot(self.shared.bus.connection_state())
    }

    /// A cloneable handle on [`health`](Self::health) and
    /// [`stats`](Self::stats), for a probe endpoint or exporter task.
    pub fn probe(&self) -> super::RouterProbe {
        super::RouterProbe {
            board: self.health.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Runs until `shutdown` resolves or a subscription dies (its stream
    /// fails or ends, or its consumer panics), then shuts down gracefully.
    /// A dead subscription is returned as the error.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> Result<RouterStats, RouterError> {
        let early = tokio::select! {
            _ = shutdown => None,
            Some(done) = self.consumers.join_next() => Some(done),
        };
        let stats = self.shutdown().await;
        match early.map(flatten) {
            Some(Err(e)) => Err(e),
            _ => stats,
        }
    }

    /// Stops taking deliveries, lets in-flight handlers finish, then cancels
    /// the rest and returns their events to the broker; returns within the
    /// shutdown deadline whatever the broker does.
    ///
    /// The deadline is split: handlers get all but the last fifth of it (at
    /// most 5 s), which is left for returning the cancelled handlers'
    /// deliveries. A settle call still waiting on the broker when the
    /// deadline passes is dropped: the delivery goes back undecided, so the
    /// broker redelivers it (at-least-once), and the router says so in a
    /// warning.
    pub async fn shutdown(mut self) -> Result<RouterStats, RouterError> {
        let _ = self.stop.send(true);
        let deadline = self.shared.settings.shutdown_deadline;
        let settle_grace = (deadline / 5).min(std::time::Duration::from_secs(5));
        let mut first_error = None;
        let drained = tokio::time::timeout(deadline - settle_grace, async {
            while let Some(done) = self.consumers.join_next().await {
                if let Err(e) = flatten(done) {
                    first_error.get_or_insert(e);
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(group = %self.group, ?deadline, "shutdown deadline near; cancelling handlers still running");
            let _ = self.abandon.send(true);
            let settled = tokio::time::timeout(settle_grace, async {
                while let Some(done) = self.consumers.join_next().await {
                    if let Err(e) = flatten(done) {
                        first_error.get_or_insert(e);
                    }
                }
            })
            .await;
            if settled.is_err() {
                tracing::warn!(
                    group = %self.group,
                    consumers = self.consumers.len(),
                    "settling did not finish within the shutdown deadline; the broker redelivers what was not settled"
                );
                // Aborted consumers drop their undecided deliveries, which
                // the contract turns into redeliveries.
                self.consumers.abort_all();
                while self.consumers.join_next().await.is_some() {}
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(self.stats()),
        }
    }
}

/// A consumer task's result; the supervisor catches panics, so a join error
/// means the task was cancelled from outside (the runtime shutting down).
fn flatten(done: Result<Result<(), RouterError>, tokio::task::JoinError>) -> Result<(), RouterError> {
    done.unwrap_or_else(|e| {
        Err(RouterError::ConsumerPanicked {
            topic: String::new(),
            message: e.to_string(),
        })
    })
}
