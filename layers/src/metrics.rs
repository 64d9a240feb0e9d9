//! Metrics through the [`metrics`] facade: the handler layer
//! [`MetricsLayer`], the router observer [`MetricsObserver`], and the
//! publisher decorator [`MetricsBus`]. Install any `metrics` recorder
//! (Prometheus exporter, StatsD, …) to collect them.
//!
//! | name | type | labels | moved by |
//! | --- | --- | --- | --- |
//! | `busline_published_total` | counter | `topic` | each event the broker confirmed ([`MetricsBus`]) |
//! | `busline_publish_failures_total` | counter | `topic`, `kind` | each failed publish; `kind` is the `PublishErrorKind` in snake_case ([`MetricsBus`]) |
//! | `busline_publish_duration_seconds` | histogram | `topic` | publish call to confirmation ([`MetricsBus`]) |
//! | `busline_handled_total` | counter | `topic`, `group` | each delivery handled and acknowledged ([`MetricsObserver`]) |
//! | `busline_retried_total` | counter | `topic`, `group` | each delivery sent back for another attempt ([`MetricsObserver`]) |
//! | `busline_dead_lettered_total` | counter | `topic`, `group`, `reason` | each dead letter; `reason` as in the DLQ (`max_attempts_exceeded`, `permanent_error`, …) ([`MetricsObserver`]) |
//! | `busline_skipped_total` | counter | `topic`, `group`, `reason` | each delivery acknowledged unhandled: `duplicate` (idempotent consumer), `unknown_event_type`, or a handler's own skip reason ([`MetricsObserver`]) |
//! | `busline_abandoned_total` | counter | `topic`, `group` | each delivery returned unhandled at shutdown ([`MetricsObserver`]) |
//! | `busline_handler_duration_seconds` | histogram | `topic`, `group`, `event_type`, `outcome` | each handler call, from call to result; `outcome` is `ok`, `error` or `skipped` ([`MetricsLayer`]) |
//! | `busline_lag_seconds` | histogram | `topic`, `group`, `event_type` | at each handler call: now minus the event's `time` (end-to-end lag, retries included; 0 if the clocks disagree) ([`MetricsLayer`]) |
//! | `busline_in_flight` | gauge | `topic`, `group`, `event_type` | handler calls running now ([`MetricsLayer`]) |
//!
//! Where the layer stands in a stack decides what `busline_handler_duration_seconds`
//! covers: [`default_stack`](crate::default_stack) puts it outside the
//! resilience layers, so waits in a bulkhead or rate limiter count.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use async_trait::async_trait;
use busline_core::backend::BusDecorator;
use busline_core::{
    Context, DomainEvent, Event, EventBus, EventService, FailureKind, Gate, HandlerError, Layer, Outcome,
    PublishError, PublishErrorKind, RawEvent, RouterObserver, Settled,
};
use metrics::{Counter, Gauge, Histogram};
use pin_project_lite::pin_project;

/// Metric names, for dashboards and tests.
pub mod names {
    /// Events the broker confirmed.
    pub const PUBLISHED: &str = "busline_published_total";
    /// Failed publishes.
    pub const PUBLISH_FAILURES: &str = "busline_publish_failures_total";
    /// Publish latency.
    pub const PUBLISH_DURATION: &str = "busline_publish_duration_seconds";
    /// Deliveries handled and acknowledged.
    pub const HANDLED: &str = "busline_handled_total";
    /// Deliveries sent back for another attempt.
    pub const RETRIED: &str = "busline_retried_total";
    /// Deliveries dead-lettered.
    pub const DEAD_LETTERED: &str = "busline_dead_lettered_total";
    /// Deliveries acknowledged unhandled.
    pub const SKIPPED: &str = "busline_skipped_total";
    /// Deliveries returned at shutdown.
    pub const ABANDONED: &str = "busline_abandoned_total";
    /// Handler call duration.
    pub const HANDLER_DURATION: &str = "busline_handler_duration_seconds";
    /// Event time to handling.
    pub const LAG: &str = "busline_lag_seconds";
    /// Handler calls running.
    pub const IN_FLIGHT: &str = "busline_in_flight";
}

/// Records handler duration, end-to-end lag and calls in flight for the
/// wrapped handler (see the [module](self) table).
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsLayer;

