//! Exchanges and queues: a durable topic exchange per topic, a durable
//! queue per (topic, group) bound with `#`, and the same for the group's
//! dead-letter topic; the group's retry queues (delay buckets, see
//! [`retry`](crate::retry)) are declared when first used. Every
//! declaration is idempotent.

use std::collections::HashSet;
use std::sync::Mutex;

use busline_core::dead_letter_topic;
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::config::QueueType;
use crate::connection::{Link, LinkError, Live};
use crate::retry::{self, Bucket};

/// Why a topology could not be declared.
#[derive(Debug)]
pub(crate) enum TopologyError {
    /// A name the broker cannot take (too long, reserved).
    InvalidName(String),
    /// No connection.
    Link(LinkError),
    /// The broker refused a declaration (e.g. a queue of another type
    /// exists) or the channel failed.
    Broker(lapin::Error),
    /// A group queue exists with other arguments than this configuration
    /// declares (`PRECONDITION_FAILED`), typically another queue type.
    Mismatch {
        queue: String,
        queue_type: QueueType,
        broker: String,
    },
}

impl std::fmt::Display for TopologyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TopologyError::InvalidName(n) => write!(f, "invalid name: {n}"),
            TopologyError::Link(e) => e.fmt(f),
            TopologyError::Broker(e) => write!(f, "declaration refused: {e}"),
            TopologyError::Mismatch {
                queue,
                queue_type,
                broker,
            } => write!(
                f,
                "queue `{queue}` exists with other arguments than `[rabbitmq] queue_type = \"{}\"` declares \
                 (the broker said: {broker}); set `queue_type` to the type the queue was made with \
                 (groups made before quorum became the default are \"classic\"), \
                 or delete the queue (with its messages) or use a new group",
                queue_type.as_str()
            ),
        }
    }
}

impl std::error::Error for TopologyError {}

/// The exchange of `topic`: the topic's own name, so plain AMQP clients
/// publish to it by name.
pub(crate) fn exchange_name(topic: &str) -> Result<ShortString, TopologyError> {
    if topic.is_empty() || topic.starts_with("amq.") {
        return Err(TopologyError::InvalidName(format!(
            "topic `{topic}` (empty, or in the broker's reserved `amq.` namespace)"
        )));
    }
    ShortString::try_new(topic)
        .map_err(|_| TopologyError::InvalidName(format!("topic `{topic}` is longer than 255 bytes")))
}

/// The queue of `group` on `topic`: `<topic>::<group>`. Topics contain
/// dots, so the separator is one a dotted name cannot fake as easily.
pub(crate) fn queue_name(topic: &str, group: &str) -> Result<ShortString, TopologyError> {
    if group.is_empty() {
        return Err(TopologyError::InvalidName("empty group".into()));
    }
    named(format!("{topic}::{group}"))
}

/// The prefix of the retry queues of `group` on `topic`,
/// `<topic>::<group>::retry`, checked to leave room for the longest bucket
/// suffix.
pub(crate) fn retry_queue_name(topic: &str, group: &str) -> Result<ShortString, TopologyError> {
    let prefix = named(format!("{topic}::{group}::retry"))?;
    let longest = prefix.as_str().len() + retry::LONGEST_SUFFIX;
    if longest > 255 {
        return Err(TopologyError::InvalidName(format!(
            "the retry queues `{prefix}.<ttl>ms` are longer than 255 bytes"
        )));
    }
    Ok(prefix)
}

/// The parking queue of `group` on `topic`: `<topic>::<group>::unparseable`,
/// where a quorum group queue moves a message past its delivery limit.
pub(crate) fn unparseable_queue_name(topic: &str, group: &str) -> Result<ShortString, TopologyError> {
    named(format!("{topic}::{group}::unparseable"))
}

