//! busline-core: the envelope, the [`EventBus`] contract that backends
//! implement, deliveries and their settlement, the typed [`Router`], retry and
//! dead-letter policy, and configuration. It knows no broker.
//!
//! Applications usually depend on the `busline` facade, which connects a
//! backend from a URL; this crate is what backends and the testkit build on.
//!
//! ```
//! use busline_core::{DomainEvent, Event};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct OrderCreated { order_id: String, total_cents: u64 }
//! impl Event for OrderCreated {
//!     const TYPE: &'static str = "order.created";
//!     const VERSION: u32 = 2;
//! }
//!
//! let event = DomainEvent::new(OrderCreated { order_id: "o-1".into(), total_cents: 1250 })
//!     .with_key("o-1");
//! assert_eq!(event.version, 2);
//! ```

#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

mod browse;
mod bus;
mod config;
pub mod dead_letter;
mod delivery;
mod error;
mod event;
mod event_id;
mod inventory;
mod observe;
pub mod redact;
mod replay;
mod retry;
mod router;
mod transport;
pub mod wire;

pub use browse::{BrowseOptions, DeadLetterBatch, HeldLetter, LetterAction};
pub use bus::{Bus, BusSettings};
pub use busline_codecs as codecs;
pub use busline_codecs::{CodecError, CodecRegistry};
pub use config::{
    BackendSection, BrokerUrl, BusConfig, ConsumerConfig, ContentMode, ENV_CODEC, ENV_CONFIG_FILE,
    ENV_SERVICE, ENV_URL,
};
pub use dead_letter::{
    dead_letter_topic, DeadLetter, DeadLetterPolicy, DeadLetterReason, UnknownEventAction,
};
pub use delivery::{Acker, Delivery, ReceivedMessage};
pub use error::{
    BoxError, ConfigError, ConsumeError, ConsumeErrorKind, EnvelopeError, ErrorChain, PublishError,
    PublishErrorKind, SettleError, SettleErrorKind, SubscribeError, SubscribeErrorKind,
};
pub use event::{DomainEvent, Event, Payload, RawEvent};
pub use event_id::EventId;
pub use inventory::{GroupInfo, InspectError, InspectErrorKind, TopicInfo};
pub use observe::{Handled, Outcome, RouterObserver, Settled, SKIP_UNKNOWN_EVENT_TYPE};
pub use redact::is_secret_key;
pub use replay::{
    Repair, ReplayError, ReplayOptions, ReplayReport, REPLAY_COUNT, REPLAY_GROUP,
    SKIP_REPLAYED_FOR_OTHER_GROUP,
};
pub use retry::{RetryDecision, RetryPolicy};
pub use router::{
    Attempt, BeforeFirstHandler, Context, Either, EventService, FailureKind, FromContext, FromEvent, FromRef,
    FromTower, Gate, GateState, Handler, HandlerError, HandlerOptions, HandlerService,
    HandlerWithoutStateExt, Identity, Incoming, IntoHandlerResult, Layer, Routed, Router, RouterError,
    RouterHealth, RouterProbe, RouterStats, RunningRouter, Stack, State, SubscriptionHealth,
    SubscriptionState, Topic, TowerLayer, TowerService, Unrouted,
};
/// The string type of the envelope's names (type, source, key, content
/// type): inline up to 23 bytes, shared beyond, borrowed for `&'static str`.
pub use smol_str::SmolStr;
pub use transport::{Capabilities, ConnectionState, EventBus, StartFrom, SubscribeOptions, Subscription};

/// What a backend crate, or a decorator of someone else's [`EventBus`],
/// implements and calls, apart from what applications use: the settle side
/// of a delivery, the decorator trait, and the `async_trait` macro their
/// trait impls are written with. The wire mapping they share is
/// [`wire`].
pub mod backend {
    pub use crate::delivery::Acknowledge;
    pub use crate::transport::BusDecorator;
    pub use async_trait::async_trait;
}
