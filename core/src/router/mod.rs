//! The typed router: handlers registered per (topic, event type), run as one
//! group, with the outcome table of DESIGN.md applied to every delivery.

mod context;
mod dispatch;
mod gate;
mod handler;
mod health;
mod layer;
mod observe;
mod route;
mod running;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use context::Context;
pub use gate::{Gate, GateState};
pub use handler::{FailureKind, Handler, HandlerError};
pub use health::{RouterHealth, SubscriptionHealth, SubscriptionState};
pub use layer::{Either, Identity, Layer, Stack};
pub use observe::{Outcome, RouterObserver, Settled, SKIP_UNKNOWN_EVENT_TYPE};
pub use running::{RouterStats, RunningRouter};

use route::{Route, TypedRoute, Upcasters};
use thiserror::Error;

use crate::{Bus, ConsumeError, DeadLetterPolicy, Event, RetryPolicy, StartFrom, SubscribeError};

/// Why a router could not start or stopped with an error.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RouterError {
    /// No handler was registered.
    #[error("router for group `{group}` has no handlers")]
    NoRoutes {
        /// The group.
        group: String,
    },
    /// Two handlers for one event type on one topic.
    #[error("two handlers for `{event_type}` on topic `{topic}` in group `{group}`")]
    DuplicateHandler {
        /// The topic.
        topic: String,
        /// The event type.
        event_type: String,
        /// The group.
        group: String,
    },
    /// An upcaster that cannot be used.
    #[error("invalid upcaster: {0}")]
    InvalidUpcaster(String),
    /// [`Router::layer`] was called after a handler was registered; the
    /// router-wide layers apply to every handler, so they come first.
    #[error("router for group `{group}`: `layer` must be called before any handler is registered")]
    LayerAfterHandlers {
        /// The group.
        group: String,
    },
    /// Subscribing failed.
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
    /// A subscription failed while running.
    #[error(transparent)]
    Consume(#[from] ConsumeError),
    /// A subscription's stream ended without shutdown asking for it: the
    /// backend closed it, so the group no longer consumes that topic here.
    #[error("the subscription to `{topic}` ended on its own")]
    SubscriptionEnded {
        /// The topic.
        topic: String,
    },
    /// A consumer task panicked (a bug in a backend's stream or in the
    /// router); its deliveries in flight go back to the broker undecided.
    #[error("the consumer of `{topic}` panicked: {message}")]
    ConsumerPanicked {
        /// The topic.
        topic: String,
        /// The panic's message.
        message: String,
    },
}

type RouteFactory = Box<dyn FnOnce(&Upcasters) -> Arc<dyn Route> + Send>;

/// Registers typed handlers for one group and runs them.
///
/// ```no_run
/// # use busline_core::*;
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// # struct OrderCreated { order_id: String }
/// # impl Event for OrderCreated { const TYPE: &'static str = "order.created"; const VERSION: u32 = 2; }
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// # struct OrderCreatedV1 { id: String }
/// # impl Event for OrderCreatedV1 { const TYPE: &'static str = "order.created"; const VERSION: u32 = 1; }
/// async fn reserve_items(event: DomainEvent<OrderCreated>, ctx: Context) -> Result<(), HandlerError> {
///     Ok(())
/// }
/// # async fn demo(bus: Bus) -> Result<(), RouterError> {
/// Router::new(bus.clone(), "inventory")
///     .on::<OrderCreated, _>("orders", reserve_items)
///     .upcast::<OrderCreatedV1, OrderCreated>(|old| OrderCreated { order_id: old.id })
///     .run_until(async { let _ = tokio::signal::ctrl_c().await; })
///     .await?;
/// # Ok(()) }
/// ```
///
/// Layers ([`Layer`]) wrap handlers: [`layer`](Router::layer) sets a stack
/// for every handler registered after it, and a single handler can be
/// wrapped by hand with `layer.layer(handler)`. The type parameter is the
/// router-wide stack ([`Identity`] until `layer` is called).
pub struct Router<L = Identity> {
    bus: Bus,
    group: String,
    routes: BTreeMap<String, Vec<(&'static str, RouteFactory)>>,
    upcasters: Upcasters,
    problems: Vec<RouterError>,
    settings: RouterSettings,
    layer: L,
    observers: Vec<Arc<dyn RouterObserver>>,
}

/// Settings of one handler, overriding the router's for it alone
/// ([`Router::on_with`]).
///
/// ```
/// use busline_core::{HandlerOptions, RetryPolicy};
/// let options = HandlerOptions::new().with_retry(RetryPolicy::default().with_max_attempts(10));
/// assert_eq!(options.retry.unwrap().max_attempts, 10);
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct HandlerOptions {
    /// The retry policy of this handler's failures, instead of the router's.
    pub retry: Option<RetryPolicy>,
}

impl HandlerOptions {
    /// No overrides.
    pub fn new() -> Self {
        Self::default()
    }

