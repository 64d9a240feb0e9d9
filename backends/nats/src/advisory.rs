//! Messages the server gave up on: JetStream stops delivering a message
//! after the consumer's `max_deliver` and publishes a `MAX_DELIVERIES`
//! advisory. busline dead-letters everything it can read long before that,
//! so what arrives here is either a message async-nats cannot parse at all
//! (it drops the connection on each delivery, and busline never sees it) or
//! one whose deliveries were used up otherwise (lost in transit, a handler
//! retry policy longer than `max_deliver`). Either way it is fetched through
//! the stream message API, whose JSON reply carries the headers as base64
//! bytes that the client does not parse, and written to the group's DLQ.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use busline_core::{dead_letter_topic, BoxError, DeadLetter, DeadLetterReason};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::headers;
use crate::naming::TopicNames;
use crate::rawmsg::{self, base64_decode};
use crate::shared::{group_key, Shared};

/// The (stream, consumer) whose advisories one task watches.
pub(crate) struct Watched {
    pub(crate) stream: String,
    pub(crate) consumer: String,
    pub(crate) topic: String,
    pub(crate) group: String,
    pub(crate) names: TopicNames,
}

#[derive(Deserialize)]
struct Advisory {
    stream_seq: u64,
    #[serde(default)]
    deliveries: u64,
}

#[derive(Deserialize)]
struct GetReply {
    message: Option<StoredMessage>,
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
struct StoredMessage {
    subject: String,
    #[serde(default)]
    hdrs: Option<String>,
    #[serde(default)]
    data: Option<String>,
}

const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Starts watching `w` on `shared`'s connection, once per (stream,
/// consumer) and connection, and returns the group's token: the task ends
/// with the connection, or when `remove_group` cancels the token (the
/// consumer is gone, no advisory will come for it).
pub(crate) fn watch(shared: &Arc<Shared>, w: Watched) -> CancellationToken {
    let (life, new) = shared.group_life(&group_key(&w.stream, &w.consumer));
    if !new {
        return life;
    }
    let shared = shared.clone();
    let token = life.clone();
    tokio::spawn(async move {
        let w = Arc::new(w);
        run(&shared, &w, &token).await;
        if !token.is_cancelled() {
            tracing::error!(stream = %w.stream, consumer = %w.consumer, "max-deliveries watcher ended before its connection");
        }
    });
    life
}

async fn run(shared: &Arc<Shared>, w: &Arc<Watched>, life: &CancellationToken) {
    let subject = format!(
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{}",
        w.stream, w.consumer
    );
    let mut backoff = Duration::from_millis(50);
    loop {
        // A queue group: of all the connections of a group, one writes the
        // letter (and the DLQ's duplicate window drops a second anyway).
        let sub = tokio::select! {
            _ = life.cancelled() => return,
            s = shared.client.queue_subscribe(subject.clone(), "busline".into()) => s,
        };
        let mut sub = match sub {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%subject, error = %e, "cannot subscribe to max-deliveries advisories; retrying");
                if !pause(life, &mut backoff).await {
                    return;
                }
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                _ = life.cancelled() => return,
                n = sub.next() => n,
            };
            let Some(message) = next else { break };
            match serde_json::from_slice::<Advisory>(&message.payload) {
                Ok(a) => move_aside(shared, w, life, a).await,
                Err(e) => tracing::warn!(%subject, error = %e, "unreadable max-deliveries advisory"),
            }
        }
        tracing::warn!(%subject, "max-deliveries advisory subscription ended; subscribing again");
        if !pause(life, &mut backoff).await {
            return;
        }
    }
}

/// Sleeps `backoff` (then doubles it); false once `life` ends.
async fn pause(life: &CancellationToken, backoff: &mut Duration) -> bool {
    tokio::select! {
        _ = life.cancelled() => return false,
        _ = tokio::time::sleep(*backoff) => {}
    }
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    true
}

