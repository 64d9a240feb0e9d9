//! The envelope every event travels in.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Serialize};
use smol_str::SmolStr;

use crate::EventId;

/// A typed domain event: a payload type with a stable name and a schema
/// version.
///
/// ```
/// use busline_core::Event;
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct OrderCreated { order_id: String, total_cents: u64 }
/// impl Event for OrderCreated {
///     const TYPE: &'static str = "order.created";
///     const VERSION: u32 = 2;
/// }
/// ```
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Stable event type name, e.g. `order.created`; never a Rust type path,
    /// so that renaming the struct does not break consumers.
    const TYPE: &'static str;
    /// Schema version of the payload. Bump it on incompatible changes and
    /// register an upcaster for the old version.
    const VERSION: u32 = 1;
}

/// The bytes of an event's payload and the content type they are encoded in.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Payload {
    /// Media type of `bytes`, e.g. `application/json`.
    pub content_type: SmolStr,
    /// The encoded payload, exactly as it travels in the message body.
    pub bytes: Bytes,
}

/// An event as a backend sees it: envelope attributes plus encoded payload.
pub type RawEvent = DomainEvent<Payload>;

/// The versioned envelope of DESIGN.md; CloudEvents 1.0 on the wire.
///
/// Build one with [`DomainEvent::new`] and the `with_*` methods; the bus fills
/// in `source` from its configuration when it is left empty.
///
/// The attributes are cheap to clone: ids are [`EventId`]s and names are
/// [`SmolStr`]s (a type name from [`Event::TYPE`] is borrowed, short text is
/// inline, longer text is shared), so handing an envelope's attributes to a
/// handler's [`Context`](crate::Context), a dead letter or a follow-up event
/// copies no string.
///
/// ```
/// use busline_core::{DomainEvent, Event};
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// # struct OrderCreated { order_id: String }
/// # impl Event for OrderCreated { const TYPE: &'static str = "order.created"; }
/// let event = DomainEvent::new(OrderCreated { order_id: "o-1".into() })
///     .with_key("o-1")
///     .with_extension("tenant", "acme");
/// assert_eq!(event.event_type, "order.created");
/// assert_eq!(event.correlation_id, event.id); // a new chain starts here
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DomainEvent<T> {
    /// Unique event id; a UUID v7 (time-ordered) for events made here.
    pub id: EventId,
    /// Stable event type name, e.g. `order.created`.
    pub event_type: SmolStr,
    /// Schema version of `data`.
    pub version: u32,
    /// The publishing service.
    pub source: SmolStr,
    /// When the event was created.
    pub time: DateTime<Utc>,
    /// Ties together everything caused by one request. A new event starts its
    /// own chain: the correlation id is its own id.
    pub correlation_id: EventId,
    /// Id of the event whose handler published this one.
    pub causation_id: Option<EventId>,
    /// Ordering and partition key, e.g. the aggregate id.
    pub key: Option<SmolStr>,
    /// Further CloudEvents attributes (`traceparent`, user headers). Names are
    /// lower-case `a-z0-9`, as CloudEvents requires.
    pub extensions: BTreeMap<String, String>,
    /// The payload.
    pub data: T,
}

impl<E: Event> DomainEvent<E> {
    /// A new event of type `E` with a fresh id, the current time and its own
    /// correlation chain.
    pub fn new(data: E) -> Self {
        Self::of_type(SmolStr::new_static(E::TYPE), E::VERSION, data)
    }
}

impl<T> DomainEvent<T> {
    /// A new envelope of any type name and version around `data`, with a
    /// fresh id, the current time and its own correlation chain; for
    /// payloads that are not an [`Event`] type (bytes from elsewhere, a
    /// payload written by hand). Set the rest with the `with_*` methods.
    ///
    /// ```
    /// use busline_core::{DomainEvent, Payload};
    /// let raw = DomainEvent::of_type("order.created", 2, Payload::json(r#"{"id":1}"#))
    ///     .with_source("shop");
    /// assert_eq!((raw.event_type.as_str(), raw.version), ("order.created", 2));
    /// ```
    pub fn of_type(event_type: impl Into<SmolStr>, version: u32, data: T) -> Self {
        let id = EventId::new();
        Self {
            correlation_id: id.clone(),
            id,
            event_type: event_type.into(),
            version,
            source: SmolStr::default(),
            time: Utc::now(),
            causation_id: None,
            key: None,
            extensions: BTreeMap::new(),
            data,
        }
    }