    /// Retries this handler's failures by `retry`.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = Some(retry);
        self
    }
}

/// The knobs of a router; defaults come from the bus's configuration.
#[derive(Debug, Clone)]
pub(crate) struct RouterSettings {
    pub(crate) retry: RetryPolicy,
    pub(crate) dead_letter: DeadLetterPolicy,
    pub(crate) handler_timeout: Option<Duration>,
    pub(crate) max_in_flight: usize,
    pub(crate) shutdown_deadline: Duration,
    pub(crate) start_from: StartFrom,
}

impl Router {
    /// A router for `group` on `bus`, with the bus's default policies.
    pub fn new(bus: Bus, group: impl Into<String>) -> Self {
        let s = bus.settings();
        let settings = RouterSettings {
            retry: s.retry.clone(),
            dead_letter: s.dead_letter.clone(),
            handler_timeout: s.consumer.handler_timeout,
            max_in_flight: s.consumer.max_in_flight.max(1),
            shutdown_deadline: s.consumer.shutdown_deadline,
            start_from: StartFrom::New,
        };
        Self {
            bus,
            group: group.into(),
            routes: BTreeMap::new(),
            upcasters: Upcasters::default(),
            problems: Vec::new(),
            settings,
            layer: Identity,
            observers: Vec::new(),
        }
    }
}

impl<L> Router<L> {
    /// Wraps every handler registered after this call in `layer`, inside the
    /// layers set before (the first layer set is the outermost, as with
    /// tower's `ServiceBuilder`). Call it before registering handlers:
    /// called after, [`start`](Router::start) fails with
    /// [`RouterError::LayerAfterHandlers`].
    ///
    /// ```
    /// # use busline_core::*;
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Ping;
    /// # impl Event for Ping { const TYPE: &'static str = "ping"; }
    /// # async fn handle(_: DomainEvent<Ping>, _: Context) -> Result<(), HandlerError> { Ok(()) }
    /// # fn demo(bus: Bus) {
    /// let router = Router::new(bus, "g")
    ///     .layer(Identity) // e.g. busline_layers::default_stack()
    ///     .on::<Ping, _>("pings", handle);
    /// # }
    /// ```
    pub fn layer<Inner>(mut self, layer: Inner) -> Router<Stack<Inner, L>> {
        if self.routes.values().any(|entries| !entries.is_empty()) {
            self.problems.push(RouterError::LayerAfterHandlers {
                group: self.group.clone(),
            });
        }
        Router {
            bus: self.bus,
            group: self.group,
            routes: self.routes,
            upcasters: self.upcasters,
            problems: self.problems,
            settings: self.settings,
            layer: Stack::new(layer, self.layer),
            observers: self.observers,
        }
    }

    /// Tells `observer` about every settlement decision (handled, skipped,
    /// retried, dead-lettered, abandoned), e.g. to count them as metrics.
    pub fn observe(mut self, observer: impl RouterObserver) -> Self {
        self.observers.push(Arc::new(observer));
        self
    }

    /// Handles events of type `E` (by `E::TYPE` and `E::VERSION`) on `topic`.
    ///
    /// A function of the wrong shape is refused at compile time with an
    /// error that says what a handler is:
    ///
    /// ```compile_fail
    /// # use busline_core::*;
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Ping;
    /// # impl Event for Ping { const TYPE: &'static str = "ping"; }
    /// async fn takes_the_payload(ping: Ping) -> Result<(), HandlerError> { Ok(()) }
    /// # fn demo(bus: Bus) {
    /// Router::new(bus, "g").on::<Ping, _>("pings", takes_the_payload); // needs DomainEvent<Ping>, Context
    /// # }
    /// ```
    pub fn on<E: Event, H: Handler<E>>(self, topic: impl Into<String>, handler: H) -> Self
    where
        L: Layer<H>,
        L::Handler: Handler<E>,
    {
        self.on_with(topic, handler, HandlerOptions::default())
    }

