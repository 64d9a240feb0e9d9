//! [`TracingLayer`] and [`TracingBus`]: a `tracing` span per handle and per
//! publish, joined across the bus by a W3C `traceparent` in the envelope.
//!
//! Spans:
//!
//! | span | fields |
//! | --- | --- |
//! | `busline.publish` | `topic`, `event_type`, `event_id`, `correlation_id`, `trace_id`, `span_id`, `parent_span_id` |
//! | `busline.handle` | `topic`, `group`, `event_type`, `event_id`, `correlation_id`, `attempt`, `trace_id`, `span_id`, `parent_span_id` |
//!
//! A publish writes `traceparent` (`00-<trace id>-<span id>-<flags>`) into
//! the event's extensions, naming the publish span; the handler's span takes
//! that span as its parent (same `trace_id`, `parent_span_id` = the
//! publisher's `span_id`), and events published while a handler runs
//! (`Context::publish`) continue the handler's trace. With the feature
//! `opentelemetry` and a `tracing-opentelemetry` layer installed, the ids
//! are OpenTelemetry's own and the handle span's OpenTelemetry parent is set
//! from the envelope, so exported traces join across services.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use async_trait::async_trait;
use busline_core::backend::BusDecorator;
use busline_core::{
    Context, DomainEvent, ErrorChain, Event, EventBus, EventService, Gate, HandlerError, Layer, PublishError,
    RawEvent,
};
use pin_project_lite::pin_project;
use tracing::{Instrument, Span};

/// The extension that carries the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// A W3C trace context: which trace, which span in it, sampled or not.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// The trace id (16 bytes, never all zero).
    pub trace_id: [u8; 16],
    /// The span id (8 bytes, never all zero).
    pub span_id: [u8; 8],
    /// The `sampled` flag.
    pub sampled: bool,
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_traceparent())
    }
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

fn random_nonzero<const N: usize>() -> [u8; N] {
    loop {
        let mut out = [0u8; N];
        out.iter_mut().for_each(|b| *b = fastrand::u8(..));
        if out.iter().any(|b| *b != 0) {
            return out;
        }
    }
}

impl TraceContext {
    /// A new trace with a new root span.
    pub fn new_root() -> Self {
        Self {
            trace_id: random_nonzero(),
            span_id: random_nonzero(),
            sampled: true,
        }
    }

    /// A new span in the same trace, child of this one.
    pub fn child(&self) -> Self {
        Self {
            span_id: random_nonzero(),
            ..*self
        }
    }

    /// Reads a `traceparent` value (version 00; later versions are read by
    /// their first four fields, as the spec asks).
    ///
    /// ```
    /// use busline_layers::tracing::TraceContext;
    /// let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    /// let cx = TraceContext::parse(tp).unwrap();
    /// assert_eq!(cx.to_traceparent(), tp);
    /// assert!(TraceContext::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
    /// ```
    pub fn parse(traceparent: &str) -> Option<Self> {
        let mut parts = traceparent.trim().split('-');
        let version = unhex::<1>(parts.next()?)?;
        let trace_id = unhex::<16>(parts.next()?)?;
        let span_id = unhex::<8>(parts.next()?)?;
        let flags = unhex::<1>(parts.next()?)?;
        if version[0] == 0xff || (version[0] == 0 && parts.next().is_some()) {
            return None;
        }
        if trace_id.iter().all(|b| *b == 0) || span_id.iter().all(|b| *b == 0) {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            sampled: flags[0] & 1 == 1,
        })
    }

    /// The `traceparent` value.
    pub fn to_traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            u8::from(self.sampled)
        )
    }

    /// The trace id in hex.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The span id in hex.
    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }

    /// The context of an event's `traceparent` extension, if it has a valid
    /// one.
    pub fn of_event<T>(event: &DomainEvent<T>) -> Option<Self> {
        event.extensions.get(TRACEPARENT).and_then(|tp| Self::parse(tp))
    }

    /// The trace context of the handler running on this thread, if any:
    /// what events published now continue.
    pub fn current() -> Option<Self> {
        CURRENT.with(Cell::get)
    }
}

thread_local! {
    static CURRENT: Cell<Option<TraceContext>> = const { Cell::new(None) };
}

/// Sets the current trace context for the duration of a poll.
struct SetCurrent(Option<TraceContext>);

impl SetCurrent {
    fn enter(cx: TraceContext) -> Self {
        SetCurrent(CURRENT.with(|c| c.replace(Some(cx))))
    }
}

impl Drop for SetCurrent {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

/// Opens a `busline.handle` span per call of the wrapped handler, child of
/// the publisher's span named by the event's `traceparent` (or the root of
/// a new trace), and makes it the trace context of events the handler
/// publishes.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingLayer;

impl TracingLayer {
    /// The layer.
    pub fn new() -> Self {
        Self
    }
}

impl<H> Layer<H> for TracingLayer {
    type Service = Traced<H>;

    fn layer(&self, inner: H) -> Traced<H> {
        Traced { inner }
    }
}

/// A traced handler; made by [`TracingLayer`].
#[derive(Debug, Clone)]
pub struct Traced<H> {
    inner: H,
}

fn id_or_empty(cx: Option<TraceContext>) -> String {
    cx.map(|c| c.span_id_hex()).unwrap_or_default()
}

impl<E: Event, H: EventService<E>> EventService<E> for Traced<H> {
    type Future = TracedFuture<H::Future>;

