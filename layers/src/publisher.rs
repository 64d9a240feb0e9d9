//! [`GuardedBus`]: the publisher side. A publish timeout, retries of
//! transient failures with backoff (keeping the event id), and a circuit
//! breaker that fails fast while the broker is unreachable.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use busline_core::backend::BusDecorator;
use busline_core::{
    Bus, ErrorChain, EventBus, PublishError, PublishErrorKind, RawEvent, RetryDecision, RetryPolicy,
};
use tokio::time::Instant;

/// The source of a [`PublishError`] (kind `Connection`) returned without
/// trying, because the publisher's circuit breaker is open. Test for it with
/// [`is_circuit_open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("publisher circuit breaker is open after repeated failures; retry in {retry_in:?}")]
pub struct CircuitOpen {
    /// Until the breaker lets a probe publish through.
    pub retry_in: Duration,
}

/// Whether `error` was returned by an open publisher circuit breaker
/// (without reaching the broker).
pub fn is_circuit_open(error: &PublishError) -> bool {
    std::error::Error::source(error).is_some_and(|s| s.is::<CircuitOpen>())
}

/// The source of a [`PublishError`] (kind `Timeout`) of a publish that got
/// no confirmation within the publish timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no confirmation within {0:?}")]
pub struct PublishTimedOut(pub Duration);

/// Whether a failed publish may pass if tried again
/// ([`PublishErrorKind::is_transient`]).
pub fn is_transient(kind: PublishErrorKind) -> bool {
    kind.is_transient()
}

/// How a [`GuardedBus`] publishes.
///
/// ```
/// use std::time::Duration;
/// use busline_core::RetryPolicy;
/// use busline_layers::PublishPolicy;
/// let policy = PublishPolicy::default()
///     .with_timeout(Some(Duration::from_secs(5)))
///     .with_retry(RetryPolicy::default().with_max_attempts(3))
///     .with_breaker(Some((5, Duration::from_secs(10))));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PublishPolicy {
    /// Limit of one publish attempt, until the broker confirms (`None`: the
    /// backend's own).
    pub timeout: Option<Duration>,
    /// Attempts and backoff for transient failures. `max_attempts = 1`
    /// turns retries off.
    pub retry: RetryPolicy,
    /// `(consecutive transient failures, open duration)`: after that many
    /// failures in a row, publishes fail fast for that long, then one probe
    /// goes through; its success closes the breaker. A probe whose caller
    /// drops the publish tells nothing, and the next publish probes.
    /// `None`: no breaker.
    pub breaker: Option<(u32, Duration)>,
}

impl Default for PublishPolicy {
    /// 5 s per attempt; 3 attempts, backoff from 100 ms to 2 s (jitter
    /// 20%); the breaker opens after 5 failures in a row, for 10 s.
    ///
    /// A publish gives up after at most 3 × 5 s + 120 ms + 240 ms =
    /// 15.36 s ([`longest`](Self::longest)), well inside the router's
    /// default 30 s handler timeout, so a `ctx.publish` during an outage
    /// returns its error to the handler instead of being cancelled with it.
    fn default() -> Self {
        Self {
            timeout: Some(Duration::from_secs(5)),
            retry: RetryPolicy::default()
                .with_max_attempts(3)
                .with_backoff(Duration::from_millis(100), Duration::from_secs(2)),
            breaker: Some((5, Duration::from_secs(10))),
        }
    }
}

impl PublishPolicy {
    /// Sets the per-attempt timeout.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the breaker: `(consecutive failures, open duration)`.
    pub fn with_breaker(mut self, breaker: Option<(u32, Duration)>) -> Self {
        self.breaker = breaker.map(|(n, d)| (n.max(1), d));
        self
    }

    /// The longest a publish can take before it returns: every attempt
    /// timing out, plus the largest backoff (jitter included) between them.
    /// `None` without a per-attempt timeout. Keep it below the handler
    /// timeout of routers that publish from handlers.
    pub fn longest(&self) -> Option<Duration> {
        let timeout = self.timeout?;
        let attempts = self.retry.max_attempts.max(1);
        let jitter = 1.0 + self.retry.jitter.clamp(0.0, 1.0);
        let backoff: Duration = (1..attempts)
            .map(|a| {
                self.retry
                    .base_backoff(a)
                    .mul_f64(jitter)
                    .min(self.retry.max_backoff)
            })
            .sum();
        Some(timeout * attempts + backoff)
    }
}

#[derive(Debug)]
enum BreakerState {
    Closed { failures: u32 },
    Open { until: Instant },
    Probing,
}

/// An [`EventBus`] decorator applying a [`PublishPolicy`] to publishes
/// (subscriptions pass through). A retried event keeps its id, so brokers
/// that deduplicate by id (NATS JetStream, Kafka's idempotent producer
/// within a session) store it once; elsewhere a retry after a lost
/// confirmation may store it twice (at-least-once).
///
/// ```
/// # fn demo(bus: busline_core::Bus) {
/// use busline_layers::{GuardedBus, PublishPolicy};
/// let bus = GuardedBus::wrap(&bus, PublishPolicy::default());
/// # }
/// ```
pub struct GuardedBus {
    inner: Arc<dyn EventBus>,
    policy: PublishPolicy,
    state: Mutex<BreakerState>,
}

