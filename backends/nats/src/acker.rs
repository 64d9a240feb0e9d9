//! Settling one JetStream delivery: ack, nak with delay, dead-letter (publish
//! to the DLQ stream, then `term`), and nak when dropped undecided.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::{AckKind, PublishMessage};
use async_nats::{HeaderMap, Subject};
use busline_core::backend::{async_trait, Acknowledge};
use busline_core::dead_letter::attr as dl;
use busline_core::wire::HeaderDialect;
use busline_core::{DeadLetter, DeadLetterReason, SettleError, SettleErrorKind};
use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;

use crate::headers;
use crate::keepalive::Keepalive;
use crate::shared::Shared;

/// First wait before an event whose dead letter could not be stored comes
/// back; doubled with each further attempt up to [`DEAD_LETTER_RETRY_MAX`].
pub(crate) const DEAD_LETTER_RETRY_FIRST: Duration = Duration::from_millis(200);
/// Longest wait before such an event comes back.
pub(crate) const DEAD_LETTER_RETRY_MAX: Duration = Duration::from_secs(10);

/// Body bytes a dead letter too large for the server keeps: enough to
/// inspect, far below any `max_payload`.
const CUT_BODY: usize = 64 * 1024;

/// The nak delay after a failed dead-letter publish of delivery `attempt`.
pub(crate) fn dead_letter_retry_delay(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    DEAD_LETTER_RETRY_FIRST
        .saturating_mul(1 << doublings)
        .min(DEAD_LETTER_RETRY_MAX)
}

/// The parts of a received message a settlement needs.
pub(crate) struct Received {
    pub(crate) reply: Subject,
    pub(crate) subject: Subject,
    pub(crate) headers: Option<HeaderMap>,
    pub(crate) payload: Bytes,
    pub(crate) topic: Arc<str>,
    pub(crate) stream: Arc<str>,
    /// The group's [`group_key`](crate::shared::group_key), under which its
    /// attempts are remembered.
    pub(crate) group_key: Arc<str>,
    /// Subject prefix of the topic, `<token>.`.
    pub(crate) prefix_len: usize,
    pub(crate) stream_sequence: u64,
    pub(crate) attempt: u32,
}

pub(crate) struct NatsAcker {
    pending: Option<Pending>,
}

struct Pending {
    received: Received,
    shared: Arc<Shared>,
    keepalive: Arc<Keepalive>,
    keepalive_id: u64,
    _permit: OwnedSemaphorePermit,
}

impl NatsAcker {
    pub(crate) fn new(
        received: Received,
        shared: Arc<Shared>,
        keepalive: Arc<Keepalive>,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        let keepalive_id = keepalive.insert(received.reply.clone());
        shared.in_flight.enter();
        Self {
            pending: Some(Pending {
                received,
                shared,
                keepalive,
                keepalive_id,
                _permit: permit,
            }),
        }
    }

    fn take(&mut self) -> Pending {
        self.pending.take().expect("a delivery is settled once")
    }
}

impl Pending {
    async fn send(&self, kind: AckKind, confirm: bool) -> Result<(), SettleError> {
        let reply = self.received.reply.clone();
        let client = &self.shared.client;
        let result = if confirm {
            // A request waits for the server's reply: the settlement is
            // recorded when this returns.
            client
                .request(reply, kind.into())
                .await
                .map(drop)
                .map_err(async_nats::Error::from)
        } else {
            client
                .publish(reply, kind.into())
                .await
                .map_err(async_nats::Error::from)
        };
        result.map_err(|e| {
            let kind = if self.shared.is_closed() {
                SettleErrorKind::Closed
            } else {
                SettleErrorKind::Connection
            };
            SettleError::new(kind, self.topic()).with_source(e)
        })
    }

    fn returned(&self) {
        let r = &self.received;
        self.shared
            .attempts
            .returned(&r.group_key, r.stream_sequence, r.attempt);
    }

    fn settled(&self) {
        let r = &self.received;
        self.shared.attempts.settled(&r.group_key, r.stream_sequence);
    }

    fn topic(&self) -> String {
        self.received.topic.to_string()
    }

