//! Metrics and tracing across the memory bus.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use busline_core::{Context, DomainEvent, HandlerError, Router};
use busline_layers::metrics::names;
use busline_layers::tracing::{TraceContext, TRACEPARENT};
use busline_layers::{default_stack, instrument, MemoryDedupStore, RouterExt};
use busline_testkit::events::{Ping, Pong};
use busline_testkit::support::{eventually, Collector, WAIT};
use busline_testkit::TestHarness;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// Every metric by name and sorted labels, summed over snapshots (the
/// debugging recorder's snapshot drains counters, gauges and histograms).
#[derive(Default)]
struct Metrics(HashMap<(String, Vec<(String, String)>), DebugValue>);

impl Metrics {
    fn take(&mut self, snapshotter: &Snapshotter) {
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let (_, key) = key.into_parts();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            let entry = (key.name().to_owned(), labels);
            match (self.0.get_mut(&entry), value) {
                (Some(DebugValue::Histogram(old)), DebugValue::Histogram(new)) => old.extend(new),
                (Some(DebugValue::Counter(old)), DebugValue::Counter(new)) => *old += new,
                (Some(DebugValue::Gauge(old)), DebugValue::Gauge(new)) => *old += new,
                (_, value) => {
                    self.0.insert(entry, value);
                }
            }
        }
    }

    /// The one metric `name` whose labels include `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        let found: Vec<_> = self
            .0
            .iter()
            .filter(|((n, l), _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?} is ambiguous: {found:?}");
        found.first().map(|(_, v)| *v)
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.get(name, labels) {
            Some(DebugValue::Counter(n)) => *n,
            None => 0,
            other => panic!("{name} is not a counter: {other:?}"),
        }
    }

    fn histogram_len(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        match self.get(name, labels) {
            Some(DebugValue::Histogram(v)) => v.len(),
            None => 0,
            other => panic!("{name} is not a histogram: {other:?}"),
        }
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.get(name, labels) {
            Some(DebugValue::Gauge(v)) => v.into_inner(),
            None => 0.0,
            other => panic!("{name} is not a gauge: {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn each_metric_moves_as_documented() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let m = std::cell::RefCell::new(Metrics::default());

    let h = TestHarness::new();
    let bus = instrument(&h.bus());
    let gate = Arc::new(tokio::sync::Notify::new());
    let g = gate.clone();
    let router = Router::new(bus.clone(), "billing")
        .with_stack(default_stack().with_dedup(Arc::new(MemoryDedupStore::new(Duration::from_secs(60), 100))))
        .on("orders", move |ctx: Context, e: DomainEvent<Ping>| {
            let g = g.clone();
            async move {
                match e.data.seq {
                    2 => Err(HandlerError::permanent("bad order")),
                    3 if ctx.attempt() == 1 => Err(HandlerError::retryable("try again")),
                    4 => {
                        g.notified().await;
                        Ok(())
                    }
                    _ => Ok(()),
                }
            }
        })
        .start()
        .await
        .unwrap();

    let one = DomainEvent::new(Ping::new(1));
    bus.publish_event("orders", one.clone()).await.unwrap();
    bus.publish_event("orders", one).await.unwrap(); // the same id again
    bus.publish("orders", Ping::new(2)).await.unwrap();
    bus.publish("orders", Ping::new(3)).await.unwrap();
    bus.publish("orders", Pong { seq: 9 }).await.unwrap(); // no handler
    bus.publish("orders", Ping::new(4)).await.unwrap();

    eventually(WAIT, "seq 4 running", || {
        let mut m = m.borrow_mut();
        m.take(&snapshotter);
        m.gauge(names::IN_FLIGHT, &[("event_type", "test.ping")]) == 1.0
    })
    .await;
    gate.notify_one();
    eventually(WAIT, "all settled", || {
        let mut m = m.borrow_mut();
        m.take(&snapshotter);
        m.counter(names::HANDLED, &[]) == 3
    })
    .await;
    let stats = router.shutdown().await.unwrap();
    let mut m = m.into_inner();
    m.take(&snapshotter);

    let at = [("topic", "orders"), ("group", "billing")];
    assert_eq!(m.counter(names::PUBLISHED, &[("topic", "orders")]), 6);
    assert_eq!(m.counter(names::HANDLED, &at), 3, "1, 3 (second attempt), 4");
    assert_eq!(m.counter(names::RETRIED, &at), 1, "3's first attempt");
    assert_eq!(
        m.counter(names::DEAD_LETTERED, &[("reason", "permanent_error")]),
        1
    );
    assert_eq!(m.counter(names::SKIPPED, &[("reason", "duplicate")]), 1);
    assert_eq!(m.counter(names::SKIPPED, &[("reason", "unknown_event_type")]), 1);
    let ping = [
        ("topic", "orders"),
        ("group", "billing"),
        ("event_type", "test.ping"),
    ];
    let with = |outcome| {
        let mut l = ping.to_vec();
        l.push(("outcome", outcome));
        l
    };
    assert_eq!(m.histogram_len(names::HANDLER_DURATION, &with("ok")), 3);
    assert_eq!(m.histogram_len(names::HANDLER_DURATION, &with("error")), 2);
    assert_eq!(m.histogram_len(names::HANDLER_DURATION, &with("skipped")), 1);
    assert_eq!(
        m.histogram_len(names::LAG, &ping),
        6,
        "every call of the handler's stack"
    );
    assert_eq!(m.gauge(names::IN_FLIGHT, &ping), 0.0);
    assert_eq!(
        (stats.handled, stats.skipped, stats.retried, stats.dead_lettered),
        (3, 2, 1, 1)
    );

    bus.shutdown().await;
    assert!(bus.publish("orders", Ping::new(5)).await.is_err());
    m.take(&snapshotter);
    assert_eq!(
        m.counter(
            names::PUBLISH_FAILURES,
            &[("topic", "orders"), ("kind", "closed")]
        ),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_duplicate_event_id_is_handled_once() {
    let h = TestHarness::new();
    let seen = Collector::new();
    let s = seen.clone();
    let router = Router::new(h.bus(), "g")
        .with_stack(default_stack().with_dedup(Arc::new(MemoryDedupStore::new(Duration::from_secs(60), 100))))
        .on("t", move |_c: Context, e: DomainEvent<Ping>| {
            s.push(e.id.clone());
            async { Ok::<_, HandlerError>(()) }
        })
        .start()
        .await
        .unwrap();
    let event = DomainEvent::new(Ping::new(1));
    for _ in 0..3 {
        h.bus().publish_event("t", event.clone()).await.unwrap();
    }
    h.bus().publish("t", Ping::new(2)).await.unwrap();
    eventually(WAIT, "4 settled", || {
        let s = router.stats();
        s.handled + s.skipped == 4
    })
    .await;
    assert_eq!(seen.len(), 2, "the repeats were not handled");
    let stats = router.shutdown().await.unwrap();
    assert_eq!((stats.handled, stats.skipped), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn a_failed_handler_leaves_no_mark() {
    let h = TestHarness::new();
    let calls = Collector::new();
    let c = calls.clone();
    let router = Router::new(h.bus(), "g")
        .with_stack(default_stack().with_dedup(Arc::new(MemoryDedupStore::new(Duration::from_secs(60), 100))))
        .on("t", move |ctx: Context, _e: DomainEvent<Ping>| {
            c.push(ctx.attempt());
            async move {
                if ctx.attempt() == 1 {
                    Err(HandlerError::retryable("once"))
                } else {
                    Ok(())
                }
            }
        })
        .start()
        .await
        .unwrap();
    h.bus().publish("t", Ping::new(1)).await.unwrap();
    h.wait_for_handled::<Ping>(WAIT).await;
    assert_eq!(calls.snapshot(), vec![1, 2], "the retry was handled, not skipped");
    router.shutdown().await.unwrap();
}

/// A span as the test subscriber saw it.
#[derive(Debug, Clone, Default)]
struct SeenSpan {
    name: String,
    fields: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct SpanRecorder(Arc<Mutex<Vec<(u64, SeenSpan)>>>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for SpanRecorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _ctx: LayerContext<'_, S>) {
        let mut span = SeenSpan {
            name: attrs.metadata().name().to_owned(),
            ..Default::default()
        };
        attrs.record(&mut Fields(&mut span.fields));
        self.0.lock().unwrap().push((id.into_u64(), span));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: LayerContext<'_, S>) {
        let mut spans = self.0.lock().unwrap();
        if let Some((_, span)) = spans.iter_mut().rev().find(|(i, _)| *i == id.into_u64()) {
            values.record(&mut Fields(&mut span.fields));
        }
    }
}

impl SpanRecorder {
    fn named(&self, name: &str) -> Vec<SeenSpan> {
        let spans = self.0.lock().unwrap();
        spans
            .iter()
            .filter(|(_, s)| s.name == name)
            .map(|(_, s)| s.clone())
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn traceparent_links_publisher_and_handler_spans_across_the_bus() {
    let recorder = SpanRecorder::default();
    let subscriber = tracing_subscriber::registry().with(recorder.clone());
    let _guard = tracing::subscriber::set_default(subscriber);

    let h = TestHarness::new();
    let bus = instrument(&h.bus());
    let router = Router::new(bus.clone(), "billing")
        .with_default_stack()
        .on("orders", |ctx: Context, e: DomainEvent<Ping>| async move {
            ctx.publish("receipts", Pong { seq: e.data.seq }).await?;
            Ok::<_, HandlerError>(())
        })
        .on("receipts", |_ctx: Context, _e: DomainEvent<Pong>| async {
            Ok::<_, HandlerError>(())
        })
        .start()
        .await
        .unwrap();
    bus.publish("orders", Ping::new(7)).await.unwrap();
    h.wait_for_handled::<Pong>(WAIT).await;
    router.shutdown().await.unwrap();

    let publishes = recorder.named("busline.publish");
    let handles = recorder.named("busline.handle");
    assert_eq!(
        (publishes.len(), handles.len()),
        (2, 2),
        "{publishes:?} {handles:?}"
    );
    let by_topic = |spans: &[SeenSpan], topic: &str| {
        spans
            .iter()
            .find(|s| s.fields.get("topic").map(String::as_str) == Some(topic))
            .unwrap_or_else(|| panic!("a span on {topic}"))
            .fields
            .clone()
    };
    let (p1, h1) = (by_topic(&publishes, "orders"), by_topic(&handles, "orders"));
    let (p2, h2) = (by_topic(&publishes, "receipts"), by_topic(&handles, "receipts"));
    // One trace across both hops.
    for span in [&h1, &p2, &h2] {
        assert_eq!(span["trace_id"], p1["trace_id"], "{span:?}");
    }
    assert_eq!(p1["parent_span_id"], "", "the first publish starts the trace");
    assert_eq!(
        h1["parent_span_id"], p1["span_id"],
        "handler continues the publisher"
    );
    assert_eq!(
        p2["parent_span_id"], h1["span_id"],
        "a follow-up continues the handler"
    );
    assert_eq!(h2["parent_span_id"], p2["span_id"]);
    assert_eq!(h1["group"], "billing");
    assert_eq!(h1["attempt"], "1");
    assert_eq!(h1["event_type"], "test.ping");
    assert!(!h1["correlation_id"].is_empty() && h1["correlation_id"] == h2["correlation_id"]);
    // The envelope carries the publisher's span.
    let published = h.published_raw();
    let tp = published[0].1.extensions[TRACEPARENT].clone();
    let cx = TraceContext::parse(&tp).unwrap();
    assert_eq!(cx.span_id_hex(), p1["span_id"]);
}
