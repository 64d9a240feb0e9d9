//! Settling one RabbitMQ delivery: ack; nack by republishing a copy with
//! the next attempt number (through a delay bucket when delayed, see
//! [`retry`](crate::retry)) and then acking the original; dead-letter by
//! publishing an enriched copy to the DLQ topic and then acking; release
//! by republishing a copy with the same attempt number. A copy is always
//! confirmed before the original is acked, so a failure in between
//! duplicates, never loses.
//!
//! Copies are published `mandatory`: a retry or dead-letter queue that an
//! operator deleted makes the broker return the copy (and still confirm
//! it), which would otherwise drop it silently and let the original be
//! acked. A returned copy redeclares the group's topology and is sent once
//! more.
//!
//! A copy that still fails is not handed back for immediate redelivery,
//! which would be a hot loop while the broker keeps refusing it. A failed
//! dead letter parks the event in a retry bucket for a backoff that grows
//! with each failure of the same event (counted in a header); a failed
//! retry copy, or a failed park, holds the original unacked for the
//! backoff (the asked retry delay, within the backoff bounds) before it
//! goes back to the broker.

use std::sync::Arc;
use std::time::Duration;

use busline_core::{async_trait, Acknowledge, DeadLetter, SettleError, SettleErrorKind};
use bytes::Bytes;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel};
use tokio::sync::watch;

use crate::connection::Link;
use crate::headers;
use crate::publisher::{Failure, Outgoing, Publisher};
use crate::retry::{Bucket, RetryTuning};
use crate::topology::{self, Topology};

/// What every delivery of one subscription shares.
pub(crate) struct GroupContext {
    pub(crate) topic: Arc<str>,
    pub(crate) group: Arc<str>,
    pub(crate) queue: ShortString,
    /// `<topic>::<group>::retry`, the prefix of the group's delay buckets.
    pub(crate) retry_queue: ShortString,
    pub(crate) retry: RetryTuning,
    pub(crate) publisher: Arc<Publisher>,
    /// Where a missing queue is redeclared from.
    pub(crate) topology: Arc<Topology>,
    pub(crate) link: Arc<Link>,
    /// Bound of every call to the broker (acks, declarations).
    pub(crate) operation_timeout: Duration,
    pub(crate) closed: watch::Receiver<bool>,
}

impl GroupContext {
    /// The bucket a retry delayed by `delay` (> 0) waits in.
    fn bucket(&self, delay: Duration) -> Bucket {
        Bucket::new(
            self.retry_queue.as_str(),
            self.retry.bucket_ttl_ms(delay),
            &self.queue,
        )
    }

    async fn ensure_bucket(&self, bucket: &Bucket) -> Result<(), Failure> {
        tokio::time::timeout(
            self.operation_timeout,
            self.topology.ensure_bucket(&self.link, bucket),
        )
        .await
        .map_err(|_| Failure::Timeout)?
        .map_err(|e| Failure::Connection(format!("declaring the retry queue {} failed: {e}", bucket.name)))
    }

    /// Publishes a copy into the group's own queue (no bucket) or into
    /// `bucket`, through the default exchange: straight into this group's
    /// queues, not to the other groups of the topic.
    async fn publish_to_group(
        &self,
        bucket: Option<&Bucket>,
        properties: &BasicProperties,
        body: &[u8],
    ) -> Result<(), Failure> {
        let (queue, missing) = match bucket {
            Some(b) => {
                self.ensure_bucket(b).await?;
                (&b.name, Missing::Bucket(b))
            }
            None => (&self.queue, Missing::Group),
        };
        self.publish_copy(missing, || Outgoing {
            exchange: ShortString::from(""),
            routing_key: queue.clone(),
            properties: properties.clone(),
            body,
            mandatory: true,
        })
        .await
    }

    /// Publishes a retry or dead-letter copy, mandatory. When the broker
    /// returns it or the exchange is gone, what it was meant for is
    /// declared again and the copy is sent once more.
    async fn publish_copy<'a>(
        &self,
        missing: Missing<'_>,
        message: impl Fn() -> Outgoing<'a>,
    ) -> Result<(), Failure> {
        match self.publisher.publish(message()).await {
            Err(Failure::Unroutable(why) | Failure::NotFound(why)) => {
                tracing::warn!(
                    topic = %self.topic, group = %self.group, reason = %why,
                    "a retry or dead-letter copy found no queue; declaring it again"
                );
                match missing {
                    Missing::Group => {
                        self.topology.forget_group(&self.topic, &self.group);
                        tokio::time::timeout(
                            self.operation_timeout,
                            self.topology.provision(&self.link, &self.topic, &self.group),
                        )
                        .await
                        .map_err(|_| Failure::Timeout)?
                        .map_err(|e| Failure::Connection(format!("redeclaring the topology failed: {e}")))?;
                    }
                    Missing::Bucket(b) => {
                        self.topology.forget_bucket(b);
                        self.ensure_bucket(b).await?;
                    }
                }
                self.publisher.publish(message()).await
            }
            other => other,
        }
    }
}

