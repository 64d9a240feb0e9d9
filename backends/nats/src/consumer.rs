//! One group member: pulls from the group's durable consumer, at most
//! `max_in_flight` deliveries unsettled, and pulls again after any error
//! (a server restart, a lost connection, a recreated consumer) without
//! ending the subscription. After a reconnect it pulls one message per
//! request for a while (see [`crate::reconnect`]). Only `remove_group` on
//! the same connection ends it with an error: pulling again would declare
//! the removed group anew.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, PullConsumer};
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::Message;
use busline_core::{BoxError, ConsumeError, ConsumeErrorKind, Delivery, StartFrom};
use futures::{FutureExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::acker::{NatsAcker, Received};
use crate::headers;
use crate::keepalive::Keepalive;
use crate::naming::TopicNames;
use crate::reconnect::WireState;
use crate::shared::Shared;

pub(crate) struct Member {
    pub(crate) shared: Arc<Shared>,
    pub(crate) consumer: PullConsumer,
    pub(crate) names: TopicNames,
    pub(crate) topic: Arc<str>,
    pub(crate) group: Arc<str>,
    pub(crate) start: StartFrom,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) batch: usize,
    pub(crate) keepalive: Arc<Keepalive>,
    /// The group's token on this connection: cancelled by shutdown and by
    /// `remove_group`.
    pub(crate) closed: CancellationToken,
    messages: Option<(pull::Stream, WireState)>,
    stream_name: Arc<str>,
    group_key: Arc<str>,
    ended: bool,
    /// Wakes a member waiting for messages to look at the connection:
    /// after a reconnect, the stream pulled before it is replaced.
    reconnected: tokio::sync::watch::Receiver<u64>,
}

const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How long a message given back waits on the server before it is offered
/// again (see [`Member::give_back`]).
pub(crate) const GIVE_BACK_DELAY: Duration = Duration::from_millis(200);

