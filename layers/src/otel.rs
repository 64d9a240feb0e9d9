//! OpenTelemetry integration (feature `opentelemetry`): trace contexts
//! between busline's envelope and `tracing-opentelemetry` spans.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::tracing::TraceContext;

/// The OpenTelemetry context of a remote parent span.
pub fn remote_context(parent: TraceContext) -> opentelemetry::Context {
    let flags = if parent.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let span_context = SpanContext::new(
        TraceId::from_bytes(parent.trace_id),
        SpanId::from_bytes(parent.span_id),
        flags,
        true,
        TraceState::default(),
    );
    opentelemetry::Context::new().with_remote_span_context(span_context)
}

/// The OpenTelemetry context of an event's `traceparent`, if it has one:
/// the parent to give a span that handles it.
pub fn event_context<T>(event: &busline_core::DomainEvent<T>) -> Option<opentelemetry::Context> {
    TraceContext::of_event(event).map(remote_context)
}

/// Makes `parent` the OpenTelemetry parent of `span` (no-op without a
/// `tracing-opentelemetry` layer).
pub(crate) fn set_remote_parent(span: &Span, parent: TraceContext) {
    let _ = span.set_parent(remote_context(parent));
}

/// The OpenTelemetry span context of `span`, where it has a valid one.
pub(crate) fn span_context(span: &Span) -> Option<TraceContext> {
    let cx = span.context();
    let otel = cx.span();
    let sc = otel.span_context();
    sc.is_valid().then(|| TraceContext {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        sampled: sc.is_sampled(),
    })
}
