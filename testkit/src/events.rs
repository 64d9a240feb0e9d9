//! Event types the conformance suite publishes.

use busline_core::Event;
use serde::{Deserialize, Serialize};

/// A numbered test event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Sequence number, unique within a scenario.
    pub seq: u64,
    /// Free text.
    pub note: String,
}

impl Event for Ping {
    const TYPE: &'static str = "test.ping";
}

impl Ping {
    /// A ping with `seq` and an empty note.
    pub fn new(seq: u64) -> Self {
        Self {
            seq,
            note: String::new(),
        }
    }
}

/// The answer a handler publishes in the correlation scenario.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The ping's sequence number.
    pub seq: u64,
}

impl Event for Pong {
    const TYPE: &'static str = "test.pong";
}

/// The current version (2) of the order event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Order id.
    pub order_id: String,
    /// Total in cents.
    pub total_cents: u64,
}

impl Event for Order {
    const TYPE: &'static str = "test.order";
    const VERSION: u32 = 2;
}

/// Version 1 of the order event, upcast to [`Order`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderV1 {
    /// Order id.
    pub id: String,
    /// Total in whole units.
    pub total: u64,
}

impl Event for OrderV1 {
    const TYPE: &'static str = "test.order";
    const VERSION: u32 = 1;
}

impl From<OrderV1> for Order {
    fn from(v1: OrderV1) -> Self {
        Order {
            order_id: v1.id,
            total_cents: v1.total * 100,
        }
    }
}

/// Version 3 of the order event: newer than any handler, dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderV3 {
    /// Order id.
    pub order_id: String,
    /// Total and currency.
    pub total: (u64, String),
}

impl Event for OrderV3 {
    const TYPE: &'static str = "test.order";
    const VERSION: u32 = 3;
}
