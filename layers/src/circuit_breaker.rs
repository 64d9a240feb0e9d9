//! [`CircuitBreakerLayer`]: a consumer circuit breaker that stops taking
//! deliveries while the handler's dependency is failing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use busline_core::{Context, DomainEvent, Event, EventService, FailureKind, Gate, HandlerError, Layer};
use futures::future::BoxFuture;
use tokio::sync::Notify;
use tokio::time::Instant;

/// A consumer circuit breaker, by failure rate over a sliding window of the
/// last `window_size` calls.
///
/// - **Closed**: calls run; once the window holds at least
///   `minimum_calls` outcomes and the share of failures reaches
///   `failure_rate_threshold`, the breaker opens.
/// - **Open** for `open_duration`: the handler's [`Gate`] is closed, so the
///   router takes no delivery from the subscription and events wait in the
///   broker (no retry attempt is used up). Calls that were already taken
///   when the breaker opened wait for it, they do not fail.
/// - **Half-open**: up to `half_open_probes` calls run as probes while
///   consumption pauses again; if they all succeed the breaker closes (and
///   the window starts empty), if one fails it opens again. A probe that is
///   cancelled (its future dropped) counts neither way: its slot is given
///   back and another call probes.
///
/// Failures are retryable errors, time-outs (from layers inside it, or the
/// router's handler timeout cancelling a running call) and panics;
/// permanent errors and skips concern the event, not the dependency, and
/// count as successes. A call dropped before it started counts for
/// nothing.
///
/// The gate holds back the handler's whole subscription (its topic in its
/// group), other event types on that topic included.
///
/// ```
/// use std::time::Duration;
/// use busline_layers::CircuitBreakerLayer;
/// let layer = CircuitBreakerLayer::new()
///     .with_failure_rate_threshold(0.5)
///     .with_window_size(20)
///     .with_minimum_calls(10)
///     .with_open_duration(Duration::from_secs(30))
///     .with_half_open_probes(3);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct CircuitBreakerLayer {
    failure_rate_threshold: f64,
    window_size: usize,
    minimum_calls: usize,
    open_duration: Duration,
    half_open_probes: usize,
}

impl Default for CircuitBreakerLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl CircuitBreakerLayer {
    /// Opens at 50% failures over the last 20 calls (at least 10), for 30 s,
    /// and closes after 3 successful probes.
    pub fn new() -> Self {
        Self {
            failure_rate_threshold: 0.5,
            window_size: 20,
            minimum_calls: 10,
            open_duration: Duration::from_secs(30),
            half_open_probes: 3,
        }
    }

    /// The share of failures (0.0 to 1.0) that opens the breaker.
    pub fn with_failure_rate_threshold(mut self, rate: f64) -> Self {
        self.failure_rate_threshold = rate.clamp(0.0, 1.0);
        self
    }

    /// How many of the latest calls the window holds (at least 1).
    pub fn with_window_size(mut self, n: usize) -> Self {
        self.window_size = n.max(1);
        self.minimum_calls = self.minimum_calls.min(self.window_size);
        self
    }

    /// How many outcomes the window must hold before the breaker may open
    /// (at least 1, at most the window size).
    pub fn with_minimum_calls(mut self, n: usize) -> Self {
        self.minimum_calls = n.clamp(1, self.window_size);
        self
    }

    /// How long the breaker stays open before it probes.
    pub fn with_open_duration(mut self, d: Duration) -> Self {
        self.open_duration = d;
        self
    }

    /// How many successful probes close the breaker (at least 1).
    pub fn with_half_open_probes(mut self, n: usize) -> Self {
        self.half_open_probes = n.max(1);
        self
    }
}

impl<H> Layer<H> for CircuitBreakerLayer {
    type Service = CircuitBreaker<H>;

