//! Streams and durable consumers, declared idempotently: a stream per topic
//! capturing `<token>.>`, a durable pull consumer per (topic, group), and the
//! same for the group's dead-letter topic; and their removal.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, FromConsumer, PullConsumer};
use async_nats::jetstream::context::DeleteStreamErrorKind;
use async_nats::jetstream::stream::{self, ConsumerErrorKind, RetentionPolicy, StorageType};
use async_nats::jetstream::{Context, ErrorCode};
use busline_core::{dead_letter_topic, BoxError, StartFrom};
use futures::TryStreamExt;

use crate::config::{NatsConfig, Retention, Storage};
use crate::naming::{consumer_name, TopicNames};

/// Why a declaration failed.
#[derive(Debug)]
pub(crate) enum TopologyError {
    /// The topic or group cannot be named on NATS (it is empty).
    InvalidName,
    /// The server refused or did not answer.
    Server(BoxError),
}

impl From<TopologyError> for BoxError {
    fn from(e: TopologyError) -> Self {
        match e {
            TopologyError::InvalidName => "empty topic or group name".into(),
            TopologyError::Server(e) => e,
        }
    }
}

/// Dead-letter levels below a topic that [`Topology::remove`] looks at: the
/// group's DLQ, and the DLQs a member of the group subscribed to its own DLQ
/// leaves (`<topic>.<group>.dlq.<group>.dlq`, ...). Deeper chains are not
/// made by anything busline does.
const DEAD_LETTER_LEVELS: usize = 4;

/// What deleting one consumer found.
#[derive(Debug, PartialEq, Eq)]
enum Deleted {
    /// The consumer was there, or was not: either way it is gone now.
    Consumer,
    /// The stream itself is not there.
    NoStream,
}

/// One connection's view of the topology, with the streams it already
/// declared remembered, so publishing costs no API call after the first.
pub(crate) struct Topology {
    js: Context,
    config: Arc<NatsConfig>,
    declared: Mutex<HashSet<String>>,
}

impl Topology {
    pub(crate) fn new(js: Context, config: Arc<NatsConfig>) -> Self {
        Self {
            js,
            config,
            declared: Mutex::default(),
        }
    }

    pub(crate) fn names(topic: &str) -> Result<TopicNames, TopologyError> {
        TopicNames::of(topic).ok_or(TopologyError::InvalidName)
    }

    fn is_declared(&self, stream: &str) -> bool {
        self.declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(stream)
    }

    /// Forgets that `stream` was declared (it was deleted under us).
    pub(crate) fn forget(&self, stream: &str) {
        self.declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(stream);
    }

