//! One group member: a subscription stream that reads a consumer on the
//! group's queue and keeps one across connection losses.
//!
//! The stream polls the lapin consumer itself (no task in between, so a
//! delivery costs no extra wake-up). When the channel or connection is lost
//! it reconnects with backoff, opens a channel, sets the prefetch,
//! redeclares the topology and consumes again. Deliveries that were unacked
//! when a connection died are requeued by the broker and come again (with
//! the redelivered flag, counted as a new attempt). Dropping the stream
//! cancels the consumer; deliveries already handed out keep their channel
//! open until they are settled.

use std::sync::Arc;

use busline_core::{ConsumeError, Delivery, Subscription};
use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};

use crate::acker::{GroupContext, RabbitAcker, Received};
use crate::connection::{Link, LinkError};
use crate::headers;
use crate::topology::Topology;

pub(crate) struct Member {
    pub(crate) link: Arc<Link>,
    pub(crate) topology: Arc<Topology>,
    pub(crate) group_name: Arc<str>,
    pub(crate) group: Arc<GroupContext>,
    pub(crate) prefetch: u16,
}

/// Why the first consumer could not be started.
pub(crate) type StartError = Box<dyn std::error::Error + Send + Sync>;

struct State {
    member: Arc<Member>,
    current: Option<(Channel, Consumer)>,
}

impl Member {
    /// Starts consuming and returns the subscription once the first
    /// consumer is registered with the broker.
    pub(crate) async fn start(self) -> Result<Subscription, StartError> {
        let live = self.link.connection().await?;
        let current = self.open_bounded(&live.connection).await?;
        let state = State {
            member: Arc::new(self),
            current: Some(current),
        };
        Ok(Subscription::new(futures::stream::unfold(
            state,
            |mut state| async move {
                let delivery = state.next().await?;
                Some((Ok::<_, ConsumeError>(delivery), state))
            },
        )))
    }

    /// `open` within the operation timeout: a broker that stops answering
    /// mid-way must not wedge the member.
    async fn open_bounded(&self, connection: &lapin::Connection) -> Result<(Channel, Consumer), StartError> {
        match tokio::time::timeout(self.group.operation_timeout, self.open(connection)).await {
            Ok(opened) => opened,
            Err(_) => Err(format!(
                "opening a consumer on {} timed out after {:?}",
                self.group.queue, self.group.operation_timeout
            )
            .into()),
        }
    }

    async fn open(&self, connection: &lapin::Connection) -> Result<(Channel, Consumer), StartError> {
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await?;
        self.topology
            .declare_with_dlq(&channel, &self.group.topic, &self.group_name)
            .await?;
        let consumer = channel
            .basic_consume(
                self.group.queue.clone(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok((channel, consumer))
    }

    fn delivery(self: &Arc<Self>, channel: &Channel, d: lapin::message::Delivery) -> Delivery {
        let lapin::message::Delivery {
            routing_key,
            redelivered,
            properties,
            data,
            acker,
            ..
        } = d;
        let body = Bytes::from(data);
        let event = headers::decode(&properties, body.clone());
        let attempt = headers::attempt(&properties, redelivered);
        let received = Received {
            properties,
            body,
            routing_key,
            attempt,
        };
        Delivery::new(
            event,
            attempt,
            self.group.topic.clone(),
            self.group_name.clone(),
            Box::new(RabbitAcker::new(
                acker,
                channel.clone(),
                received,
                self.group.clone(),
            )),
        )
    }
}

impl State {
    /// The next delivery; `None` once the bus is shut down.
    async fn next(&mut self) -> Option<Delivery> {
        let mut closed = self.member.group.closed.clone();
        loop {
            if *closed.borrow() {
                // Dropping the consumer cancels it; what the broker sent
                // and nobody took goes back with the channel.
                self.current = None;
                return None;
            }
            let Some((channel, consumer)) = &mut self.current else {
                self.current = self.reconnect().await;
                continue;
            };
            let next = tokio::select! {
                biased;
                _ = closed.changed() => continue,
                next = consumer.next() => next,
            };
            match next {
                Some(Ok(d)) => return Some(self.member.delivery(channel, d)),
                Some(Err(e)) => {
                    tracing::info!(queue = %self.member.group.queue, error = %e, "consumer lost; reconnecting");
                    self.current = None;
                }
                None => {
                    tracing::info!(queue = %self.member.group.queue, "consumer cancelled; consuming again");
                    self.current = None;
                }
            }
        }
    }

    /// A new consumer, waiting through connection attempts; `None` when
    /// the bus shut down meanwhile.
    async fn reconnect(&self) -> Option<(Channel, Consumer)> {
        let member = &self.member;
        let mut closed = member.group.closed.clone();
        loop {
            let live = match member.link.connection_retrying().await {
                Ok(live) => live,
                Err(LinkError::Closed) => return None,
                Err(LinkError::Connect(_)) => continue,
            };
            match member.open_bounded(&live.connection).await {
                Ok(c) => return Some(c),
                Err(e) => {
                    tracing::warn!(queue = %member.group.queue, error = %e, "cannot resume consuming; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                        _ = closed.wait_for(|c| *c) => return None,
                    }
                }
            }
        }
    }
}
