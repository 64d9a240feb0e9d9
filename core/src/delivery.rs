//! A received event and the decision that settles it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::Utc;

use crate::dead_letter::{DeadLetter, DeadLetterReason};
use crate::{EnvelopeError, RawEvent, SettleError};

/// The backend's side of settling one delivery.
///
/// An implementation that is dropped without one of its methods having been
/// called must make the broker deliver the event again (the contract's
/// "dropped undecided = redelivered").
#[async_trait]
pub trait Acknowledge: Send + 'static {
    /// The event is handled; the broker forgets it.
    async fn ack(self: Box<Self>) -> Result<(), SettleError>;
    /// Acknowledges at once, without waiting, where the backend can (no I/O
    /// to wait for, as in memory or a Kafka offset store); `None` where it
    /// cannot, and the caller then uses [`ack`](Self::ack). After `Some`,
    /// dropping the acknowledger must do nothing.
    fn try_ack_now(&mut self) -> Option<Result<(), SettleError>> {
        None
    }
    /// Deliver the event again after `retry_after`, with the attempt number
    /// one higher.
    async fn nack(self: Box<Self>, retry_after: Duration) -> Result<(), SettleError>;
    /// Return the event unhandled, because the consumer is going away
    /// (shutdown's deadline passed), not because handling failed: it is
    /// delivered again, at once, and where the backend can, this does not
    /// count as an attempt, so frequent deploys do not use up a slow event's
    /// retries. The default is `nack(0)`, which does count where the broker
    /// counts deliveries itself.
    async fn release(self: Box<Self>) -> Result<(), SettleError> {
        self.nack(Duration::ZERO).await
    }
    /// Move the event to `letter.dead_letter_topic()`: envelope and payload
    /// byte for byte, plus the letter's attributes; then forget the original.
    async fn dead_letter(self: Box<Self>, letter: DeadLetter) -> Result<(), SettleError>;
}

/// The detached settle handle of a delivery: it travels with the event into
/// a handler task and is consumed by exactly one decision.
pub struct Acker {
    inner: Box<dyn Acknowledge>,
    topic: Arc<str>,
    group: Arc<str>,
    attempt: u32,
}

impl std::fmt::Debug for Acker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acker")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("attempt", &self.attempt)
            .finish()
    }
}

impl Acker {
    /// Acknowledges: the event is handled.
    pub async fn ack(self) -> Result<(), SettleError> {
        self.inner.ack().await
    }

    /// Acknowledges without waiting where the backend can; gives the acker
    /// back where it cannot (then use [`ack`](Self::ack)). Saves a future
    /// per event on backends that settle in memory.
    pub fn ack_now(mut self) -> Result<Result<(), SettleError>, Acker> {
        match self.inner.try_ack_now() {
            Some(result) => Ok(result),
            None => Err(self),
        }
    }

    /// Asks for redelivery after `retry_after`.
    pub async fn nack(self, retry_after: Duration) -> Result<(), SettleError> {
        self.inner.nack(retry_after).await
    }

    /// Returns the event unhandled without counting an attempt where the
    /// backend can (see [`Acknowledge::release`]).
    pub async fn release(self) -> Result<(), SettleError> {
        self.inner.release().await
    }

    /// Dead-letters the event to `<topic>.<group>.dlq` with a reason and the
    /// error text.
    pub async fn dead_letter(
        self,
        reason: DeadLetterReason,
        error: impl Into<String>,
    ) -> Result<(), SettleError> {
        let letter = DeadLetter {
            reason,
            error: error.into(),
            topic: self.topic.to_string(),
            group: self.group.to_string(),
            attempts: self.attempt,
            failed_at: Utc::now(),
        };
        self.inner.dead_letter(letter).await
    }

    /// The attempt number of this delivery (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The topic the delivery came from.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The group the delivery was made to.
    pub fn group(&self) -> &str {
        &self.group
    }
}

