//! Settling one RabbitMQ delivery: ack; nack by republishing a copy with
//! the next attempt number (through a delay bucket when delayed, see
//! [`retry`](crate::retry)) and then acking the original; dead-letter by
//! publishing an enriched copy to the DLQ topic and then acking; release
//! by republishing a copy with the same attempt number. A copy is always
//! confirmed before the original is acked, so a failure in between
//! duplicates, never loses. How copies are published: [`group`](crate::group).
//!
//! A copy the broker refuses is not answered by handing the original back
//! for immediate redelivery, which is a hot loop while the broker keeps
//! refusing (and, on a quorum queue, uses up its delivery limit):
//! - a dead letter: the event is parked in a delay bucket for a backoff
//!   that grows with each failure of the same event (counted in a header),
//!   then handled, and dead-lettered, again; the group's other events go on
//!   meanwhile;
//! - a retry copy, or a park that fails too: the original is held unacked
//!   and the copy sent again after the backoff, until it is taken, the bus
//!   shuts down, the channel is lost, or the holds add up to their limit;
//!   only then does the original go back to the broker.

use std::sync::Arc;
use std::time::Duration;

use busline_core::backend::{async_trait, Acknowledge};
use busline_core::{DeadLetter, SettleError, SettleErrorKind};
use bytes::Bytes;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel};

use crate::group::Copy;
pub(crate) use crate::group::GroupContext;
use crate::headers;
use crate::publisher::Failure;
use crate::topology;

/// The message as received, kept for republishing.
pub(crate) struct Received {
    pub(crate) properties: BasicProperties,
    pub(crate) body: Bytes,
    pub(crate) routing_key: ShortString,
    pub(crate) attempt: u32,
}

pub(crate) struct RabbitAcker {
    /// `None` once settled.
    acker: Option<lapin::Acker>,
    /// The consumer's channel stays open while a delivery on it is
    /// undecided, even after the subscription is dropped.
    channel: Channel,
    message: Received,
    group: Arc<GroupContext>,
}

impl RabbitAcker {
    pub(crate) fn new(
        acker: lapin::Acker,
        channel: Channel,
        message: Received,
        group: Arc<GroupContext>,
    ) -> Self {
        Self {
            acker: Some(acker),
            channel,
            message,
            group,
        }
    }

    fn error(&self, kind: SettleErrorKind) -> SettleError {
        let kind = if self.group.is_closed() {
            SettleErrorKind::Closed
        } else {
            kind
        };
        SettleError::new(kind, self.group.topic.as_ref())
    }

    async fn ack_original(&mut self) -> Result<(), SettleError> {
        let acker = self.acker.take().expect("a delivery is settled once");
        let limit = self.group.operation_timeout;
        match tokio::time::timeout(limit, acker.ack(BasicAckOptions::default())).await {
            Ok(Ok(true)) => Ok(()),
            // Used or poisoned: the channel is gone and the broker redelivers.
            Ok(Ok(false)) => Err(self.error(SettleErrorKind::Connection)),
            Ok(Err(e)) => Err(self.error(SettleErrorKind::Connection).with_source(e)),
            // Unknown whether it arrived: at least once, it may come again.
            Err(_) => Err(self
                .error(SettleErrorKind::Connection)
                .with_source(format!("no answer within {limit:?}"))),
        }
    }

    /// Gives the original back to the broker, which redelivers it at once.
    async fn requeue_original(&mut self) {
        if let Some(acker) = self.acker.take() {
            let nack = acker.nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            });
            // Lost with its channel if it does not get through: the broker
            // requeues it then.
            let _ = tokio::time::timeout(self.group.operation_timeout, nack).await;
        }
    }

    fn settle_failure(&self, failure: Failure, kind: SettleErrorKind) -> SettleError {
        let kind = match failure {
            Failure::Closed => SettleErrorKind::Closed,
            _ => kind,
        };
        self.error(kind).with_source(failure)
    }

    /// Sends `copy`; while the broker refuses it, holds the original
    /// unacked (a prefetch slot, so a consumer whose copies all fail slows
    /// down to a stop) and sends it again after a growing backoff. Gives
    /// up with the last failure when the bus shuts down, the channel is
    /// gone (the broker has taken the original back then), or the next
    /// wait would pass the hold limit.
    async fn send_patiently(&self, copy: &Copy) -> Result<(), Failure> {
        let mut last = match self.group.send(copy, &self.message.body).await {
            Ok(()) => return Ok(()),
            Err(f) => f,
        };
        let retry = &self.group.retry;
        let mut closed = self.group.closed.clone();
        let (mut failures, mut held) = (1u32, Duration::ZERO);
        loop {
            let wait = retry.copy_backoff(failures);
            held += wait;
            if matches!(last, Failure::Closed)
                || self.group.is_closed()
                || !self.channel.status().connected()
                || held > retry.hold_limit()
            {
                return Err(last);
            }
            tracing::warn!(
                topic = %self.group.topic, group = %self.group.group, failures, retry_in = ?wait, error = %last,
                "a retry or dead-letter copy was refused; the delivery is held and the copy sent again"
            );
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = closed.wait_for(|c| *c) => return Err(last),
            }
            match self.group.send(copy, &self.message.body).await {
                Ok(()) => return Ok(()),
                Err(f) => last = f,
            }
            failures = failures.saturating_add(1);
        }
    }

    /// After its dead letter failed for the `failures`-th time in a row:
    /// parks the event in a delay bucket for the backoff, with the same
    /// attempt number, so it is handled (and dead-lettered) again then.
    async fn park(&mut self, failures: u32) -> Result<(), SettleError> {
        let delay = self.group.retry.copy_backoff(failures);
        let properties = headers::for_retry(&self.message.properties, self.message.attempt, failures);
        let copy = self.group.retry_copy(delay, properties);
        match self.send_patiently(&copy).await {
            Ok(()) => self.ack_original().await,
            Err(failure) => {
                self.requeue_original().await;
                Err(self.settle_failure(failure, SettleErrorKind::DeadLetterPublish))
            }
        }
    }
}

