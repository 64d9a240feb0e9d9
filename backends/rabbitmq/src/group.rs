//! What the deliveries of one subscription share, and how their copies
//! (retries, releases, dead letters) reach the broker.
//!
//! Copies are published `mandatory`: a retry or dead-letter queue that an
//! operator deleted makes the broker return the copy (and still confirm
//! it), which would otherwise drop it silently and let the original be
//! acked. A returned copy redeclares what it was meant for (the group's
//! topology, or its delay bucket) and is sent once more.

use std::sync::Arc;
use std::time::Duration;

use lapin::types::ShortString;
use lapin::BasicProperties;
use tokio::sync::watch;

use crate::connection::Link;
use crate::publisher::{Failure, Outgoing, Publisher};
use crate::retry::{Bucket, RetryTuning};
use crate::topology::Topology;

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

/// A copy of a received message (whose body it shares) to publish.
pub(crate) enum Copy {
    /// Into the group's own queue (no bucket) or into a delay bucket,
    /// through the default exchange: straight into this group's queues,
    /// not to the other groups of the topic.
    Group {
        bucket: Option<Bucket>,
        properties: BasicProperties,
    },
    /// Into the exchange of the group's dead-letter topic.
    DeadLetter {
        exchange: ShortString,
        routing_key: ShortString,
        properties: BasicProperties,
    },
}

impl GroupContext {
    /// The bucket a retry delayed by `delay` (> 0) waits in.
    pub(crate) fn bucket(&self, delay: Duration) -> Bucket {
        Bucket::new(
            self.retry_queue.as_str(),
            self.retry.bucket_ttl_ms(delay),
            &self.queue,
        )
    }

    /// The retry copy of a message into this group's queues: its own queue
    /// when `delay` is zero, the bucket of `delay` otherwise.
    pub(crate) fn retry_copy(&self, delay: Duration, properties: BasicProperties) -> Copy {
        Copy::Group {
            bucket: (!delay.is_zero()).then(|| self.bucket(delay)),
            properties,
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Publishes `copy` (with `body`) and waits for its confirmation.
    pub(crate) async fn send(&self, copy: &Copy, body: &[u8]) -> Result<(), Failure> {
        match copy {
            Copy::Group { bucket, properties } => {
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
            Copy::DeadLetter {
                exchange,
                routing_key,
                properties,
            } => {
                self.publish_copy(Missing::Group, || Outgoing {
                    exchange: exchange.clone(),
                    routing_key: routing_key.clone(),
                    properties: properties.clone(),
                    body,
                    mandatory: true,
                })
                .await
            }
        }
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

    /// Publishes a copy, mandatory. When the broker returns it or the
    /// exchange is gone, what it was meant for is declared again and the
    /// copy is sent once more.
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