impl MetricsLayer {
    /// The layer.
    pub fn new() -> Self {
        Self
    }
}

impl<H> Layer<H> for MetricsLayer {
    type Service = Metered<H>;

    fn layer(&self, inner: H) -> Metered<H> {
        Metered {
            inner,
            handles: Arc::new(OnceLock::new()),
        }
    }
}

/// A handler with metrics; made by [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct Metered<H> {
    inner: H,
    /// Registered on the first call: a handler serves one (topic, group,
    /// event type), so its handles never change.
    handles: Arc<OnceLock<HandlerMetrics>>,
}

#[derive(Debug)]
struct HandlerMetrics {
    ok: Histogram,
    error: Histogram,
    skipped: Histogram,
    lag: Histogram,
    in_flight: Gauge,
}

impl HandlerMetrics {
    fn new(topic: &str, group: &str, event_type: &str) -> Self {
        let labels = [
            ("topic", topic.to_owned()),
            ("group", group.to_owned()),
            ("event_type", event_type.to_owned()),
        ];
        let duration = |outcome: &'static str| {
            let mut l = labels.to_vec();
            l.push(("outcome", outcome.to_owned()));
            metrics::histogram!(names::HANDLER_DURATION, &l)
        };
        Self {
            ok: duration("ok"),
            error: duration("error"),
            skipped: duration("skipped"),
            lag: metrics::histogram!(names::LAG, &labels),
            in_flight: metrics::gauge!(names::IN_FLIGHT, &labels),
        }
    }
}

impl<E: Event, H: EventService<E>> EventService<E> for Metered<H> {
    type Future = MeteredFuture<H::Future>;

    fn call(&self, event: DomainEvent<E>, ctx: Context) -> Self::Future {
        let m = self
            .handles
            .get_or_init(|| HandlerMetrics::new(ctx.topic(), ctx.group(), &event.event_type));
        let lag = (chrono::Utc::now() - event.time).to_std().unwrap_or_default();
        m.lag.record(lag.as_secs_f64());
        m.in_flight.increment(1.0);
        MeteredFuture {
            inner: self.inner.call(event, ctx),
            guard: InFlight {
                handles: self.handles.clone(),
                started: Instant::now(),
            },
        }
    }

    fn gate(&self) -> Option<Gate> {
        self.inner.gate()
    }
}

/// Counts a call out of flight when it ends (or is dropped).
struct InFlight {
    handles: Arc<OnceLock<HandlerMetrics>>,
    started: Instant,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(m) = self.handles.get() {
            m.in_flight.decrement(1.0);
        }
    }
}

pin_project! {
    /// The future of a [`Metered`] call.
    pub struct MeteredFuture<F> {
        #[pin]
        inner: F,
        guard: InFlight,
    }
}

impl<F: Future<Output = Result<(), HandlerError>>> Future for MeteredFuture<F> {
    type Output = Result<(), HandlerError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let poll = this.inner.poll(cx);
        if let Poll::Ready(result) = &poll {
            if let Some(m) = this.guard.handles.get() {
                let histogram = match result {
                    Ok(()) => &m.ok,
                    Err(e) if e.kind() == FailureKind::Skipped => &m.skipped,
                    Err(_) => &m.error,
                };
                histogram.record(this.guard.started.elapsed().as_secs_f64());
            }
        }
        poll
    }
}

/// Counts a router's settlement decisions (see the [module](self) table).
/// Register with `Router::observe`.
#[derive(Debug, Default)]
pub struct MetricsObserver {
    by_topic: Mutex<HashMap<(String, String), Arc<SettleMetrics>>>,
}

#[derive(Debug)]
struct SettleMetrics {
    handled: Counter,
    retried: Counter,
    abandoned: Counter,
}

impl MetricsObserver {
    /// An observer.
    pub fn new() -> Self {
        Self::default()
    }

    fn handles(&self, topic: &str, group: &str) -> Arc<SettleMetrics> {
        let mut map = self.by_topic.lock().unwrap_or_else(|p| p.into_inner());
        // A router has few topics and one group: a short scan beats hashing
        // owned keys on this per-event path.
        if let Some((_, m)) = map.iter().find(|((t, g), _)| t == topic && g == group) {
            return m.clone();
        }
        let labels = [("topic", topic.to_owned()), ("group", group.to_owned())];
        let m = Arc::new(SettleMetrics {
            handled: metrics::counter!(names::HANDLED, &labels),
            retried: metrics::counter!(names::RETRIED, &labels),
            abandoned: metrics::counter!(names::ABANDONED, &labels),
        });
        map.insert((topic.to_owned(), group.to_owned()), m.clone());
        m
    }
}

