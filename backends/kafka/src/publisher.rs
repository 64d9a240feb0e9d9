//! Producing: every record of a batch enqueued first, then every delivery
//! report awaited; a publish returns only once the broker has the record
//! (`acks=all`, idempotent producer).

use std::time::Duration;

use busline_core::{PublishError, PublishErrorKind, RawEvent};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureRecord};

use crate::errors::publish_kind;
use crate::headers;
use crate::shared::Shared;
use crate::topology::TopologyError;

/// Publishes `events` to `topic`, all in flight at once.
pub(crate) async fn publish(shared: &Shared, topic: &str, events: &[RawEvent]) -> Result<(), PublishError> {
    if shared.is_closed() {
        return Err(PublishError::new(PublishErrorKind::Closed, topic));
    }
    ensure_topic(shared, topic).await?;
    let mut reports = Vec::with_capacity(events.len());
    for event in events {
        let headers = headers::encode(event)
            .map_err(|e| PublishError::new(PublishErrorKind::InvalidEnvelope, topic).with_source(e))?;
        let key = event.key.as_deref().map(str::as_bytes);
        reports.push(enqueue(shared, topic, key, &event.data.bytes, headers, true).await?);
    }
    let mut first_error = None;
    for report in reports {
        if let Err(e) = confirmed(report, topic).await {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Produces one record as it is (a dead letter) and waits for its report;
/// works while the connection shuts down, so draining members can still
/// dead-letter.
pub(crate) async fn produce_raw(
    shared: &Shared,
    topic: &str,
    key: Option<&[u8]>,
    payload: &[u8],
    headers: OwnedHeaders,
) -> Result<(), PublishError> {
    ensure_topic(shared, topic).await?;
    let report = enqueue(shared, topic, key, payload, headers, false).await?;
    confirmed(report, topic).await
}

async fn ensure_topic(shared: &Shared, topic: &str) -> Result<(), PublishError> {
    shared.topology.ensure_topic(topic).await.map_err(|e| {
        let kind = match e {
            TopologyError::InvalidName(_) => PublishErrorKind::Unroutable,
            TopologyError::Broker(_) => PublishErrorKind::Connection,
        };
        PublishError::new(kind, topic).with_source(e)
    })
}

async fn enqueue(
    shared: &Shared,
    topic: &str,
    key: Option<&[u8]>,
    payload: &[u8],
    headers: OwnedHeaders,
    refuse_when_closed: bool,
) -> Result<DeliveryFuture, PublishError> {
    let mut record = FutureRecord::<[u8], [u8]>::to(topic)
        .payload(payload)
        .headers(headers);
    record.key = key;
    loop {
        if refuse_when_closed && shared.is_closed() {
            return Err(PublishError::new(PublishErrorKind::Closed, topic));
        }
        match shared.producer.send_result(record) {
            Ok(report) => return Ok(report),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                // The producer's queue is full: wait for room rather than fail.
                record = back;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((e, _)) => return Err(PublishError::new(publish_kind(&e), topic).with_source(e)),
        }
    }
}

async fn confirmed(report: DeliveryFuture, topic: &str) -> Result<(), PublishError> {
    match report.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(PublishError::new(publish_kind(&e), topic).with_source(e)),
        Err(_canceled) => Err(PublishError::new(PublishErrorKind::Closed, topic)),
    }
}