    async fn publish_dead_letter(&self, letter: &DeadLetter) -> Result<(), SettleError> {
        let fail = |e: busline_core::BoxError| {
            SettleError::new(SettleErrorKind::DeadLetterPublish, letter.dead_letter_topic()).with_source(e)
        };
        let shared = &self.shared;
        let dlq = letter.dead_letter_topic();
        let names = shared
            .topology
            .ensure_stream(&dlq)
            .await
            .map_err(|e| fail(e.into()))?;
        let r = &self.received;
        // Same event type tokens as the original subject, under the DLQ's
        // token; works for messages whose headers are unreadable too.
        let rest = r.subject.get(r.prefix_len..).unwrap_or("unknown");
        let subject = format!("{}.{rest}", names.token);
        let msg_id = format!("dl:{}:{}", r.stream, r.stream_sequence);
        let mut payload = r.payload.clone();
        let mut map = headers::dead_letter(r.headers.as_ref(), letter, msg_id.clone());
        // The letter's own headers can push a message the server took over
        // its `max_payload`; the server would refuse it by closing the
        // connection, every time. Such a letter is written as one that
        // fits instead.
        let limit = shared.client.server_info().max_payload;
        if payload.len() + headers::wire_size(&map) > limit {
            let (small, cut) = too_large(letter, payload.len(), limit);
            tracing::warn!(topic = %r.topic, seq = r.stream_sequence, size = payload.len(), limit, "dead letter above max_payload: written with its body cut");
            map = headers::dead_letter(r.headers.as_ref(), &small, msg_id.clone());
            map.insert(
                HeaderDialect::NATS.header(dl::ORIGINAL_SIZE).as_str(),
                payload.len().to_string(),
            );
            payload = payload.slice(..cut);
            if payload.len() + headers::wire_size(&map) > limit {
                // The original's own headers are what does not fit.
                map = headers::dead_letter(None, &small, msg_id);
                map.insert(
                    HeaderDialect::NATS.header(dl::ORIGINAL_SIZE).as_str(),
                    r.payload.len().to_string(),
                );
                payload = Bytes::new();
            }
        }
        let message = PublishMessage::build().payload(payload).headers(map);
        let ack = shared
            .js
            .send_publish(subject, message)
            .await
            .map_err(|e| fail(e.into()))?;
        ack.await.map_err(|e| fail(e.into()))?;
        Ok(())
    }
}

/// The letter that replaces `letter` when the whole would exceed `limit`:
/// reason `too_large`, the original reason and error in its error text, and
/// how many body bytes it keeps.
fn too_large(letter: &DeadLetter, size: usize, limit: usize) -> (DeadLetter, usize) {
    let cut = CUT_BODY.min(size).min(limit / 2);
    let error = format!(
        "{}: {}; its dead letter ({size} bytes of body) is above the server's max_payload ({limit}); written with the body cut to {cut} bytes",
        letter.reason.as_str(),
        letter.error,
    );
    let small = DeadLetter {
        reason: DeadLetterReason::TooLarge,
        error,
        ..letter.clone()
    };
    (small, cut)
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.keepalive.remove(self.keepalive_id);
        self.shared.in_flight.leave();
    }
}

#[async_trait]
impl Acknowledge for NatsAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), SettleError> {
        let p = self.take();
        p.settled();
        p.send(AckKind::Ack, p.shared.config.double_ack).await
    }

    async fn nack(mut self: Box<Self>, retry_after: Duration) -> Result<(), SettleError> {
        let p = self.take();
        let delay = (!retry_after.is_zero()).then_some(retry_after);
        p.returned();
        p.send(AckKind::Nak(delay), false).await
    }

    /// A consumer releases what it holds when it goes away, and its pull
    /// request may still be on the server: naked without a delay, a
    /// released message was offered to that request again (browsing a DLQ
    /// twice in one process saw one letter twice and missed another), so
    /// it waits as long as a given-back one (`Member::give_back`).
    async fn release(mut self: Box<Self>) -> Result<(), SettleError> {
        let p = self.take();
        p.returned();
        p.send(AckKind::Nak(Some(crate::consumer::GIVE_BACK_DELAY)), false)
            .await
    }

    async fn dead_letter(mut self: Box<Self>, letter: DeadLetter) -> Result<(), SettleError> {
        let p = self.take();
        if let Err(e) = p.publish_dead_letter(&letter).await {
            // Not stored in the DLQ: the event comes back instead of being
            // lost, later each time, since a DLQ that refuses one letter
            // (full, gone, unreachable) refuses the next one at once too.
            let delay = dead_letter_retry_delay(p.received.attempt);
            tracing::warn!(topic = %p.received.topic, seq = p.received.stream_sequence, attempt = p.received.attempt, retry_in = ?delay, error = %busline_core::ErrorChain(&e), "dead letter not stored; the event comes back");
            p.returned();
            let _ = p.send(AckKind::Nak(Some(delay)), false).await;
            return Err(e);
        }
        // The letter is stored; a lost `term` redelivers the event, and its
        // second dead letter carries the same message id, so the DLQ keeps
        // one.
        p.settled();
        p.send(AckKind::Term, p.shared.config.double_ack).await
    }
}

impl Drop for NatsAcker {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            let shared = p.shared.clone();
            p.returned();
            shared.spawn_settle(async move {
                let _ = p.send(AckKind::Nak(None), false).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_retries_wait_longer_each_time() {
        let ms: Vec<u128> = (1..=8).map(|a| dead_letter_retry_delay(a).as_millis()).collect();
        assert_eq!(ms, [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
        assert_eq!(dead_letter_retry_delay(0), DEAD_LETTER_RETRY_FIRST);
        assert_eq!(dead_letter_retry_delay(u32::MAX), DEAD_LETTER_RETRY_MAX);
    }
}
