//! What a handler knows about the delivery it handles, and how it publishes
//! follow-up events into the same correlation chain.

use std::sync::Arc;

use crate::{Bus, DomainEvent, Event, EventId, PublishError};

/// The handler's view of its delivery.
///
/// [`Context::publish`] stamps the new event with the handled event's
/// correlation id and makes the handled event its cause.
#[derive(Clone, Debug)]
pub struct Context {
    bus: Bus,
    topic: Arc<str>,
    group: Arc<str>,
    attempt: u32,
    event_id: EventId,
    correlation_id: EventId,
}

impl Context {
    pub(crate) fn new(
        bus: Bus,
        topic: Arc<str>,
        group: Arc<str>,
        attempt: u32,
        event_id: EventId,
        correlation_id: EventId,
    ) -> Self {
        Self {
            bus,
            topic,
            group,
            attempt,
            event_id,
            correlation_id,
        }
    }

    /// Publishes `data` as a consequence of the handled event.
    pub async fn publish<E: Event>(&self, topic: &str, data: E) -> Result<EventId, PublishError> {
        self.publish_event(topic, DomainEvent::new(data)).await
    }

    /// Publishes a prepared envelope as a consequence of the handled event:
    /// its correlation and causation ids are overwritten.
    pub async fn publish_event<E: Event>(
        &self,
        topic: &str,
        event: DomainEvent<E>,
    ) -> Result<EventId, PublishError> {
        let event = event
            .with_correlation_id(self.correlation_id.clone())
            .with_causation_id(self.event_id.clone());
        self.bus.publish_event(topic, event).await
    }

    /// The bus, for anything beyond publishing follow-ups.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// The topic the event came from.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub(crate) fn topic_arc(&self) -> Arc<str> {
        self.topic.clone()
    }

    pub(crate) fn group_arc(&self) -> Arc<str> {
        self.group.clone()
    }

    /// The group handling it.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Which delivery this is (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Id of the handled event.
    pub fn event_id(&self) -> &EventId {
        &self.event_id
    }

    /// Correlation id of the handled event.
    pub fn correlation_id(&self) -> &EventId {
        &self.correlation_id
    }
}
