//! Waiting out an unreachable dedup store: consumption pauses behind the
//! handler's gate, one call probes the store with backoff, and every waiting
//! call goes on once it answers.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use busline_core::{BoxError, Gate, GateState};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The store's health as one [`Dedup`](super::Dedup) handler sees it.
#[derive(Debug)]
pub(crate) struct Outage {
    state: Mutex<State>,
    /// Woken when the store answers again or the probing call goes away.
    changed: Notify,
    /// Limit of one store call.
    timeout: Duration,
    /// First and largest delay between probes.
    backoff: (Duration, Duration),
}

#[derive(Debug, Default)]
struct State {
    /// When the outage began; `None` while the store answers.
    down_since: Option<Instant>,
    /// A call is probing the store.
    probing: bool,
    /// Failed store calls in a row, for the backoff.
    failures: u32,
    /// When the next probe is due: kept here, not by the probing call, so
    /// that probing calls cancelled while they wait (a handler timeout
    /// shorter than the backoff) do not push the probe back for ever.
    next_probe: Option<Instant>,
    /// The gate's state when the outage closed it (a gate shared with an
    /// inner handler, such as a circuit breaker's, is handed back as found).
    saved: Option<GateState>,
    /// The state this outage last set on the gate.
    set: Option<GateState>,
}

/// What a call does next while asking the store.
enum Role {
    /// The store is up: just ask.
    Ask,
    /// Probe the store at this instant.
    Probe(Instant),
    /// Another call probes: wait for its news.
    Wait,
}

impl Outage {
    pub(crate) fn new(timeout: Duration, backoff: (Duration, Duration)) -> Self {
        Self {
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            timeout,
            backoff,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the store is taken as unreachable now.
    pub(crate) fn is_down(&self) -> bool {
        self.lock().down_since.is_some()
    }

    /// One store call under the store timeout.
    pub(crate) async fn call<T, Fut>(&self, op: Fut) -> Result<T, BoxError>
    where
        Fut: Future<Output = Result<T, BoxError>>,
    {
        match tokio::time::timeout(self.timeout, op).await {
            Ok(result) => result,
            Err(_) => Err(format!("the dedup store did not answer within {:?}", self.timeout).into()),
        }
    }

    /// Asks the store until it answers. While it cannot be reached the gate
    /// stays closed, one call probes with backoff and the others wait; an
    /// error is never returned, so no handler attempt is used up by it.
    pub(crate) async fn ask<T, F, Fut>(&self, gate: &Gate, shared_gate: bool, op: F) -> T
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, BoxError>>,
    {
        loop {
            let news = self.changed.notified();
            tokio::pin!(news);
            news.as_mut().enable();
            let role = {
                let mut state = self.lock();
                if state.down_since.is_none() {
                    Role::Ask
                } else if !state.probing {
                    state.probing = true;
                    Role::Probe(state.next_probe.unwrap_or_else(Instant::now))
                } else {
                    Role::Wait
                }
            };
            match role {
                Role::Ask => match self.call(op()).await {
                    Ok(value) => return value,
                    Err(e) => self.failed(gate, shared_gate, false, &e),
                },
                Role::Probe(at) => {
                    let probe = Probing(self);
                    tokio::time::sleep_until(at).await;
                    let result = self.call(op()).await;
                    // Record the outcome before another call may probe.
                    match result {
                        Ok(value) => {
                            self.recovered(gate);
                            drop(probe);
                            return value;
                        }
                        Err(e) => {
                            self.failed(gate, shared_gate, true, &e);
                            drop(probe);
                        }
                    }
                }
                Role::Wait => news.await,
            }
        }
    }

    /// A store call failed: the store counts as down and the gate is
    /// (re)closed until the next probe has had time to report. The gate is
    /// never closed for good, so if every waiting call is cancelled, a new
    /// delivery comes in when it reopens and probes.
    ///
    /// Only the call that finds the outage and the probes move the backoff
    /// on: calls that were already asking when the store went away fail
    /// together, and counting each would start with the longest delay.
    pub(crate) fn failed(&self, gate: &Gate, shared_gate: bool, probe: bool, error: &BoxError) {
        let mut state = self.lock();
        let now = Instant::now();
        let next_probe = match state.next_probe {
            Some(at) if !probe && state.down_since.is_some() => at,
            _ => {
                state.failures = state.failures.saturating_add(1);
                now + self.delay(state.failures)
            }
        };
        state.next_probe = Some(next_probe);
        let closed = GateState::ClosedUntil(next_probe.max(now) + self.timeout);
        if state.down_since.is_none() {
            tracing::warn!(error = %error, "dedup store unreachable: consumption paused until it answers");
            state.down_since = Some(Instant::now());
            state.saved = shared_gate.then(|| gate.state());
        } else {
            tracing::debug!(error = %error, failures = state.failures, "dedup store still unreachable");
            // Someone else (an inner breaker) set the gate meanwhile: that
            // is the state to hand back.
            if shared_gate && state.set != Some(gate.state()) {
                state.saved = Some(gate.state());
            }
        }
        gate.set(closed);
        state.set = Some(closed);
    }

    /// The store answered: reopen the gate (or hand it back as found, if an
    /// inner handler has not changed it since) and wake the waiting calls.
    fn recovered(&self, gate: &Gate) {
        let mut state = self.lock();
        if let Some(since) = state.down_since.take() {
            tracing::info!(outage = ?since.elapsed(), "dedup store answers again: consumption resumes");
            if state.set == Some(gate.state()) {
                gate.set(state.saved.unwrap_or(GateState::Open));
            }
        }
        state.failures = 0;
        state.next_probe = None;
        state.saved = None;
        state.set = None;
        drop(state);
        self.changed.notify_waiters();
    }

    /// The delay before the next probe, after `failures` failed calls.
    fn delay(&self, failures: u32) -> Duration {
        let (first, max) = self.backoff;
        let exp = failures.saturating_sub(1).min(16);
        let base = first.saturating_mul(1 << exp).min(max);
        // ±20% so that the members of a group do not probe in step.
        base.mul_f64(0.8 + 0.4 * fastrand::f64()).min(max)
    }
}

/// Held by the probing call: when it ends, finished or cancelled, another
/// call may probe.
struct Probing<'a>(&'a Outage);

impl Drop for Probing<'_> {
    fn drop(&mut self) {
        self.0.lock().probing = false;
        self.0.changed.notify_waiters();
    }
}