    fn layer(&self, inner: H) -> CircuitBreaker<H> {
        CircuitBreaker {
            inner: Arc::new(inner),
            breaker: Arc::new(Breaker {
                config: *self,
                state: Mutex::new(State::closed()),
                gate: Gate::new(),
                changed: Notify::new(),
                rounds: AtomicU64::new(0),
            }),
        }
    }
}

/// What a breaker is doing, as [`BreakerHandle::state`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls run.
    Closed,
    /// No deliveries are taken.
    Open,
    /// Probes run.
    HalfOpen,
}

/// A handler behind a circuit breaker; made by [`CircuitBreakerLayer`].
pub struct CircuitBreaker<H> {
    inner: Arc<H>,
    breaker: Arc<Breaker>,
}

impl<H> std::fmt::Debug for CircuitBreaker<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("state", &self.handle().state())
            .finish()
    }
}

impl<H> CircuitBreaker<H> {
    /// A handle to watch this breaker after the handler is registered.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle(self.breaker.clone())
    }
}

/// Watches one breaker (for tests, health checks, dashboards).
#[derive(Clone)]
pub struct BreakerHandle(Arc<Breaker>);

impl std::fmt::Debug for BreakerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BreakerHandle").field(&self.state()).finish()
    }
}

impl BreakerHandle {
    /// The breaker's state now (an open breaker whose time is up counts as
    /// half-open).
    pub fn state(&self) -> BreakerState {
        match &*self.0.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if Instant::now() < *until => BreakerState::Open,
            State::Open { .. } | State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// The gate the breaker closes while open.
    pub fn gate(&self) -> Gate {
        self.0.gate.clone()
    }
}

struct Breaker {
    config: CircuitBreakerLayer,
    state: Mutex<State>,
    gate: Gate,
    /// Woken on every change of state, for calls waiting to run.
    changed: Notify,
    /// Half-open periods so far.
    rounds: AtomicU64,
}

enum State {
    Closed {
        /// `true` for a failure, oldest first.
        window: VecDeque<bool>,
        failures: usize,
    },
    Open {
        until: Instant,
    },
    HalfOpen {
        started: usize,
        succeeded: usize,
        /// Which half-open period this is, so that a late outcome of a
        /// probe from an earlier one is not counted in this one.
        round: u64,
    },
}

impl State {
    fn closed() -> Self {
        State::Closed {
            window: VecDeque::new(),
            failures: 0,
        }
    }
}

enum Admission {
    /// Run the call; `probe` is the half-open round it probes in.
    Run {
        probe: Option<u64>,
    },
    WaitUntil(Option<Instant>),
}

impl Breaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn admit(&self) -> Admission {
        let mut state = self.lock();
        if let State::Open { until } = *state {
            if Instant::now() < until {
                return Admission::WaitUntil(Some(until));
            }
            tracing::info!("circuit breaker half-open: probing");
            *state = State::HalfOpen {
                started: 0,
                succeeded: 0,
                round: self.rounds.fetch_add(1, Ordering::Relaxed) + 1,
            };
        }
        match &mut *state {
            State::Closed { .. } => Admission::Run { probe: None },
            State::HalfOpen { started, round, .. } if *started < self.config.half_open_probes => {
                *started += 1;
                if *started == self.config.half_open_probes {
                    // Enough probes are out: take no more deliveries until
                    // they tell how the dependency is.
                    self.gate.close();
                }
                Admission::Run { probe: Some(*round) }
            }
            _ => Admission::WaitUntil(None),
        }
    }

    fn open(&self, state: &mut State) {
        let until = Instant::now() + self.config.open_duration;
        *state = State::Open { until };
        self.gate.close_until(until);
        self.changed.notify_waiters();
    }

    /// A probe ended without an outcome: another call may probe instead.
    fn release_probe(&self, probe_round: u64) {
        let mut state = self.lock();
        if let State::HalfOpen { started, round, .. } = &mut *state {
            if *round == probe_round && *started > 0 {
                *started -= 1;
                tracing::debug!("circuit breaker probe cancelled; another call may probe");
                // The gate was closed once every probe was out; one is free.
                self.gate.open();
                self.changed.notify_waiters();
            }
        }
    }

