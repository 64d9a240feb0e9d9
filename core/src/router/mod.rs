//! The typed router: handlers registered per (topic, event type), run as one
//! group, with the outcome table of DESIGN.md applied to every delivery.

mod context;
mod dispatch;
mod extract;
mod failure;
mod gate;
mod handler;
mod health;
mod interop;
mod layer;
mod route;
mod running;
mod service;
mod shared;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use context::Context;
pub use extract::{Attempt, FromContext, FromEvent, FromRef, State, Topic};
pub use failure::{FailureKind, HandlerError, IntoHandlerResult};
pub use gate::{Gate, GateState};
pub use handler::{Handler, HandlerService, HandlerWithoutStateExt};
pub use health::{RouterHealth, RouterProbe, SubscriptionHealth, SubscriptionState};
pub use interop::{FromTower, Incoming, TowerLayer, TowerService};
pub use layer::{Either, Identity, Layer, Stack};
pub use running::RunningRouter;
pub use service::EventService;
pub use shared::RouterStats;

use route::{Route, TypedRoute, Upcasters};
use thiserror::Error;

use crate::{
    Bus, ConsumeError, DeadLetterPolicy, Event, RetryPolicy, RouterObserver, StartFrom, SubscribeError,
};

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

/// A [`Router`] no handler was registered on yet: [`layer`](Router::layer)
/// may still be called.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unrouted;

/// A [`Router`] with handlers: router-wide layers can no longer be added,
/// since they would not wrap the handlers registered before them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Routed;

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Unrouted {}
}

/// Where [`Router::layer`] may be called: before the first handler. Calling
/// it after `.on(..)` is a compile error that says so.
#[diagnostic::on_unimplemented(
    message = "`Router::layer` is called after a handler was registered",
    label = "this router already has handlers",
    note = "a router-wide layer wraps every handler of the router: call `.layer(..)` before the first `.on(..)`",
    note = "to wrap one handler alone: `.on(topic, layer.layer(handler.with_state(state)))`"
)]
pub trait BeforeFirstHandler: sealed::Sealed {}

impl BeforeFirstHandler for Unrouted {}

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
/// # #[derive(Clone)] struct Stock;
/// # impl Stock { async fn reserve(&self, _: &str) -> anyhow::Result<()> { Ok(()) } }
/// async fn reserve_items(State(stock): State<Stock>, event: DomainEvent<OrderCreated>) -> anyhow::Result<()> {
///     stock.reserve(&event.data.order_id).await
/// }
/// # async fn demo(bus: Bus, stock: Stock) -> Result<(), RouterError> {
/// Router::new(bus.clone(), "inventory")
///     .with_state(stock)
///     .on("orders", reserve_items)
///     .upcast(|old: OrderCreatedV1| OrderCreated { order_id: old.id })
///     .run_until(async { let _ = tokio::signal::ctrl_c().await; })
///     .await?;
/// # Ok(()) }
/// ```
///
/// `S` is the state handlers take with [`State`] ([`with_state`](Router::with_state);
/// `()` until then). Layers ([`Layer`]) wrap handlers: [`layer`](Router::layer)
/// sets a stack for every handler (it comes before the first one), and a single handler
/// can be wrapped by hand with `layer.layer(handler.with_state(state))`.
/// `L` is the router-wide stack ([`Identity`] until `layer` is called).
/// `P` is [`Unrouted`] until the first handler and [`Routed`] after it, so
/// that a `layer` that could not wrap every handler does not compile.
pub struct Router<S = (), L = Identity, P = Unrouted> {
    bus: Bus,
    group: String,
    state: S,
    routes: BTreeMap<String, Vec<(&'static str, RouteFactory)>>,
    upcasters: Upcasters,
    problems: Vec<RouterError>,
    settings: RouterSettings,
    layer: L,
    observers: Vec<Arc<dyn RouterObserver>>,
    phase: std::marker::PhantomData<fn() -> P>,
}

impl<S, L, P> std::fmt::Debug for Router<S, L, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let routes: Vec<(&str, Vec<&str>)> = self
            .routes
            .iter()
            .map(|(topic, entries)| (topic.as_str(), entries.iter().map(|(t, _)| *t).collect()))
            .collect();
        f.debug_struct("Router")
            .field("group", &self.group)
            .field("routes", &routes)
            .field("settings", &self.settings)
            .field("problems", &self.problems)
            .finish_non_exhaustive()
    }
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
        let observers = bus.observers().to_vec();
        Self {
            bus,
            group: group.into(),
            state: (),
            routes: BTreeMap::new(),
            upcasters: Upcasters::default(),
            problems: Vec::new(),
            settings,
            layer: Identity,
            observers,
            phase: std::marker::PhantomData,
        }
    }
}

