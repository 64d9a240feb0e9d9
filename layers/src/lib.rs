//! busline-layers: the resilience and observability patterns that go around
//! every consumer and publisher, as small composable pieces in the style of
//! tower.
//!
//! Handler layers (each a [`Layer`](busline_core::Layer), applied per
//! handler or router-wide with `Router::layer`):
//!
//! - [`BulkheadLayer`]: at most N concurrent calls, a bounded wait queue.
//! - [`CircuitBreakerLayer`]: stops consumption while a dependency fails.
//! - [`RateLimitLayer`]: at most so many calls a second.
//! - [`DedupLayer`]: the idempotent consumer, over a [`DedupStore`]
//!   ([`MemoryDedupStore`]; `PostgresDedupStore` with feature `postgres`).
//! - [`TracingLayer`]: a span per handle, continuing the publisher's trace.
//! - [`MetricsLayer`] (+ [`MetricsObserver`] for the router's decisions).
//!
//! Publisher side (bus decorators): [`GuardedBus`] (timeout, retry, circuit
//! breaker), [`TracingBus`], [`MetricsBus`]; [`instrument`] applies the last
//! two. `signing::SignedBus` (feature `signing`) signs what a service
//! publishes and refuses what no trusted key signed.
//!
//! Probes: `probes::ProbeEndpoint` (feature `probes`) answers `/health`,
//! `/ready` and Prometheus `/metrics` over HTTP for running routers.
//!
//! Per-handler retry policies are core's `Router::on_with` with
//! `HandlerOptions`.
//!
//! One line for a router:
//!
//! ```
//! use busline_core::{Context, DomainEvent, Event, HandlerError, Router};
//! use busline_layers::{default_stack, RouterExt};
//! # #[derive(serde::Serialize, serde::Deserialize)] struct Ping;
//! # impl Event for Ping { const TYPE: &'static str = "ping"; }
//! # async fn handle(_: Context, _: DomainEvent<Ping>) -> Result<(), HandlerError> { Ok(()) }
//! # fn demo(bus: busline_core::Bus) {
//! let router = Router::new(bus, "billing")
//!     .with_stack(default_stack().with_timeout(std::time::Duration::from_secs(5)))
//!     .on("pings", handle);
//! # }
//! ```

#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod bulkhead;
pub mod circuit_breaker;
pub mod dedup;
pub mod metrics;
#[cfg(feature = "opentelemetry")]
#[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
pub mod otel;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
#[cfg(feature = "probes")]
#[cfg_attr(docsrs, doc(cfg(feature = "probes")))]
pub mod probes;
pub mod publisher;
pub mod rate_limit;
#[cfg(feature = "signing")]
#[cfg_attr(docsrs, doc(cfg(feature = "signing")))]
pub mod signing;
mod stack;
pub mod tracing;

pub use bulkhead::{Bulkhead, BulkheadFull, BulkheadLayer};
pub use circuit_breaker::{BreakerHandle, BreakerState, CircuitBreaker, CircuitBreakerLayer};
pub use dedup::{Dedup, DedupLayer, DedupStore, MemoryDedupStore, SKIP_DUPLICATE};
pub use metrics::{Metered, MetricsBus, MetricsLayer, MetricsObserver};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::{PostgresDedupStore, PostgresOptions};
pub use publisher::{is_circuit_open, CircuitOpen, GuardedBus, PublishPolicy};
pub use rate_limit::{RateLimit, RateLimitLayer};
pub use stack::{default_stack, instrument, DefaultStack, RouterExt};
pub use tracing::{TraceContext, Traced, TracingBus, TracingLayer};