impl std::fmt::Debug for GuardedBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedBus")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl GuardedBus {
    /// Decorates a backend.
    pub fn new(inner: Arc<dyn EventBus>, policy: PublishPolicy) -> Self {
        Self {
            inner,
            policy,
            state: Mutex::new(BreakerState::Closed { failures: 0 }),
        }
    }

    /// The same bus, publishing under `policy`.
    pub fn wrap(bus: &Bus, policy: PublishPolicy) -> Bus {
        bus.with_transport(Arc::new(Self::new(bus.transport().clone(), policy)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May an attempt go out now? `Ok(true)` for the half-open probe, `Err`
    /// with the time left while open.
    fn admit(&self) -> Result<bool, Duration> {
        if self.policy.breaker.is_none() {
            return Ok(false);
        }
        let mut state = self.lock();
        match *state {
            BreakerState::Closed { .. } => Ok(false),
            BreakerState::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    *state = BreakerState::Probing;
                    Ok(true)
                } else {
                    Err(until - now)
                }
            }
            // One probe at a time; the others fail fast meanwhile.
            BreakerState::Probing => Err(Duration::ZERO),
        }
    }

    fn record(&self, transient_failure: bool) {
        let Some((threshold, open_for)) = self.policy.breaker else {
            return;
        };
        let mut state = self.lock();
        let next = match (&*state, transient_failure) {
            (_, false) => BreakerState::Closed { failures: 0 },
            (BreakerState::Closed { failures }, true) if failures + 1 < threshold => BreakerState::Closed {
                failures: failures + 1,
            },
            (BreakerState::Open { until }, true) => BreakerState::Open { until: *until },
            (_, true) => {
                tracing::warn!(?open_for, "publisher circuit breaker open: publishes fail fast");
                BreakerState::Open {
                    until: Instant::now() + open_for,
                }
            }
        };
        *state = next;
    }

    /// Gives back a probe whose publish never ended (its caller's future was
    /// dropped): it tells nothing about the broker, so the breaker lets the
    /// next publish probe at once.
    fn release_probe(&self) {
        let mut state = self.lock();
        if matches!(*state, BreakerState::Probing) {
            tracing::debug!("publisher probe cancelled; the next publish probes");
            *state = BreakerState::Open {
                until: Instant::now(),
            };
        }
    }

    async fn attempt<F, Fut>(&self, topic: &str, send: F) -> Result<(), PublishError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), PublishError>>,
    {
        let mut attempt = 1;
        loop {
            let probe = match self.admit() {
                Ok(probe) => ProbeGuard {
                    bus: probe.then_some(self),
                },
                Err(retry_in) => {
                    return Err(PublishError::new(PublishErrorKind::Connection, topic)
                        .with_source(CircuitOpen { retry_in }))
                }
            };
            let result = match self.policy.timeout {
                Some(limit) => match tokio::time::timeout(limit, send()).await {
                    Ok(result) => result,
                    Err(_) => Err(PublishError::new(PublishErrorKind::Timeout, topic)
                        .with_source(PublishTimedOut(limit))),
                },
                None => send().await,
            };
            let was_probe = probe.settle();
            let error = match result {
                Ok(()) => {
                    self.record(false);
                    return Ok(());
                }
                Err(e) => e,
            };
            if !is_transient(error.kind()) {
                // Not the broker's health: leave the breaker as it is, unless
                // this was its probe (the broker answered).
                if was_probe {
                    self.record(false);
                }
                return Err(error);
            }
            self.record(true);
            match self.policy.retry.decide(attempt) {
                RetryDecision::RetryAfter(after) => {
                    tracing::debug!(topic, attempt, ?after, error = %ErrorChain(&error), "publish failed; retrying");
                    tokio::time::sleep(after).await;
                    attempt += 1;
                }
                RetryDecision::GiveUp => return Err(error),
            }
        }
    }
}

/// Held across the half-open probe's attempt: the caller may drop the
/// publish future at any await (a handler timeout, a `select!`, shutdown),
/// and then only this guard's drop can take the breaker out of `Probing`,
/// which would otherwise refuse every later publish for good.
struct ProbeGuard<'a> {
    /// The bus whose probe this is; `None` for an ordinary attempt.
    bus: Option<&'a GuardedBus>,
}

impl ProbeGuard<'_> {
    /// The attempt ended and its outcome will be recorded; whether it was
    /// the probe.
    fn settle(mut self) -> bool {
        self.bus.take().is_some()
    }
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if let Some(bus) = self.bus {
            bus.release_probe();
        }
    }
}

#[async_trait]
impl BusDecorator for GuardedBus {
    fn inner(&self) -> &Arc<dyn EventBus> {
        &self.inner
    }

    async fn on_publish(&self, topic: &str, event: RawEvent) -> Result<(), PublishError> {
        self.attempt(topic, || self.inner.publish(topic, event.clone()))
            .await
    }

    async fn on_publish_batch(&self, topic: &str, events: Vec<RawEvent>) -> Result<(), PublishError> {
        self.attempt(topic, || self.inner.publish_batch(topic, events.clone()))
            .await
    }
}