impl<L, P> Router<(), L, P> {
    /// Gives the handlers registered after this call `state`: an argument
    /// [`State<T>`](State) takes it (cloned), or a part of it (`T: FromRef<S>`).
    /// A router has one state; handlers that need another take it bound
    /// (`handler.with_state(other)`).
    ///
    /// ```
    /// # use busline_core::*;
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Ping;
    /// # impl Event for Ping { const TYPE: &'static str = "ping"; }
    /// #[derive(Clone)]
    /// struct Db;
    /// async fn store(State(_db): State<Db>, _ping: DomainEvent<Ping>) {}
    /// # fn demo(bus: Bus) {
    /// let router = Router::new(bus, "g").with_state(Db).on("pings", store);
    /// # }
    /// ```
    ///
    /// A handler that takes state it was not given does not compile:
    ///
    /// ```compile_fail
    /// # use busline_core::*;
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Ping;
    /// # impl Event for Ping { const TYPE: &'static str = "ping"; }
    /// # #[derive(Clone)] struct Db;
    /// # async fn store(State(_db): State<Db>, _ping: DomainEvent<Ping>) {}
    /// # fn demo(bus: Bus) {
    /// let router = Router::new(bus, "g").on("pings", store); // no `with_state(db)`
    /// # }
    /// ```
    pub fn with_state<S: Clone + Send + Sync + 'static>(self, state: S) -> Router<S, L, P> {
        self.rebuild(|_, layer| (state, layer))
    }
}

impl<S, L, P> Router<S, L, P> {
    /// The same router with its state and stack replaced (and its phase
    /// set by the caller's type).
    fn rebuild<S2, L2, P2>(self, parts: impl FnOnce(S, L) -> (S2, L2)) -> Router<S2, L2, P2> {
        let (state, layer) = parts(self.state, self.layer);
        Router {
            bus: self.bus,
            group: self.group,
            state,
            routes: self.routes,
            upcasters: self.upcasters,
            problems: self.problems,
            settings: self.settings,
            layer,
            observers: self.observers,
            phase: std::marker::PhantomData,
        }
    }
}

