//! Settling one RabbitMQ delivery: ack; nack by republishing a copy with
//! the next attempt number (through the retry queue when delayed) and then
//! acking the original; dead-letter by publishing an enriched copy to the
//! DLQ topic and then acking. A copy is always confirmed before the
//! original is acked, so a failure in between duplicates, never loses.
//!
//! Copies are published `mandatory`: a retry or dead-letter queue that an
//! operator deleted makes the broker return the copy (and still confirm
//! it), which would otherwise drop it silently and let the original be
//! acked. A returned copy redeclares the group's topology and is sent once
//! more; if that fails too the original goes back to the broker.

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
use crate::topology::{self, Topology};

/// What every delivery of one subscription shares.
pub(crate) struct GroupContext {
    pub(crate) topic: Arc<str>,
    pub(crate) group: Arc<str>,
    pub(crate) queue: ShortString,
    pub(crate) retry_queue: ShortString,
    pub(crate) publisher: Arc<Publisher>,
    /// Where a missing queue is redeclared from.
    pub(crate) topology: Arc<Topology>,
    pub(crate) link: Arc<Link>,
    /// Bound of every call to the broker (acks, declarations).
    pub(crate) operation_timeout: Duration,
    pub(crate) closed: watch::Receiver<bool>,
}

impl GroupContext {
    /// Publishes a retry or dead-letter copy, mandatory. When the broker
    /// returns it or the exchange is gone, the group's queues and
    /// exchanges are declared again and the copy is sent once more.
    async fn publish_copy<'a>(&self, message: impl Fn() -> Outgoing<'a>) -> Result<(), Failure> {
        match self.publisher.publish(message()).await {
            Err(Failure::Unroutable(why) | Failure::NotFound(why)) => {
                tracing::warn!(
                    topic = %self.topic, group = %self.group, reason = %why,
                    "a retry or dead-letter copy found no queue; declaring the group's queues again"
                );
                self.topology.forget_group(&self.topic, &self.group);
                tokio::time::timeout(
                    self.operation_timeout,
                    self.topology.provision(&self.link, &self.topic, &self.group),
                )
                .await
                .map_err(|_| Failure::Timeout)?
                .map_err(|e| Failure::Connection(format!("redeclaring the topology failed: {e}")))?;
                self.publisher.publish(message()).await
            }
            other => other,
        }
    }
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

    /// Gives the original back to the broker after a failed republish.
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
}

#[async_trait]
impl Acknowledge for RabbitAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), SettleError> {
        self.ack_original().await
    }

    async fn nack(mut self: Box<Self>, retry_after: Duration) -> Result<(), SettleError> {
        let next = self.message.attempt.saturating_add(1);
        let delay_ms = retry_after.as_nanos().div_ceil(1_000_000);
        let (queue, delay) = if delay_ms == 0 {
            (self.group.queue.clone(), None)
        } else {
            (
                self.group.retry_queue.clone(),
                Some(u64::try_from(delay_ms).unwrap_or(u64::MAX)),
            )
        };
        let properties = headers::for_retry(&self.message.properties, next, delay);
        let sent = self
            .group
            .publish_copy(|| Outgoing {
                // The default exchange routes by queue name: straight into
                // the group's own queue (or its retry queue), not to the
                // other groups of the topic.
                exchange: ShortString::from(""),
                routing_key: queue.clone(),
                properties: properties.clone(),
                body: &self.message.body,
                mandatory: true,
            })
            .await;
        if let Err(failure) = sent {
            self.requeue_original().await;
            return Err(self.settle_failure(failure, SettleErrorKind::Other));
        }
        self.ack_original().await
    }

    async fn dead_letter(mut self: Box<Self>, letter: DeadLetter) -> Result<(), SettleError> {
        let dlq = letter.dead_letter_topic();
        let exchange = match topology::exchange_name(&dlq) {
            Ok(e) => e,
            Err(e) => {
                self.requeue_original().await;
                return Err(self.error(SettleErrorKind::DeadLetterPublish).with_source(e));
            }
        };
        let properties = headers::for_dead_letter(&self.message.properties, &letter);
        let sent = self
            .group
            .publish_copy(|| Outgoing {
                exchange: exchange.clone(),
                routing_key: self.message.routing_key.clone(),
                properties: properties.clone(),
                body: &self.message.body,
                mandatory: true,
            })
            .await;
        if let Err(failure) = sent {
            self.requeue_original().await;
            return Err(self.settle_failure(failure, SettleErrorKind::DeadLetterPublish));
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
