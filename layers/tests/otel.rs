//! OpenTelemetry spans join across the bus (feature `opentelemetry`).
#![cfg(feature = "opentelemetry")]

use busline_core::{Context, DomainEvent, HandlerError, Router};
use busline_layers::tracing::{TraceContext, TRACEPARENT};
use busline_layers::{instrument, RouterExt};
use busline_testkit::events::Ping;
use busline_testkit::support::WAIT;
use busline_testkit::TestHarness;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test(start_paused = true)]
async fn handler_span_is_the_child_of_the_publish_span() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let h = TestHarness::new();
    let bus = instrument(&h.bus());
    let router = Router::new(bus.clone(), "billing")
        .with_default_stack()
        .on("orders", |_ctx: Context, _e: DomainEvent<Ping>| async {
            Ok::<_, HandlerError>(())
        })
        .start()
        .await
        .unwrap();
    bus.publish("orders", Ping::new(1)).await.unwrap();
    h.wait_for_handled::<Ping>(WAIT).await;
    router.shutdown().await.unwrap();
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} in {spans:?}"))
    };
    let (publish, handle) = (find("busline.publish"), find("busline.handle"));
    assert_eq!(handle.span_context.trace_id(), publish.span_context.trace_id());
    assert_eq!(handle.parent_span_id, publish.span_context.span_id());
    assert!(
        handle.parent_span_is_remote,
        "the parent came through the envelope"
    );
    let tp = &h.published_raw()[0].1.extensions[TRACEPARENT];
    let cx = TraceContext::parse(tp).unwrap();
    assert_eq!(cx.trace_id, publish.span_context.trace_id().to_bytes());
    assert_eq!(cx.span_id, publish.span_context.span_id().to_bytes());
}