impl Member {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        shared: Arc<Shared>,
        consumer: PullConsumer,
        names: TopicNames,
        topic: &str,
        group: &str,
        start: StartFrom,
        max_in_flight: usize,
        (group_key, life): (String, CancellationToken),
    ) -> Self {
        let config = &shared.config;
        let keepalive = Keepalive::start(shared.client.clone(), config.ack_wait, shared.closed.clone());
        let reconnected = shared.wire.subscribe(&shared.client, &shared.closed);
        Self {
            reconnected,
            batch: max_in_flight.clamp(1, config.fetch_batch.max(1)),
            permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
            stream_name: names.stream.as_str().into(),
            group_key: group_key.into(),
            ended: false,
            closed: life,
            shared,
            consumer,
            names,
            topic: topic.into(),
            group: group.into(),
            start,
            keepalive,
            messages: None,
        }
    }

    /// The next delivery; `None` once the connection is shut down, and
    /// once after an error saying so when the group was removed.
    pub(crate) async fn next(&mut self) -> Option<Result<Delivery, ConsumeError>> {
        if self.ended {
            return None;
        }
        if let Some(delivery) = self.next_delivery().await {
            return Some(Ok(delivery));
        }
        self.ended = true;
        (!self.shared.is_closed()).then(|| {
            Err(
                ConsumeError::new(ConsumeErrorKind::Other, &*self.topic).with_source(format!(
                    "group `{}` was removed on this connection (remove_group)",
                    self.group
                )),
            )
        })
    }

    async fn next_delivery(&mut self) -> Option<Delivery> {
        let permit = tokio::select! {
            biased;
            _ = self.closed.cancelled() => return None,
            p = self.permits.clone().acquire_owned() => p.ok()?,
        };
        let mut backoff = Duration::from_millis(50);
        loop {
            // A poison redelivered after ack_wait comes with whatever else
            // is due; pulling it alone keeps the rest from dying with the
            // connection again. Three ack_waits outlast its next return.
            let wire = self
                .shared
                .wire
                .state(&self.shared.client, self.shared.config.ack_wait * 3);
            if self.messages.as_ref().is_some_and(|(_, seen)| *seen != wire) {
                self.give_back();
            }
            if self.messages.is_none() {
                let batch = if wire.careful { 1 } else { self.batch };
                match self.open(batch).await {
                    Ok(messages) => self.messages = Some((messages, wire)),
                    Err(e) => {
                        tracing::warn!(topic = %self.topic, group = %self.group, error = %e, "cannot pull; retrying");
                        self.pause(&mut backoff).await?;
                        continue;
                    }
                }
            }
            let (messages, _) = self.messages.as_mut()?;
            let next = tokio::select! {
                biased;
                _ = self.closed.cancelled() => return None,
                next = messages.next() => next,
                _ = self.reconnected.changed() => continue,
            };
            match next {
                Some(Ok(message)) => return Some(self.deliver(message, permit)),
                Some(Err(e)) => {
                    // Missed heartbeats, a failed pull request, a deleted
                    // consumer: pull afresh (re-declaring if needed).
                    tracing::debug!(topic = %self.topic, group = %self.group, error = %e, "pull stream failed; pulling again");
                    self.messages = None;
                    self.pause(&mut backoff).await?;
                }
                None => self.messages = None,
            }
        }
    }

    async fn pause(&self, backoff: &mut Duration) -> Option<()> {
        tokio::select! {
            biased;
            _ = self.closed.cancelled() => return None,
            _ = tokio::time::sleep(*backoff) => {}
        }
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
        Some(())
    }

    /// Ends the current pull stream, returning what it holds but has not
    /// handed out, so it is redelivered soon rather than after ack_wait.
    fn give_back(&mut self) {
        let Some((mut messages, _)) = self.messages.take() else {
            return;
        };
        let mut held = Vec::new();
        while let Some(Some(Ok(message))) = messages.next().now_or_never() {
            held.push(message);
        }
        // The stream's pull request stays on the server until it expires;
        // dropping the stream only unsubscribes its inbox, from a task of
        // its own. Naked without a delay at a router's shutdown, the given
        // back messages were seen coming again wrongly (scenario 13, 5 of 37
        // runs): one stream sequence handed to the next member twice at once
        // (delivery counts 2 and 1), another only after ack_wait. Our reading:
        // the server offered them to that old request while its inbox still
        // had interest. The delay lets the unsubscribe reach the server
        // first; it offers messages only to requests whose inbox has
        // interest.
        drop(messages);
        for message in held {
            self.shared.spawn_settle(async move {
                let _ = message.ack_with(AckKind::Nak(Some(GIVE_BACK_DELAY))).await;
            });
        }
    }

    async fn open(&mut self, batch: usize) -> Result<pull::Stream, BoxError> {
        match self.pull(batch).await {
            Ok(messages) => Ok(messages),
            Err(first) => {
                // The consumer (or its stream) may be gone, e.g. memory
                // storage after a server restart: declare it again.
                tracing::debug!(error = %first, "pull failed; re-declaring the consumer");
                self.shared.topology.forget(&self.names.stream);
                let (_, consumer) = self
                    .shared
                    .topology
                    .provision(&self.topic, &self.group, self.start)
                    .await
                    .map_err(BoxError::from)?;
                self.consumer = consumer;
                Ok(self.pull(batch).await?)
            }
        }
    }

    async fn pull(&self, batch: usize) -> Result<pull::Stream, async_nats::jetstream::consumer::StreamError> {
        let c = &self.shared.config;
        self.consumer
            .stream()
            .max_messages_per_batch(batch)
            .expires(c.fetch_expires)
            .heartbeat(c.heartbeat)
            .messages()
            .await
    }

    fn deliver(&self, message: Message, permit: OwnedSemaphorePermit) -> Delivery {
        let (attempt, stream_sequence) = message
            .info()
            .map(|i| (u32::try_from(i.delivered).unwrap_or(u32::MAX), i.stream_sequence))
            .unwrap_or((1, 0));
        let attempt = self
            .shared
            .attempts
            .attempt(&self.group_key, stream_sequence, attempt);
        let message = message.message;
        let event = headers::decode(message.headers.as_ref(), message.payload.clone());
        let as_received = event
            .is_err()
            .then(|| headers::received(message.headers.as_ref(), message.payload.clone()));
        let received = Received {
            reply: message.reply.unwrap_or_else(|| "".into()),
            subject: message.subject,
            headers: message.headers,
            payload: message.payload,
            topic: self.topic.clone(),
            stream: self.stream_name.clone(),
            group_key: self.group_key.clone(),
            prefix_len: self.names.token.len() + 1,
            stream_sequence,
            attempt,
        };
        let acker = NatsAcker::new(received, self.shared.clone(), self.keepalive.clone(), permit);
        let delivery = Delivery::new(
            event,
            attempt,
            self.topic.clone(),
            self.group.clone(),
            Box::new(acker),
        );
        match as_received {
            Some(message) => delivery.with_received(message),
            None => delivery,
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        // Messages already pulled into this client but not handed out would
        // otherwise wait for ack_wait on the server: give them back now.
        self.give_back();
    }
}