    fn record(&self, probe: Option<u64>, failed: bool) {
        let mut state = self.lock();
        match &mut *state {
            State::HalfOpen { succeeded, round, .. } if probe == Some(*round) => {
                if failed {
                    tracing::warn!("circuit breaker probe failed; open again");
                    self.open(&mut state);
                } else {
                    *succeeded += 1;
                    if *succeeded >= self.config.half_open_probes {
                        tracing::info!("circuit breaker closed");
                        *state = State::closed();
                        self.gate.open();
                        self.changed.notify_waiters();
                    }
                }
            }
            State::Closed { window, failures } if probe.is_none() => {
                window.push_back(failed);
                *failures += usize::from(failed);
                if window.len() > self.config.window_size {
                    *failures -= usize::from(window.pop_front().unwrap_or(false));
                }
                let calls = window.len();
                if calls >= self.config.minimum_calls
                    && *failures as f64 >= self.config.failure_rate_threshold * calls as f64
                {
                    tracing::warn!(
                        failures = *failures,
                        calls,
                        "circuit breaker open: deliveries wait in the broker"
                    );
                    self.open(&mut state);
                }
            }
            // A late outcome of a call from an earlier state.
            _ => {}
        }
    }
}

/// Tells the breaker how an admitted call ended, whichever way it ends.
/// Made when the call is admitted, before its future is first polled, so a
/// call dropped at any point still settles its share of the breaker's
/// state (a probe slot left taken would close the gate for good).
struct Outcome {
    breaker: Arc<Breaker>,
    /// The half-open round the call probes in, if it is a probe.
    probe: Option<u64>,
    /// The inner handler was started (the call's future was polled).
    started: bool,
    recorded: bool,
}

impl Outcome {
    fn new(breaker: Arc<Breaker>, probe: Option<u64>) -> Self {
        Self {
            breaker,
            probe,
            started: false,
            recorded: false,
        }
    }

    fn record(mut self, result: &Result<(), HandlerError>) {
        self.recorded = true;
        let failed = matches!(result, Err(e) if e.kind() == FailureKind::Retryable);
        self.breaker.record(self.probe, failed);
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if self.recorded {
            return;
        }
        if std::thread::panicking() {
            // The handler panicked (the router catches it above us).
            self.breaker.record(self.probe, true);
        } else if let Some(round) = self.probe {
            // A cancelled probe tells nothing about the dependency: give its
            // slot back so another call can probe.
            self.breaker.release_probe(round);
        } else if self.started {
            // Cancelled while running: most often the router's handler
            // timeout, a hanging dependency.
            self.breaker.record(None, true);
        }
    }
}

impl<E: Event, H: EventService<E>> EventService<E> for CircuitBreaker<H> {
    type Future = BoxFuture<'static, Result<(), HandlerError>>;

    fn call(&self, event: DomainEvent<E>, ctx: Context) -> Self::Future {
        let breaker = self.breaker.clone();
        if let Admission::Run { probe } = breaker.admit() {
            let mut outcome = Outcome::new(breaker, probe);
            let call = self.inner.call(event, ctx);
            return Box::pin(async move {
                outcome.started = true;
                let result = call.await;
                outcome.record(&result);
                result
            });
        }
        let inner = self.inner.clone();
        Box::pin(async move {
            let probe = loop {
                let changed = breaker.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                match breaker.admit() {
                    Admission::Run { probe } => break probe,
                    Admission::WaitUntil(Some(until)) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(until) => {}
                            _ = changed => {}
                        }
                    }
                    Admission::WaitUntil(None) => changed.await,
                }
            };
            let mut outcome = Outcome::new(breaker, probe);
            outcome.started = true;
            let result = inner.call(event, ctx).await;
            outcome.record(&result);
            result
        })
    }

    fn gate(&self) -> Option<Gate> {
        Some(self.breaker.gate.clone())
    }
}