fn named(name: String) -> Result<ShortString, TopologyError> {
    if name.starts_with("amq.") {
        return Err(TopologyError::InvalidName(format!(
            "`{name}` is reserved by the broker"
        )));
    }
    ShortString::try_new(name.as_str())
        .map_err(|_| TopologyError::InvalidName(format!("`{name}` is longer than 255 bytes")))
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Declares what this process has used, once per connection generation.
pub(crate) struct Topology {
    queue_type: QueueType,
    /// `x-delivery-limit` of quorum group queues.
    delivery_limit: u32,
    /// (generation, exchanges declared on it).
    exchanges: Mutex<(u64, HashSet<String>)>,
    /// (generation, (topic, group) pairs provisioned on it).
    groups: Mutex<(u64, HashSet<(String, String)>)>,
    /// (generation, retry buckets declared on it).
    buckets: Mutex<(u64, HashSet<ShortString>)>,
}

impl Topology {
    pub(crate) fn new(queue_type: QueueType) -> Self {
        Self {
            queue_type,
            delivery_limit: crate::config::DELIVERY_LIMIT_MARGIN
                + busline_core::RetryPolicy::default().max_attempts,
            exchanges: Mutex::default(),
            groups: Mutex::default(),
            buckets: Mutex::default(),
        }
    }

    /// Sets the `x-delivery-limit` of quorum group queues.
    pub(crate) fn with_delivery_limit(mut self, limit: u32) -> Self {
        self.delivery_limit = limit.max(1);
        self
    }

    fn seen<T: std::hash::Hash + Eq>(cache: &Mutex<(u64, HashSet<T>)>, generation: u64, item: &T) -> bool {
        let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
        if c.0 != generation {
            // A new connection may be to a broker that lost its state:
            // declare again.
            *c = (generation, HashSet::new());
        }
        c.1.contains(item)
    }

    fn remember<T: std::hash::Hash + Eq>(cache: &Mutex<(u64, HashSet<T>)>, generation: u64, item: T) {
        let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
        if c.0 == generation {
            c.1.insert(item);
        }
    }

    /// Forgets a declared exchange (the broker said it does not exist).
    pub(crate) fn forget_exchange(&self, topic: &str) {
        self.exchanges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .remove(topic);
    }

    /// Forgets that `group` on `topic` was provisioned (a queue of it was
    /// found missing), so the next `provision` declares it again.
    pub(crate) fn forget_group(&self, topic: &str, group: &str) {
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .remove(&(topic.to_owned(), group.to_owned()));
    }

    /// Forgets a declared retry bucket (a copy sent to it was returned).
    pub(crate) fn forget_bucket(&self, bucket: &Bucket) {
        self.buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .remove(&bucket.name);
    }

    /// Makes sure a retry bucket exists before a copy is sent to it.
    pub(crate) async fn ensure_bucket(&self, link: &Link, bucket: &Bucket) -> Result<(), TopologyError> {
        let live = link.connection().await.map_err(TopologyError::Link)?;
        if Self::seen(&self.buckets, live.generation, &bucket.name) {
            return Ok(());
        }
        let channel = live
            .connection
            .create_channel()
            .await
            .map_err(TopologyError::Broker)?;
        let result = retry::declare_bucket(&channel, self.queue_type, bucket).await;
        let _ = channel.close(200, "declared".into()).await;
        result.map_err(TopologyError::Broker)?;
        Self::remember(&self.buckets, live.generation, bucket.name.clone());
        Ok(())
    }

    /// Makes sure the exchange of `topic` exists before publishing to it.
    pub(crate) async fn ensure_exchange(&self, link: &Link, topic: &str) -> Result<(), TopologyError> {
        let name = exchange_name(topic)?;
        let live = link.connection().await.map_err(TopologyError::Link)?;
        if Self::seen(&self.exchanges, live.generation, &topic.to_owned()) {
            return Ok(());
        }
        let channel = live
            .connection
            .create_channel()
            .await
            .map_err(TopologyError::Broker)?;
        let result = declare_exchange(&channel, name).await;
        let _ = channel.close(200, "declared".into()).await;
        result?;
        Self::remember(&self.exchanges, live.generation, topic.to_owned());
        Ok(())
    }

    /// Declares `group` on `topic` and on its dead-letter topic.
    pub(crate) async fn provision(&self, link: &Link, topic: &str, group: &str) -> Result<(), TopologyError> {
        let key = (topic.to_owned(), group.to_owned());
        let live = link.connection().await.map_err(TopologyError::Link)?;
        if Self::seen(&self.groups, live.generation, &key) {
            return Ok(());
        }
        let channel = live
            .connection
            .create_channel()
            .await
            .map_err(TopologyError::Broker)?;
        let result = self.declare_with_dlq(&channel, topic, group).await;
        let _ = channel.close(200, "declared".into()).await;
        result?;
        Self::remember(&self.groups, live.generation, key);
        Ok(())
    }

    /// Deletes every queue `provision` and the group's retries can have made
    /// for `group` on `topic` and on its dead-letter topic (group queue,
    /// parking queue, retry buckets of every TTL `retry` can pick, and the
    /// single retry queue of older versions), and the dead-letter topic's
    /// exchange unless another group (an operator's tail of the DLQ) is
    /// still bound to it: deleting it would silently unbind that group. The
    /// topic's exchange stays: other groups are bound to it. Idempotent:
    /// RabbitMQ 3.x answers `delete-ok` for a missing queue or exchange,
    /// and a 404 from another broker is taken as "gone" too.
    pub(crate) async fn remove(
        &self,
        link: &Link,
        topic: &str,
        group: &str,
        retry: &retry::RetryTuning,
    ) -> Result<(), TopologyError> {
        let dlq = dead_letter_topic(topic, group);
        let mut queues = Vec::new();
        for t in [topic, dlq.as_str()] {
            let queue = queue_name(t, group)?;
            let prefix = retry_queue_name(t, group)?;
            queues.extend(
                retry
                    .bucket_ttls_ms()
                    .map(|ttl| Bucket::new(prefix.as_str(), ttl, &queue).name),
            );
            queues.push(prefix);
            queues.push(unparseable_queue_name(t, group)?);
            queues.push(queue);
        }
        let dlq_exchange = exchange_name(&dlq)?;
        // Forgotten before (a removal cancelled at its deadline still leaves
        // no stale entry) and after (a provision racing the deletions
        // remembered queues that are gone now).
        self.forget_removed(topic, group, &dlq, &queues);
        let live = link.connection().await.map_err(TopologyError::Link)?;
        let result = async {
            // A refusal closes its channel: each call that may be refused
            // as an answer (404, 406) gets a fresh one if the last was closed.
            let mut channel: Option<Channel> = None;
            for queue in &queues {
                let c = open(&live, &mut channel).await?;
                match c.queue_delete(queue.clone(), QueueDeleteOptions::default()).await {
                    Ok(_) => {}
                    Err(e) if reply_code(&e) == Some(404) => channel = None,
                    Err(e) => return Err(TopologyError::Broker(e)),
                }
            }
            let c = open(&live, &mut channel).await?;
            let if_unused = ExchangeDeleteOptions {
                if_unused: true,
                ..ExchangeDeleteOptions::default()
            };
            let deleted = match c.exchange_delete(dlq_exchange.clone(), if_unused).await {
                Ok(()) => Ok(()),
                Err(e) => match reply_code(&e) {
                    Some(404) => Ok(()),
                    Some(406) => {
                        tracing::debug!(exchange = %dlq_exchange, "other groups consume the dead-letter topic; its exchange stays");
                        Ok(())
                    }
                    _ => Err(TopologyError::Broker(e)),
                },
            };
            if let Some(c) = channel.filter(|c| c.status().connected()) {
                let _ = c.close(200, "removed".into()).await;
            }
            deleted
        }
        .await;
        self.forget_removed(topic, group, &dlq, &queues);
        result
    }

    fn forget_removed(&self, topic: &str, group: &str, dlq: &str, queues: &[ShortString]) {
        self.forget_group(topic, group);
        // The group on its own DLQ topic, cached when it consumed it.
        self.forget_group(dlq, group);
        self.forget_exchange(dlq);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        for q in queues {
            buckets.1.remove(q);
        }
    }

    /// Declares `group` on `topic` and its dead-letter topic on `channel`,
    /// without the cache: consumers call it on every (re)connection.
    pub(crate) async fn declare_with_dlq(
        &self,
        channel: &Channel,
        topic: &str,
        group: &str,
    ) -> Result<(), TopologyError> {
        let dlq = dead_letter_topic(topic, group);
        self.declare_group(channel, &dlq, group).await?;
        self.declare_group(channel, topic, group).await
    }

    /// Exchange and group queue (bound with `#`).
    async fn declare_group(&self, channel: &Channel, topic: &str, group: &str) -> Result<(), TopologyError> {
        let exchange = exchange_name(topic)?;
        let queue = queue_name(topic, group)?;
        // Checked here too, so a group whose retry queues cannot be named
        // is refused when it subscribes, not at its first retry.
        retry_queue_name(topic, group)?;
        declare_exchange(channel, exchange.clone()).await?;
        self.declare_group_queue(channel, topic, group, &queue).await?;
        channel
            .queue_bind(
                queue.clone(),
                exchange,
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(TopologyError::Broker)?;

        Ok(())
    }
}

impl Topology {
    /// The group's own queue, and on quorum queues its parking queue.
    ///
    /// Quorum: after `delivery_limit` deliveries taken back unsettled the
    /// broker dead-letters a message (at least once) through the default
    /// exchange into `<topic>::<group>::unparseable`. That is how a message
    /// lapin cannot parse leaves the queue: every delivery of it drops the
    /// consumer's connection, which the broker counts. It goes to a queue
    /// busline never consumes, not to the group's DLQ, whose consumers
    /// would die on it in turn.
    ///
    /// Classic: no delivery limit exists; a message the broker gives up on
    /// (a reject without requeue by another client) goes to the group's
    /// DLQ topic, as it always did, so classic queues made by earlier
    /// versions are redeclared unchanged.
    async fn declare_group_queue(
        &self,
        channel: &Channel,
        topic: &str,
        group: &str,
        queue: &ShortString,
    ) -> Result<(), TopologyError> {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), text(self.queue_type.as_str()));
        let parking = match self.queue_type {
            QueueType::Classic => {
                args.insert(
                    "x-dead-letter-exchange".into(),
                    text(&dead_letter_topic(topic, group)),
                );
                None
            }
            QueueType::Quorum => {
                let parking = unparseable_queue_name(topic, group)?;
                args.insert(
                    "x-delivery-limit".into(),
                    AMQPValue::LongLongInt(i64::from(self.delivery_limit)),
                );
                args.insert("x-dead-letter-exchange".into(), text(""));
                args.insert("x-dead-letter-routing-key".into(), text(parking.as_str()));
                // At-least-once dead-lettering needs reject-publish; without
                // a length limit it never rejects anything.
                args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
                args.insert("x-overflow".into(), text("reject-publish"));
                Some(parking)
            }
        };
        channel
            .queue_declare(queue.clone(), QueueDeclareOptions::durable(), args)
            .await
            .map_err(|e| match e.kind() {
                lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406 => TopologyError::Mismatch {
                    queue: queue.to_string(),
                    queue_type: self.queue_type,
                    broker: amqp.to_string(),
                },
                _ => TopologyError::Broker(e),
            })?;
        if let Some(parking) = parking {
            let mut args = FieldTable::default();
            args.insert("x-queue-type".into(), text(self.queue_type.as_str()));
            channel
                .queue_declare(parking, QueueDeclareOptions::durable(), args)
                .await
                .map_err(TopologyError::Broker)?;
        }
        Ok(())
    }
}