    /// The streams this connection declared.
    pub(crate) fn declared(&self) -> Vec<String> {
        self.declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Makes sure the stream of `topic` exists, once per connection.
    pub(crate) async fn ensure_stream(&self, topic: &str) -> Result<TopicNames, TopologyError> {
        let names = Self::names(topic)?;
        if !self.is_declared(&names.stream) {
            self.declare_stream(&names).await?;
        }
        Ok(names)
    }

    async fn declare_stream(&self, names: &TopicNames) -> Result<stream::Stream, TopologyError> {
        let c = &self.config;
        let wanted = stream::Config {
            name: names.stream.clone(),
            subjects: vec![names.wildcard()],
            storage: match c.storage {
                Storage::File => StorageType::File,
                Storage::Memory => StorageType::Memory,
            },
            retention: match c.retention {
                Retention::Limits => RetentionPolicy::Limits,
                Retention::Interest => RetentionPolicy::Interest,
            },
            num_replicas: c.replicas.max(1),
            max_age: c.max_age,
            // The server refuses a duplicate window longer than the age limit.
            duplicate_window: if c.max_age.is_zero() {
                c.duplicate_window
            } else {
                c.duplicate_window.min(c.max_age)
            },
            ..Default::default()
        };
        let server = |e: &dyn std::fmt::Display| TopologyError::Server(e.to_string().into());
        let mut handle = self
            .js
            .get_or_create_stream(wanted.clone())
            .await
            .map_err(|e| server(&e))?;
        let have = &handle.cached_info().config;
        if have.subjects != wanted.subjects {
            return Err(server(&format!(
                "stream {} exists with subjects {:?}, not {:?}",
                wanted.name, have.subjects, wanted.subjects
            )));
        }
        if have.max_age != wanted.max_age || have.duplicate_window != wanted.duplicate_window {
            // Tuning changed since the stream was made; storage and retention
            // cannot change on a live stream, so only these are updated.
            let mut update = have.clone();
            update.max_age = wanted.max_age;
            update.duplicate_window = wanted.duplicate_window;
            if let Err(e) = self.js.update_stream(update).await {
                tracing::warn!(stream = %wanted.name, error = %e, "cannot update stream limits");
            }
            handle = self.js.get_stream(&wanted.name).await.map_err(|e| server(&e))?;
        }
        self.declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(names.stream.clone());
        Ok(handle)
    }

    /// Declares the stream of `topic` and the durable consumer of `group`
    /// on it, and the same for `<topic>.<group>.dlq`, so dead letters are
    /// kept before anyone reads them. Returns the group's consumer.
    pub(crate) async fn provision(
        &self,
        topic: &str,
        group: &str,
        start: StartFrom,
    ) -> Result<(TopicNames, PullConsumer), TopologyError> {
        let main = self.consumer(topic, group, start).await?;
        // Every dead letter must be kept, so the DLQ group starts at the
        // beginning of its stream.
        self.consumer(&dead_letter_topic(topic, group), group, StartFrom::Earliest)
            .await?;
        Ok(main)
    }

    async fn consumer(
        &self,
        topic: &str,
        group: &str,
        start: StartFrom,
    ) -> Result<(TopicNames, PullConsumer), TopologyError> {
        let names = Self::names(topic)?;
        let durable = consumer_name(group).ok_or(TopologyError::InvalidName)?;
        let stream = self.declare_stream(&names).await?;
        let c = &self.config;
        let config = pull::Config {
            durable_name: Some(durable.clone()),
            filter_subject: names.wildcard(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: c.ack_wait,
            max_deliver: c.max_deliver,
            max_ack_pending: c.max_ack_pending,
            deliver_policy: match start {
                StartFrom::New => DeliverPolicy::New,
                StartFrom::Earliest => DeliverPolicy::All,
            },
            ..Default::default()
        };
        let mut last = None;
        // Two members creating the same durable at once: one creates, the
        // other's create may fail; a second look finds it.
        for _ in 0..3 {
            match stream.get_or_create_consumer(&durable, config.clone()).await {
                Ok(consumer) => return Ok((names, self.keep_limits(&stream, consumer, config).await)),
                Err(e) => last = Some(e.to_string()),
            }
        }
        Err(TopologyError::Server(last.unwrap_or_default().into()))
    }

    /// A durable made under an older `max_deliver` (such as the former
    /// unlimited default, under which a message the client cannot parse
    /// never leaves) gets this connection's.
    async fn keep_limits(
        &self,
        stream: &stream::Stream,
        consumer: PullConsumer,
        wanted: pull::Config,
    ) -> PullConsumer {
        let have = consumer.cached_info().config.max_deliver;
        if have == wanted.max_deliver {
            return consumer;
        }
        let mut update = match <pull::Config as FromConsumer>::try_from_consumer_config(
            consumer.cached_info().config.clone(),
        ) {
            Ok(c) => c,
            Err(_) => return consumer,
        };
        update.max_deliver = wanted.max_deliver;
        match stream.update_consumer(update).await {
            Ok(updated) => {
                tracing::info!(consumer = ?wanted.durable_name, from = have, to = wanted.max_deliver, "updated the consumer's max_deliver");
                updated
            }
            Err(e) => {
                tracing::warn!(consumer = ?wanted.durable_name, error = %e, have, wanted = wanted.max_deliver, "cannot update the consumer's max_deliver");
                consumer
            }
        }
    }

    /// The streams that [`remove`](Self::remove) looks at for `group`:
    /// the topic's first, then one per dead-letter level.
    pub(crate) fn levels(topic: &str, group: &str) -> Result<Vec<TopicNames>, TopologyError> {
        std::iter::successors(Some(topic.to_owned()), |t| Some(dead_letter_topic(t, group)))
            .take(1 + DEAD_LETTER_LEVELS)
            .map(|t| Self::names(&t))
            .collect()
    }

    /// Deletes what [`provision`](Self::provision) made for `group` on
    /// `topic`: the group's durable on the topic's stream (the stream
    /// stays, other groups read it), and at each dead-letter level the
    /// group's durable and, when no other consumer reads it, the DLQ stream
    /// with its letters. A DLQ stream that another consumer reads stays:
    /// only its name says it is this group's, and `dead_letter_topic`
    /// names of dotted topics and groups can coincide.
    ///
    /// Each broker call has its own deadline, `request_timeout`: a client
    /// given to [`NatsBus::from_client`](crate::NatsBus::from_client) may
    /// have no request timeout of its own.
    pub(crate) async fn remove(&self, topic: &str, group: &str) -> Result<(), TopologyError> {
        let durable = consumer_name(group).ok_or(TopologyError::InvalidName)?;
        let levels = Self::levels(topic, group)?;
        let (main, dead_letters) = levels.split_first().ok_or(TopologyError::InvalidName)?;
        self.delete_consumer(&main.stream, &durable).await?;
        for names in dead_letters {
            if self.delete_consumer(&names.stream, &durable).await? == Deleted::NoStream {
                // Nothing below a missing level: a deeper DLQ is made only
                // by reading (or dead-lettering from) this one.
                break;
            }
            let readers: Vec<String> = self
                .bounded(
                    &format!("list the consumers of {}", names.stream),
                    self.js
                        .get_stream_no_info(&names.stream)
                        .await
                        .map_err(|e| TopologyError::Server(Box::new(e)))?
                        .consumer_names()
                        .try_collect(),
                )
                .await?
                .map_err(|e| TopologyError::Server(Box::new(e)))?;
            // A consumer just deleted may still be listed for a moment.
            if readers.iter().all(|r| *r == durable) {
                self.delete_stream(&names.stream).await?;
            } else {
                tracing::info!(stream = %names.stream, ?readers, "dead-letter stream has other readers; kept");
            }
        }
        Ok(())
    }

    async fn delete_consumer(&self, stream: &str, durable: &str) -> Result<Deleted, TopologyError> {
        let what = format!("delete consumer {durable} of stream {stream}");
        match self
            .bounded(&what, self.js.delete_consumer_from_stream(durable, stream))
            .await?
        {
            Ok(_) => Ok(Deleted::Consumer),
            Err(e) => match e.kind() {
                ConsumerErrorKind::JetStream(j) if j.error_code() == ErrorCode::CONSUMER_NOT_FOUND => {
                    Ok(Deleted::Consumer)
                }
                ConsumerErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                    Ok(Deleted::NoStream)
                }
                _ => Err(TopologyError::Server(format!("{what}: {e}").into())),
            },
        }
    }

    async fn delete_stream(&self, stream: &str) -> Result<(), TopologyError> {
        // Forgotten whatever the outcome: a dead letter published later
        // declares the stream again instead of going to a subject nothing
        // stores.
        self.forget(stream);
        let what = format!("delete stream {stream}");
        match self.bounded(&what, self.js.delete_stream(stream)).await? {
            Ok(_) => Ok(()),
            Err(e) => match e.kind() {
                DeleteStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                    Ok(())
                }
                _ => Err(TopologyError::Server(format!("{what}: {e}").into())),
            },
        }
    }

    /// `fut` within `request_timeout`.
    async fn bounded<T>(&self, what: &str, fut: impl Future<Output = T>) -> Result<T, TopologyError> {
        let limit = self.config.request_timeout;
        tokio::time::timeout(limit, fut)
            .await
            .map_err(|_| TopologyError::Server(format!("{what}: no reply within {limit:?}").into()))
    }
}