    fn call(&self, event: DomainEvent<E>, ctx: Context) -> Self::Future {
        let parent = TraceContext::of_event(&event);
        let span = tracing::info_span!(
            "busline.handle",
            otel.kind = "consumer",
            topic = ctx.topic(),
            group = ctx.group(),
            event_type = %event.event_type,
            event_id = %event.id,
            correlation_id = %event.correlation_id,
            attempt = ctx.attempt(),
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            parent_span_id = tracing::field::Empty,
        );
        // Nobody records the span and no trace came in: there is no trace
        // to continue, and none is made up.
        let cx = if span.is_disabled() && parent.is_none() {
            None
        } else {
            Some(handle_context(&span, parent))
        };
        if let (Some(cx), false) = (cx, span.is_disabled()) {
            span.record("trace_id", cx.trace_id_hex());
            span.record("span_id", cx.span_id_hex());
            span.record("parent_span_id", id_or_empty(parent));
        }
        let call = {
            let _entered = span.enter();
            let _current = cx.map(SetCurrent::enter);
            self.inner.call(event, ctx)
        };
        TracedFuture {
            inner: call.instrument(span),
            cx,
        }
    }

    fn gate(&self) -> Option<Gate> {
        self.inner.gate()
    }
}

/// The handle span's trace context: OpenTelemetry's, where a
/// `tracing-opentelemetry` layer gives the span one; else our own child of
/// the parent.
#[cfg(feature = "opentelemetry")]
fn handle_context(span: &Span, parent: Option<TraceContext>) -> TraceContext {
    if let Some(parent) = parent {
        crate::otel::set_remote_parent(span, parent);
    }
    crate::otel::span_context(span)
        .unwrap_or_else(|| parent.map_or_else(TraceContext::new_root, |p| p.child()))
}

#[cfg(not(feature = "opentelemetry"))]
fn handle_context(_span: &Span, parent: Option<TraceContext>) -> TraceContext {
    parent.map_or_else(TraceContext::new_root, |p| p.child())
}

pin_project! {
    /// The future of a [`Traced`] call: inside the span, with the span's
    /// trace context current while it is polled.
    pub struct TracedFuture<F> {
        #[pin]
        inner: tracing::instrument::Instrumented<F>,
        cx: Option<TraceContext>,
    }
}

impl<F: Future<Output = Result<(), HandlerError>>> Future for TracedFuture<F> {
    type Output = Result<(), HandlerError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _current = this.cx.map(SetCurrent::enter);
        let mut inner = this.inner;
        let poll = inner.as_mut().poll(cx);
        if let Poll::Ready(Err(e)) = &poll {
            tracing::debug!(parent: inner.span(), error = %e, kind = ?e.kind(), "handler failed");
        }
        poll
    }
}

/// An [`EventBus`] decorator that opens a `busline.publish` span per publish
/// and writes the span's `traceparent` into the event. Wrap a bus with
/// [`TracingBus::wrap`] (or [`instrument`](crate::instrument)).
pub struct TracingBus {
    inner: Arc<dyn EventBus>,
}

impl fmt::Debug for TracingBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TracingBus")
    }
}

impl TracingBus {
    /// Decorates a backend.
    pub fn new(inner: Arc<dyn EventBus>) -> Self {
        Self { inner }
    }

    /// The same bus, with publishes traced.
    pub fn wrap(bus: &busline_core::Bus) -> busline_core::Bus {
        bus.with_transport(Arc::new(Self::new(bus.transport().clone())))
    }

    fn prepare(&self, topic: &str, event: &mut RawEvent) -> Span {
        // The parent: the running handler's trace, else a `traceparent` the
        // caller set, else none (a new trace).
        let parent = TraceContext::current().or_else(|| TraceContext::of_event(event));
        let span = tracing::info_span!(
            "busline.publish",
            otel.kind = "producer",
            topic,
            event_type = %event.event_type,
            event_id = %event.id,
            correlation_id = %event.correlation_id,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            parent_span_id = tracing::field::Empty,
        );
        let cx = publish_context(&span, parent);
        if !span.is_disabled() {
            span.record("trace_id", cx.trace_id_hex());
            span.record("span_id", cx.span_id_hex());
            span.record("parent_span_id", id_or_empty(parent));
        }
        event
            .extensions
            .insert(TRACEPARENT.to_owned(), cx.to_traceparent());
        span
    }
}

#[cfg(feature = "opentelemetry")]
fn publish_context(span: &Span, parent: Option<TraceContext>) -> TraceContext {
    if let Some(parent) = parent {
        if TraceContext::current().is_none() {
            crate::otel::set_remote_parent(span, parent);
        }
    }
    crate::otel::span_context(span)
        .unwrap_or_else(|| parent.map_or_else(TraceContext::new_root, |p| p.child()))
}

#[cfg(not(feature = "opentelemetry"))]
fn publish_context(_span: &Span, parent: Option<TraceContext>) -> TraceContext {
    parent.map_or_else(TraceContext::new_root, |p| p.child())
}

#[async_trait]
impl BusDecorator for TracingBus {
    fn inner(&self) -> &Arc<dyn EventBus> {
        &self.inner
    }

    async fn on_publish(&self, topic: &str, mut event: RawEvent) -> Result<(), PublishError> {
        let span = self.prepare(topic, &mut event);
        let result = self.inner.publish(topic, event).instrument(span.clone()).await;
        if let Err(e) = &result {
            tracing::debug!(parent: &span, error = %ErrorChain(e), "publish failed");
        }
        result
    }

    async fn on_publish_batch(&self, topic: &str, mut events: Vec<RawEvent>) -> Result<(), PublishError> {
        let spans: Vec<Span> = events.iter_mut().map(|e| self.prepare(topic, e)).collect();
        let result = self.inner.publish_batch(topic, events).await;
        if let Err(e) = &result {
            for span in &spans {
                tracing::debug!(parent: span, error = %ErrorChain(e), "publish failed");
            }
        }
        result
    }
}