impl RouterObserver for MetricsObserver {
    fn on_settled(&self, s: &Settled<'_>) {
        match s.outcome {
            Outcome::Handled => self.handles(s.topic, s.group).handled.increment(1),
            Outcome::Retried { .. } => self.handles(s.topic, s.group).retried.increment(1),
            Outcome::Abandoned => self.handles(s.topic, s.group).abandoned.increment(1),
            Outcome::Skipped { reason } => metrics::counter!(
                names::SKIPPED,
                "topic" => s.topic.to_owned(),
                "group" => s.group.to_owned(),
                "reason" => reason,
            )
            .increment(1),
            Outcome::DeadLettered { reason } => metrics::counter!(
                names::DEAD_LETTERED,
                "topic" => s.topic.to_owned(),
                "group" => s.group.to_owned(),
                "reason" => reason.as_str(),
            )
            .increment(1),
            _ => {}
        }
    }
}

/// An [`EventBus`] decorator counting publishes and their failures (see the
/// [module](self) table).
pub struct MetricsBus {
    inner: Arc<dyn EventBus>,
    by_topic: Mutex<HashMap<String, Arc<PublishMetrics>>>,
}

impl std::fmt::Debug for MetricsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsBus")
    }
}

struct PublishMetrics {
    published: Counter,
    duration: Histogram,
}

fn kind_label(kind: PublishErrorKind) -> &'static str {
    match kind {
        PublishErrorKind::Encode => "encode",
        PublishErrorKind::InvalidEnvelope => "invalid_envelope",
        PublishErrorKind::Rejected => "rejected",
        PublishErrorKind::Unroutable => "unroutable",
        PublishErrorKind::Timeout => "timeout",
        PublishErrorKind::Connection => "connection",
        PublishErrorKind::Closed => "closed",
        _ => "other",
    }
}

impl MetricsBus {
    /// Decorates a backend.
    pub fn new(inner: Arc<dyn EventBus>) -> Self {
        Self {
            inner,
            by_topic: Mutex::new(HashMap::new()),
        }
    }

    /// The same bus, with publishes counted.
    pub fn wrap(bus: &busline_core::Bus) -> busline_core::Bus {
        bus.with_transport(Arc::new(Self::new(bus.transport().clone())))
    }

    fn handles(&self, topic: &str) -> Arc<PublishMetrics> {
        let mut map = self.by_topic.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = map.get(topic) {
            return m.clone();
        }
        let m = Arc::new(PublishMetrics {
            published: metrics::counter!(names::PUBLISHED, "topic" => topic.to_owned()),
            duration: metrics::histogram!(names::PUBLISH_DURATION, "topic" => topic.to_owned()),
        });
        map.insert(topic.to_owned(), m.clone());
        m
    }

    fn record(&self, topic: &str, count: u64, started: Instant, result: &Result<(), PublishError>) {
        match result {
            Ok(()) => {
                let m = self.handles(topic);
                m.published.increment(count);
                m.duration.record(started.elapsed().as_secs_f64());
            }
            Err(e) => metrics::counter!(
                names::PUBLISH_FAILURES,
                "topic" => topic.to_owned(),
                "kind" => kind_label(e.kind()),
            )
            .increment(1),
        }
    }
}

#[async_trait]
impl BusDecorator for MetricsBus {
    fn inner(&self) -> &Arc<dyn EventBus> {
        &self.inner
    }

    async fn on_publish(&self, topic: &str, event: RawEvent) -> Result<(), PublishError> {
        let started = Instant::now();
        let result = self.inner.publish(topic, event).await;
        self.record(topic, 1, started, &result);
        result
    }

    async fn on_publish_batch(&self, topic: &str, events: Vec<RawEvent>) -> Result<(), PublishError> {
        let started = Instant::now();
        let n = events.len() as u64;
        let result = self.inner.publish_batch(topic, events).await;
        self.record(topic, n, started, &result);
        result
    }
}