    /// Like [`on`](Router::on), with settings of this handler's own.
    ///
    /// ```
    /// # use busline_core::*;
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Ping;
    /// # impl Event for Ping { const TYPE: &'static str = "ping"; }
    /// # async fn handle(_: DomainEvent<Ping>, _: Context) -> Result<(), HandlerError> { Ok(()) }
    /// # fn demo(bus: Bus) {
    /// let patient = RetryPolicy::default().with_max_attempts(20);
    /// let router = Router::new(bus, "g")
    ///     .on_with::<Ping, _>("pings", handle, HandlerOptions::new().with_retry(patient));
    /// # }
    /// ```
    pub fn on_with<E: Event, H: Handler<E>>(
        mut self,
        topic: impl Into<String>,
        handler: H,
        options: HandlerOptions,
    ) -> Self
    where
        L: Layer<H>,
        L::Handler: Handler<E>,
    {
        let topic = topic.into();
        let entries = self.routes.entry(topic.clone()).or_default();
        if entries.iter().any(|(t, _)| *t == E::TYPE) {
            self.problems.push(RouterError::DuplicateHandler {
                topic,
                event_type: E::TYPE.into(),
                group: self.group.clone(),
            });
            return self;
        }
        let handler = Arc::new(self.layer.layer(handler));
        let retry = options.retry.map(Arc::new);
        entries.push((
            E::TYPE,
            Box::new(move |upcasters: &Upcasters| {
                Arc::new(TypedRoute::<E, L::Handler> {
                    handler,
                    upcasters: upcasters.for_type::<E>(),
                    retry,
                }) as Arc<dyn Route>
            }),
        ));
        self
    }

    /// Converts events of an older version `Old` into `New` before `New`'s
    /// handler sees them. Both must share the event type, and `Old` must be
    /// older. Register one upcaster per old version, straight to the handled
    /// version.
    pub fn upcast<Old: Event, New: Event>(
        mut self,
        convert: impl Fn(Old) -> New + Send + Sync + 'static,
    ) -> Self {
        if Old::TYPE != New::TYPE {
            self.problems.push(RouterError::InvalidUpcaster(format!(
                "from `{}` to `{}`: event types differ",
                Old::TYPE,
                New::TYPE
            )));
        } else if Old::VERSION >= New::VERSION {
            self.problems.push(RouterError::InvalidUpcaster(format!(
                "`{}` version {} is not older than version {}",
                Old::TYPE,
                Old::VERSION,
                New::VERSION
            )));
        } else {
            self.upcasters.insert::<Old, New>(convert);
        }
        self
    }

    /// Overrides the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.settings.retry = retry;
        self
    }

    /// Overrides the dead-letter policy.
    pub fn with_dead_letter(mut self, policy: DeadLetterPolicy) -> Self {
        self.settings.dead_letter = policy;
        self
    }

    /// Sets the handler timeout (`None`: handlers may run forever).
    pub fn with_handler_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.settings.handler_timeout = timeout;
        self
    }

    /// Sets how many deliveries each subscription handles at once.
    pub fn with_max_in_flight(mut self, n: usize) -> Self {
        self.settings.max_in_flight = n.max(1);
        self
    }

    /// Sets how long in-flight handlers may finish after shutdown begins.
    pub fn with_shutdown_deadline(mut self, deadline: Duration) -> Self {
        self.settings.shutdown_deadline = deadline;
        self
    }

    /// Where a group that does not exist yet starts reading.
    pub fn with_start_from(mut self, start: StartFrom) -> Self {
        self.settings.start_from = start;
        self
    }

    /// Subscribes every topic and starts handling. Returns once all
    /// subscriptions are in place, so events published after this returns
    /// reach the group.
    pub async fn start(mut self) -> Result<RunningRouter, RouterError> {
        if let Some(problem) = self.problems.drain(..).next() {
            return Err(problem);
        }
        if self.routes.is_empty() {
            return Err(RouterError::NoRoutes { group: self.group });
        }
        let mut tables = Vec::new();
        for (topic, entries) in std::mem::take(&mut self.routes) {
            let table: HashMap<&'static str, Arc<dyn Route>> = entries
                .into_iter()
                .map(|(t, make)| (t, make(&self.upcasters)))
                .collect();
            tables.push((topic, table));
        }
        running::start(self.bus, self.group, tables, self.settings, self.observers).await
    }

    /// Runs until `shutdown` resolves, then shuts down gracefully: stops
    /// taking deliveries, lets in-flight handlers finish within the deadline,
    /// settles every delivery. Returns early with an error if a subscription
    /// fails.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<RouterStats, RouterError> {
        let running = self.start().await?;
        running.run_until(shutdown).await
    }
}