#[async_trait]
impl Acknowledge for RabbitAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), SettleError> {
        self.ack_original().await
    }

    async fn nack(mut self: Box<Self>, retry_after: Duration) -> Result<(), SettleError> {
        let next = self.message.attempt.saturating_add(1);
        let properties = headers::for_retry(&self.message.properties, next, 0);
        let copy = self.group.retry_copy(retry_after, properties);
        if let Err(failure) = self.send_patiently(&copy).await {
            self.requeue_original().await;
            return Err(self.settle_failure(failure, SettleErrorKind::Other));
        }
        self.ack_original().await
    }

    async fn release(mut self: Box<Self>) -> Result<(), SettleError> {
        // A copy with the same attempt number: the broker's own requeue
        // would come back marked redelivered, which counts as an attempt
        // (and, on a quorum queue, in its delivery count).
        let failures = headers::copy_failures(&self.message.properties);
        let properties = headers::for_retry(&self.message.properties, self.message.attempt, failures);
        let copy = self.group.retry_copy(Duration::ZERO, properties);
        if let Err(failure) = self.group.send(&copy, &self.message.body).await {
            // The consumer is going away: back at once, as an attempt.
            self.requeue_original().await;
            return Err(self.settle_failure(failure, SettleErrorKind::Other));
        }
        self.ack_original().await
    }

    async fn dead_letter(mut self: Box<Self>, letter: DeadLetter) -> Result<(), SettleError> {
        let dlq = letter.dead_letter_topic();
        let sent = match topology::exchange_name(&dlq) {
            Ok(exchange) => {
                let copy = Copy::DeadLetter {
                    exchange,
                    routing_key: self.message.routing_key.clone(),
                    properties: headers::for_dead_letter(&self.message.properties, &letter),
                };
                self.group
                    .send(&copy, &self.message.body)
                    .await
                    .map_err(|f| self.settle_failure(f, SettleErrorKind::DeadLetterPublish))
            }
            Err(e) => Err(self.error(SettleErrorKind::DeadLetterPublish).with_source(e)),
        };
        let Err(e) = sent else {
            return self.ack_original().await;
        };
        // Not in the DLQ: the event comes back, later each time, since a
        // DLQ that refuses one letter refuses the next one at once.
        let failures = headers::copy_failures(&self.message.properties).saturating_add(1);
        tracing::warn!(
            topic = %self.group.topic, group = %self.group.group, dlq, failures,
            retry_in = ?self.group.retry.copy_backoff(failures), error = %e,
            "dead letter not published; the event comes back after a backoff"
        );
        if let Err(parking) = self.park(failures).await {
            tracing::warn!(
                topic = %self.group.topic, group = %self.group.group, error = %parking,
                "parking an event whose dead letter failed went wrong; the broker redelivers it"
            );
        }
        Err(e)
    }
}

impl Drop for RabbitAcker {
    fn drop(&mut self) {
        let Some(acker) = self.acker.take() else { return };
        // Undecided: hand it back now rather than when the channel closes,
        // which may be much later. The task keeps the channel open until the
        // nack is sent. Without a runtime (process exit) the channel's close
        // requeues it.
        let channel = self.channel.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let limit = self.group.operation_timeout;
            rt.spawn(async move {
                let nack = acker.nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                });
                let _ = tokio::time::timeout(limit, nack).await;
                drop(channel);
            });
        }
    }
}