/// `channel` if it is still open, else a new one on `live`.
async fn open(live: &Live, channel: &mut Option<Channel>) -> Result<Channel, TopologyError> {
    if let Some(c) = channel.as_ref().filter(|c| c.status().connected()) {
        return Ok(c.clone());
    }
    let c = live
        .connection
        .create_channel()
        .await
        .map_err(TopologyError::Broker)?;
    *channel = Some(c.clone());
    Ok(c)
}

/// The AMQP reply code of a refusal by the broker.
fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

async fn declare_exchange(channel: &Channel, name: ShortString) -> Result<(), TopologyError> {
    channel
        .exchange_declare(
            name,
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(TopologyError::Broker)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(exchange_name("orders").unwrap().as_str(), "orders");
        assert_eq!(
            queue_name("orders.eu", "billing").unwrap().as_str(),
            "orders.eu::billing"
        );
        assert_eq!(
            retry_queue_name("orders", "billing").unwrap().as_str(),
            "orders::billing::retry"
        );
        assert_eq!(
            unparseable_queue_name("orders", "billing").unwrap().as_str(),
            "orders::billing::unparseable"
        );
        assert!(exchange_name("").is_err());
        assert!(exchange_name("amq.topic").is_err());
        assert!(queue_name("orders", "").is_err());
        assert!(queue_name(&"x".repeat(300), "g").is_err());
        let room = 255 - "::g::retry".len() - retry::LONGEST_SUFFIX;
        assert!(retry_queue_name(&"x".repeat(room), "g").is_ok());
        assert!(retry_queue_name(&"x".repeat(room + 1), "g").is_err());
    }
}