    /// Sets the id (and, if the event started its own chain, the
    /// correlation id with it).
    pub fn with_id(mut self, id: impl Into<EventId>) -> Self {
        let id = id.into();
        if self.correlation_id == self.id {
            self.correlation_id = id.clone();
        }
        self.id = id;
        self
    }

    /// Sets the creation time.
    pub fn with_time(mut self, time: DateTime<Utc>) -> Self {
        self.time = time;
        self
    }

    /// Sets the ordering / partition key.
    pub fn with_key(mut self, key: impl Into<SmolStr>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the publishing service.
    pub fn with_source(mut self, source: impl Into<SmolStr>) -> Self {
        self.source = source.into();
        self
    }

    /// Joins an existing correlation chain.
    pub fn with_correlation_id(mut self, id: impl Into<EventId>) -> Self {
        self.correlation_id = id.into();
        self
    }

    /// Records the event that caused this one.
    pub fn with_causation_id(mut self, id: impl Into<EventId>) -> Self {
        self.causation_id = Some(id.into());
        self
    }

    /// Adds an extension attribute. Names must be lower-case `a-z0-9`;
    /// publishing an event with another name fails with a typed error.
    pub fn with_extension(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extensions.insert(name.into(), value.into());
        self
    }

    /// Makes this event a consequence of `cause`: same correlation chain,
    /// causation = the cause's id.
    pub fn caused_by<U>(self, cause: &DomainEvent<U>) -> Self {
        let correlation = cause.correlation_id.clone();
        self.with_correlation_id(correlation)
            .with_causation_id(cause.id.clone())
    }

    /// The same envelope around another payload.
    pub fn map_data<U>(self, f: impl FnOnce(T) -> U) -> DomainEvent<U> {
        self.try_map_data::<U, std::convert::Infallible>(|d| Ok(f(d)))
            .unwrap_or_else(|never| match never {})
    }

    /// The same envelope around another payload, or the conversion's error.
    pub fn try_map_data<U, Err>(self, f: impl FnOnce(T) -> Result<U, Err>) -> Result<DomainEvent<U>, Err> {
        Ok(DomainEvent {
            data: f(self.data)?,
            id: self.id,
            event_type: self.event_type,
            version: self.version,
            source: self.source,
            time: self.time,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            key: self.key,
            extensions: self.extensions,
        })
    }

    /// The envelope with a borrowed payload.
    pub fn as_ref(&self) -> DomainEvent<&T> {
        DomainEvent {
            data: &self.data,
            id: self.id.clone(),
            event_type: self.event_type.clone(),
            version: self.version,
            source: self.source.clone(),
            time: self.time,
            correlation_id: self.correlation_id.clone(),
            causation_id: self.causation_id.clone(),
            key: self.key.clone(),
            extensions: self.extensions.clone(),
        }
    }
}

impl Payload {
    /// Bytes in a content type.
    pub fn new(content_type: impl Into<SmolStr>, bytes: impl Into<Bytes>) -> Self {
        Self {
            content_type: content_type.into(),
            bytes: bytes.into(),
        }
    }

    /// JSON bytes (`application/json`).
    pub fn json(bytes: impl Into<Bytes>) -> Self {
        Self::new(SmolStr::new_static(busline_codecs::JSON_CONTENT_TYPE), bytes)
    }
}

impl RawEvent {
    /// The media type of the payload.
    pub fn content_type(&self) -> &str {
        &self.data.content_type
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Ping(u32);
    impl Event for Ping {
        const TYPE: &'static str = "ping";
        const VERSION: u32 = 3;
    }

    #[test]
    fn new_event_has_v7_id_and_own_correlation() {
        let e = DomainEvent::new(Ping(1));
        assert_eq!(e.id.as_uuid().unwrap().get_version_num(), 7);
        assert_eq!(e.correlation_id, e.id);
        assert_eq!((e.event_type.as_str(), e.version), ("ping", 3));
        assert!(DomainEvent::new(Ping(2)).id > e.id, "v7 ids are time-ordered");
    }

    #[test]
    fn caused_by_joins_chain() {
        let cause = DomainEvent::new(Ping(1)).with_correlation_id("req-7");
        let effect = DomainEvent::new(Ping(2)).caused_by(&cause);
        assert_eq!(effect.correlation_id, "req-7");
        assert_eq!(effect.causation_id.as_deref(), Some(cause.id.as_str()));
    }
}