/// What to declare again when a copy finds no queue.
enum Missing<'b> {
    /// The group's queues and exchanges, and those of its DLQ.
    Group,
    /// A delay bucket.
    Bucket(&'b Bucket),
}

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
        let kind = if *self.group.closed.borrow() {
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

    /// Holds the original unacked for `delay` (less when the bus shuts
    /// down), then gives it back: it takes a prefetch slot meanwhile, which
    /// slows the consumer down while the broker refuses copies.
    async fn requeue_original_after(&mut self, delay: Duration) {
        if !self.channel.status().connected() {
            // Its channel is gone, so the broker has taken it back already
            // and the consumer has to reconnect first: no loop to slow down.
            self.requeue_original().await;
            return;
        }
        let mut closed = self.group.closed.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = closed.wait_for(|c| *c) => {}
        }
        self.requeue_original().await;
    }

    fn settle_failure(&self, failure: Failure, kind: SettleErrorKind) -> SettleError {
        let kind = match failure {
            Failure::Closed => SettleErrorKind::Closed,
            _ => kind,
        };
        self.error(kind).with_source(failure)
    }

    /// After its dead letter failed: parks the event in a retry bucket for
    /// the backoff of its `failures`-th failure in a row, with the same
    /// attempt number, so it is handled (and dead-lettered) again later;
    /// or, when that fails too, holds it for the backoff.
    async fn park(&mut self, failures: u32) {
        let delay = self.group.retry.copy_backoff(failures);
        let bucket = self.group.bucket(delay);
        let properties = headers::for_retry(&self.message.properties, self.message.attempt, failures);
        let parked = self
            .group
            .publish_to_group(Some(&bucket), &properties, &self.message.body)
            .await;
        let result = match parked {
            Ok(()) => self.ack_original().await.map_err(|e| e.to_string()),
            Err(e) => {
                self.requeue_original_after(delay).await;
                Err(e.to_string())
            }
        };
        match result {
            Ok(()) => {}
            Err(e) => tracing::warn!(
                topic = %self.group.topic, group = %self.group.group, failures, ?delay, error = %e,
                "parking an event whose dead letter failed went wrong; the broker redelivers it"
            ),
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
        let bucket = (!retry_after.is_zero()).then(|| self.group.bucket(retry_after));
        let properties = headers::for_retry(&self.message.properties, next, 0);
        let sent = self
            .group
            .publish_to_group(bucket.as_ref(), &properties, &self.message.body)
            .await;
        if let Err(failure) = sent {
            let hold = self.group.retry.hold_for(retry_after);
            tracing::warn!(
                topic = %self.group.topic, group = %self.group.group, ?hold, error = %failure,
                "a retry copy could not be published; the event goes back to the broker after the hold"
            );
            self.requeue_original_after(hold).await;
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
        let sent = self
            .group
            .publish_to_group(None, &properties, &self.message.body)
            .await;
        if let Err(failure) = sent {
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
                let properties = headers::for_dead_letter(&self.message.properties, &letter);
                self.group
                    .publish_copy(Missing::Group, || Outgoing {
                        exchange: exchange.clone(),
                        routing_key: self.message.routing_key.clone(),
                        properties: properties.clone(),
                        body: &self.message.body,
                        mandatory: true,
                    })
                    .await
                    .map_err(|f| self.settle_failure(f, SettleErrorKind::DeadLetterPublish))
            }
            Err(e) => Err(self.error(SettleErrorKind::DeadLetterPublish).with_source(e)),
        };
        if let Err(e) = sent {
            // Not in the DLQ: the event comes back, later each time, since
            // a DLQ that refuses one letter refuses the next one at once.
            let failures = headers::copy_failures(&self.message.properties).saturating_add(1);
            tracing::warn!(
                topic = %self.group.topic, group = %self.group.group, dlq, failures, error = %e,
                "dead letter not published; the event comes back after a backoff"
            );
            self.park(failures).await;
            return Err(e);
        }
        self.ack_original().await
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