/// Writes the letter of stream message `a.stream_seq`, retrying with
/// backoff until it is stored, the message is gone, or the connection
/// closes (or the group is removed, its letters with it): the server will
/// not deliver it again, so this is its last way out.
async fn move_aside(shared: &Arc<Shared>, w: &Watched, life: &CancellationToken, a: Advisory) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match try_move_aside(shared, w, &a).await {
            Ok(Some(reason)) => {
                let counter = match reason {
                    DeadLetterReason::UnparseableMessage => &shared.stats.unparseable,
                    _ => &shared.stats.max_delivered,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    stream = %w.stream, consumer = %w.consumer, seq = a.stream_seq,
                    deliveries = a.deliveries, %reason,
                    "the server stopped delivering a message; moved it to the dead-letter topic"
                );
                return;
            }
            Ok(None) => {
                tracing::warn!(stream = %w.stream, seq = a.stream_seq, "a message the server stopped delivering is no longer in its stream");
                return;
            }
            Err(e) => {
                tracing::warn!(stream = %w.stream, seq = a.stream_seq, error = %e, retry_in = ?backoff, "cannot move a message the server stopped delivering to the DLQ; retrying");
                if !pause(life, &mut backoff).await {
                    return;
                }
            }
        }
    }
}

async fn try_move_aside(
    shared: &Shared,
    w: &Watched,
    a: &Advisory,
) -> Result<Option<DeadLetterReason>, BoxError> {
    let request = format!(r#"{{"seq":{}}}"#, a.stream_seq);
    let reply = shared
        .client
        .request(format!("$JS.API.STREAM.MSG.GET.{}", w.stream), request.into())
        .await?;
    let reply: GetReply = serde_json::from_slice(&reply.payload)?;
    let stored = match (reply.message, reply.error) {
        (Some(m), _) => m,
        (None, Some(e)) if e.code == 404 => return Ok(None),
        (None, Some(e)) => return Err(format!("stream message API: {} {}", e.code, e.description).into()),
        (None, None) => return Err("stream message API: empty reply".into()),
    };
    let block = stored.hdrs.as_deref().map(base64_decode).transpose()?;
    let payload = Bytes::from(
        stored
            .data
            .as_deref()
            .map(base64_decode)
            .transpose()?
            .unwrap_or_default(),
    );
    let recovered = block.as_deref().map(rawmsg::recover).unwrap_or_default();
    let parseable = block.is_none() || recovered.parseable;
    let (reason, error) = if parseable {
        (
            DeadLetterReason::MaxAttemptsExceeded,
            format!(
                "the server stopped delivering it after {} deliveries (the consumer's max_deliver) before the group settled it",
                a.deliveries
            ),
        )
    } else {
        let mut error = format!(
            "the NATS client cannot parse this message (its header block is not what async-nats reads); \
             moved aside after {} deliveries; headers left out of this letter: ",
            a.deliveries
        );
        error.push_str(&recovered.dropped.join(", "));
        if recovered.dropped.is_empty() {
            error.push_str("none (the block as a whole is not UTF-8)");
        }
        (DeadLetterReason::UnparseableMessage, error)
    };
    let letter = DeadLetter {
        reason,
        error,
        topic: w.topic.clone(),
        group: w.group.clone(),
        attempts: u32::try_from(a.deliveries).unwrap_or(u32::MAX),
        failed_at: chrono::Utc::now(),
    };
    let dlq = shared
        .topology
        .ensure_stream(&dead_letter_topic(&w.topic, &w.group))
        .await
        .map_err(BoxError::from)?;
    let rest = stored
        .subject
        .get(w.names.token.len() + 1..)
        .filter(|r| !r.is_empty())
        .unwrap_or("unknown");
    let msg_id = format!("dl:{}:{}", w.stream, a.stream_seq);
    let message = PublishMessage::build()
        .payload(payload)
        .headers(headers::dead_letter(Some(&recovered.map()), &letter, msg_id));
    shared
        .js
        .send_publish(format!("{}.{rest}", dlq.token), message)
        .await?
        .await?;
    Ok(Some(reason))
}
