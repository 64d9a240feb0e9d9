//! Publishing: every event to `<token>.<event_type>` with its envelope
//! headers, all of a batch in flight at once, each awaited until JetStream
//! acknowledges it.

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind as NatsKind};
use async_nats::jetstream::message::PublishMessage;
use busline_core::{PublishError, PublishErrorKind, RawEvent};

use crate::headers;
use crate::naming::TopicNames;
use crate::shared::Shared;
use crate::topology::{Topology, TopologyError};

/// Publishes `events` to `topic`, returning once every one is stored.
pub(crate) async fn publish(shared: &Shared, topic: &str, events: &[RawEvent]) -> Result<(), PublishError> {
    let names = Topology::names(topic).map_err(|e| topology_error(shared, topic, e))?;
    match send_all(shared, topic, &names, events).await {
        // The stream was deleted under this connection: declare it again and
        // publish again; the event ids make the second publish of anything
        // already stored a no-op.
        Err((NatsKind::StreamNotFound, _)) => {
            shared.topology.forget(&names.stream);
            send_all(shared, topic, &names, events).await.map_err(|(_, e)| e)
        }
        other => other.map_err(|(_, e)| e),
    }
}

async fn send_all(
    shared: &Shared,
    topic: &str,
    names: &TopicNames,
    events: &[RawEvent],
) -> Result<(), (NatsKind, PublishError)> {
    let closed = || {
        (
            NatsKind::Other,
            PublishError::new(PublishErrorKind::Closed, topic),
        )
    };
    if shared.is_closed() {
        return Err(closed());
    }
    shared
        .topology
        .ensure_stream(topic)
        .await
        .map_err(|e| (NatsKind::Other, topology_error(shared, topic, e)))?;
    let mut acks: Vec<PublishAckFuture> = Vec::with_capacity(events.len());
    for event in events {
        let headers = headers::encode(event).map_err(|e| {
            (
                NatsKind::Other,
                PublishError::new(PublishErrorKind::InvalidEnvelope, topic).with_source(e),
            )
        })?;
        let message = PublishMessage::build()
            .payload(event.data.bytes.clone())
            .headers(headers);
        let ack = shared
            .js
            .send_publish(names.subject(&event.event_type), message)
            .await
            .map_err(|e| (e.kind(), publish_error(shared, topic, e)))?;
        acks.push(ack);
    }
    for ack in acks {
        ack.await
            .map_err(|e| (e.kind(), publish_error(shared, topic, e)))?;
    }
    Ok(())
}

fn publish_error(
    shared: &Shared,
    topic: &str,
    e: async_nats::jetstream::context::PublishError,
) -> PublishError {
    let kind = if shared.is_closed() {
        PublishErrorKind::Closed
    } else {
        match e.kind() {
            NatsKind::TimedOut => PublishErrorKind::Timeout,
            NatsKind::StreamNotFound => PublishErrorKind::Unroutable,
            NatsKind::BrokenPipe => PublishErrorKind::Connection,
            NatsKind::WrongLastMessageId | NatsKind::WrongLastSequence => PublishErrorKind::Rejected,
            NatsKind::MaxAckPending | NatsKind::Other => PublishErrorKind::Other,
        }
    };
    PublishError::new(kind, topic).with_source(e)
}

fn topology_error(shared: &Shared, topic: &str, e: TopologyError) -> PublishError {
    let kind = match (&e, shared.is_closed()) {
        (_, true) => PublishErrorKind::Closed,
        (TopologyError::InvalidName, _) => PublishErrorKind::Unroutable,
        (TopologyError::Server(_), _) => PublishErrorKind::Connection,
    };
    PublishError::new(kind, topic).with_source(e)
}