/// A message as the broker handed it over, kept on a [`Delivery`] whose
/// envelope could not be read: what an operator looks at to learn who
/// wrote it and how (`busline dlq list`).
///
/// ```
/// use bytes::Bytes;
/// let message = busline_core::ReceivedMessage::new(
///     vec![(Bytes::from_static(b"ce_type"), Bytes::from_static(b"order.created"))],
///     Bytes::from_static(b"{}"),
/// );
/// assert_eq!(message.header("CE_TYPE"), Some(&b"order.created"[..]));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReceivedMessage {
    /// Its headers in the order the client gives them (lapin's: by name),
    /// name and value as the bytes the broker gave (AMQP values that are
    /// numbers or booleans as their text; AMQP properties as
    /// `amqp.<property>`).
    pub headers: Vec<(Bytes, Bytes)>,
    /// Its body.
    pub body: Bytes,
}

impl ReceivedMessage {
    /// A message of `headers` and `body`.
    pub fn new(headers: Vec<(Bytes, Bytes)>, body: Bytes) -> Self {
        Self { headers, body }
    }

    /// The value of the first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v.as_ref())
    }
}

/// One event handed to one group member.
///
/// The event is `Err` when the message's headers could not be read as an
/// envelope: a poison message, which should be dead-lettered with
/// [`DeadLetterReason::MalformedEnvelope`] (the router does this); the
/// backends then keep the message as received ([`received`](Self::received)).
#[derive(Debug)]
pub struct Delivery {
    event: Result<RawEvent, EnvelopeError>,
    acker: Acker,
    /// Boxed: set only for unreadable messages, so it costs a readable
    /// delivery one pointer.
    received: Option<Box<ReceivedMessage>>,
}

impl Delivery {
    /// Assembles a delivery; for backends.
    pub fn new(
        event: Result<RawEvent, EnvelopeError>,
        attempt: u32,
        topic: Arc<str>,
        group: Arc<str>,
        acknowledge: Box<dyn Acknowledge>,
    ) -> Self {
        Self {
            event,
            acker: Acker {
                inner: acknowledge,
                topic,
                group,
                attempt: attempt.max(1),
            },
            received: None,
        }
    }

    /// Keeps the message as the broker handed it over; for backends, when
    /// the envelope could not be read.
    pub fn with_received(mut self, received: ReceivedMessage) -> Self {
        self.received = Some(Box::new(received));
        self
    }

    /// The message as the broker handed it over, where the backend kept it:
    /// when [`event`](Self::event) is `Err`.
    pub fn received(&self) -> Option<&ReceivedMessage> {
        self.received.as_deref()
    }

    /// The envelope, or why it could not be read.
    pub fn event(&self) -> Result<&RawEvent, &EnvelopeError> {
        self.event.as_ref()
    }

    /// The attempt number (1 for the first delivery).
    pub fn attempt(&self) -> u32 {
        self.acker.attempt
    }

    /// The topic the delivery came from.
    pub fn topic(&self) -> &str {
        &self.acker.topic
    }

    /// The group it was delivered to.
    pub fn group(&self) -> &str {
        &self.acker.group
    }

    /// Puts a delivery together again from its parts, for decorators of a
    /// bus that replace the event (a signature check that refuses it).
    pub fn from_parts(event: Result<RawEvent, EnvelopeError>, acker: Acker) -> Self {
        Self {
            event,
            acker,
            received: None,
        }
    }

    /// Separates the event from its settle handle.
    pub fn into_parts(self) -> (Result<RawEvent, EnvelopeError>, Acker) {
        (self.event, self.acker)
    }

    /// See [`Acker::ack`].
    pub async fn ack(self) -> Result<(), SettleError> {
        self.acker.ack().await
    }

    /// See [`Acker::nack`].
    pub async fn nack(self, retry_after: Duration) -> Result<(), SettleError> {
        self.acker.nack(retry_after).await
    }

    /// See [`Acker::dead_letter`].
    pub async fn dead_letter(
        self,
        reason: DeadLetterReason,
        error: impl Into<String>,
    ) -> Result<(), SettleError> {
        self.acker.dead_letter(reason, error).await
    }
}