impl<S: Clone + Send + Sync + 'static, L, P> Router<S, L, P> {
    /// Wraps every handler in `layer`, inside the layers set before (the
    /// first layer set is the outermost, as with tower's `ServiceBuilder`).
    /// It comes before the first handler: after `.on(..)` it does not
    /// compile ([`BeforeFirstHandler`]), since it could not wrap the
    /// handlers registered before it.
    ///
    /// ```
    /// # use busline_core::*;
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Ping;
    /// # impl Event for Ping { const TYPE: &'static str = "ping"; }
    /// # async fn handle(_: Context, _: DomainEvent<Ping>) -> Result<(), HandlerError> { Ok(()) }
    /// # fn demo(bus: Bus) {
    /// let router = Router::new(bus, "g")
    ///     .layer(Identity) // e.g. busline_layers::default_stack()
    ///     .on("pings", handle);
    /// # }
    /// ```
    pub fn layer<Inner>(self, layer: Inner) -> Router<S, Stack<Inner, L>, P>
    where
        P: BeforeFirstHandler,
    {
        self.rebuild(|state, inner| (state, Stack::new(layer, inner)))
    }

    /// The same router, past the first handler.
    fn routed(self) -> Router<S, L, Routed> {
        self.rebuild(|state, layer| (state, layer))
    }

    /// Tells `observer` about every settlement decision (handled, skipped,
    /// retried, dead-lettered, abandoned), e.g. to count them as metrics.
    pub fn observe(mut self, observer: impl RouterObserver) -> Self {
        self.observers.push(Arc::new(observer));
        self
    }

    /// Handles events of type `E` (by `E::TYPE` and `E::VERSION`) on `topic`
    /// with `handler` (a [`Handler`]: an async fn or closure, or an
    /// [`EventService`]). `E` is the type of its `DomainEvent<E>` argument;
    /// a handler that takes none names it: `.on(topic, handler)`.
    ///
    /// A function of the wrong shape is refused at compile time with an
    /// error that says what a handler is (the messages are pinned by the
    /// `ui` tests of busline-core):
    ///
    /// ```compile_fail
    /// # use busline_core::*;
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Ping;
    /// # impl Event for Ping { const TYPE: &'static str = "ping"; }
    /// async fn takes_the_payload(ping: Ping) -> Result<(), HandlerError> { Ok(()) }
    /// # fn demo(bus: Bus) {
    /// Router::new(bus, "g").on("pings", takes_the_payload); // needs DomainEvent<Ping>
    /// # }
    /// ```
    pub fn on<E: Event, T: 'static, H: Handler<T, S, E>>(
        self,
        topic: impl Into<String>,
        handler: H,
    ) -> Router<S, L, Routed>
    where
        L: Layer<HandlerService<H, T, S>>,
        L::Service: EventService<E>,
    {
        self.on_with(topic, handler, HandlerOptions::default())
    }

    /// Like [`on`](Router::on), with settings of this handler's own.
    ///
    /// ```
    /// # use busline_core::*;
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Ping;
    /// # impl Event for Ping { const TYPE: &'static str = "ping"; }
    /// # async fn handle(_: Context, _: DomainEvent<Ping>) -> Result<(), HandlerError> { Ok(()) }
    /// # fn demo(bus: Bus) {
    /// let patient = RetryPolicy::default().with_max_attempts(20);
    /// let router = Router::new(bus, "g")
    ///     .on_with("pings", handle, HandlerOptions::new().with_retry(patient));
    /// # }
    /// ```
    pub fn on_with<E: Event, T: 'static, H: Handler<T, S, E>>(
        mut self,
        topic: impl Into<String>,
        handler: H,
        options: HandlerOptions,
    ) -> Router<S, L, Routed>
    where
        L: Layer<HandlerService<H, T, S>>,
        L::Service: EventService<E>,
    {
        let topic = topic.into();
        let entries = self.routes.entry(topic.clone()).or_default();
        if entries.iter().any(|(t, _)| *t == E::TYPE) {
            self.problems.push(RouterError::DuplicateHandler {
                topic,
                event_type: E::TYPE.into(),
                group: self.group.clone(),
            });
            return self.routed();
        }
        let handler = Arc::new(self.layer.layer(handler.with_state(self.state.clone())));
        let retry = options.retry.map(Arc::new);
        entries.push((
            E::TYPE,
            Box::new(move |upcasters: &Upcasters| {
                Arc::new(TypedRoute::<E, L::Service> {
                    handler,
                    upcasters: upcasters.for_type::<E>(),
                    retry,
                }) as Arc<dyn Route>
            }),
        ));
        self.routed()
    }

    /// Converts events of an older version `Old` into `New` before `New`'s
    /// handler sees them. Both must share the event type, and `Old` must be
    /// older. Register one upcaster per old version, straight to the handled
    /// version. The types come from the closure:
    /// `.upcast(|old: OrderCreatedV1| OrderCreated { .. })`.
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
            let table: shared::RouteTable = entries
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
