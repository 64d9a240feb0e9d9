//! One group member: a subscription stream that reads a consumer on the
//! group's queue, on a connection of its own, and keeps one across
//! connection losses.
//!
//! The stream polls the lapin consumer itself (no task in between, so a
//! delivery costs no extra wake-up). The connection is the member's alone:
//! lapin drops a whole connection when it cannot parse a frame, and a
//! message with a header name that is not UTF-8 must cost only the
//! consumer it was sent to, not the publisher or the other subscriptions.
//!
//! When the channel or connection is lost it waits ([`crate::losses`]),
//! reconnects, opens a channel, sets the prefetch, redeclares the topology
//! and consumes again. Deliveries that were unacked when a connection died
//! are requeued by the broker and come again (with the redelivered flag,
//! counted as a new attempt). Dropping the stream cancels the consumer;
//! deliveries already handed out keep their channel (and so the
//! connection) open until they are settled.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use busline_core::{ConsumeError, ConsumeErrorKind, Delivery, Subscription};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use tokio::time::Instant;

use crate::acker::{GroupContext, RabbitAcker, Received};
use crate::connection::{Link, LinkError, Live};
use crate::headers;
use crate::losses::{is_unparseable, LossPolicy, ParkingWatch};
use crate::stats::Counters;
use crate::topology::Topology;

pub(crate) struct Member {
    /// The member's own connection.
    pub(crate) link: Arc<Link>,
    pub(crate) topology: Arc<Topology>,
    pub(crate) group_name: Arc<str>,
    pub(crate) group: Arc<GroupContext>,
    pub(crate) prefetch: u16,
    pub(crate) losses: LossPolicy,
    /// The group's parking queue, on quorum queues.
    pub(crate) parking: Option<lapin::types::ShortString>,
    pub(crate) counters: Arc<Counters>,
}

/// Why the first consumer could not be started.
pub(crate) type StartError = Box<dyn std::error::Error + Send + Sync>;

/// Why a consumer could not be opened.
enum OpenError {
    /// The broker did not answer within the operation timeout.
    TimedOut(String),
    Failed(StartError),
}

impl From<OpenError> for StartError {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::TimedOut(why) => why.into(),
            OpenError::Failed(e) => e,
        }
    }
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::TimedOut(why) => f.write_str(why),
            OpenError::Failed(e) => e.fmt(f),
        }
    }
}

/// A consumer and what it runs on.
struct Current {
    live: Arc<Live>,
    channel: Channel,
    consumer: Consumer,
}

struct State {
    member: Arc<Member>,
    current: Option<Current>,
    /// Losses in a row with no delivery in between, and whether the last
    /// was a parse loss.
    streak: u32,
    last_unparseable: bool,
    /// Parse losses in a row with no delivery in between.
    unparseable_streak: u32,
    /// After a parse loss: deliveries still to take at prefetch 1 before
    /// the full prefetch is restored.
    careful: Option<u32>,
    /// The full prefetch is due again (on the next poll).
    restore: bool,
    /// Deliveries the prefetch-1 consumer had received when it was
    /// replaced, handed out before the new consumer's.
    pending: VecDeque<Delivery>,
    parking: Option<ParkingWatch>,
    /// The stream failed with a typed error; it ends.
    failed: bool,
}

/// What woke the stream up.
// Lives on the stack for one poll; boxing the delivery would cost an
// allocation per message.
#[allow(clippy::large_enum_variant)]
enum Event {
    Closed,
    Recheck,
    Next(Option<lapin::Result<lapin::message::Delivery>>),
}

impl Member {
    /// Starts consuming and returns the subscription once the first
    /// consumer is registered with the broker.
    pub(crate) async fn start(self) -> Result<Subscription, StartError> {
        let live = self.link.connection().await?;
        let mut parking = self.parking.clone().map(ParkingWatch::new);
        let (current, parked) = self.open_bounded(live, self.prefetch).await?;
        if let (Some(w), Some(n)) = (&mut parking, parked) {
            w.observe(n, self.group.queue.as_str(), &self.counters);
        }
        let state = State {
            member: Arc::new(self),
            current: Some(current),
            streak: 0,
            last_unparseable: false,
            unparseable_streak: 0,
            careful: None,
            restore: false,
            pending: VecDeque::new(),
            parking,
            failed: false,
        };
        Ok(Subscription::new(futures::stream::unfold(
            state,
            |mut state| async move {
                let next = state.next().await?;
                Some((next, state))
            },
        )))
    }

    /// `open` within the operation timeout: a broker that stops answering
    /// mid-way must not wedge the member.
    async fn open_bounded(
        &self,
        live: Arc<Live>,
        prefetch: u16,
    ) -> Result<(Current, Option<u32>), OpenError> {
        match tokio::time::timeout(self.group.operation_timeout, self.open(live, prefetch)).await {
            Ok(opened) => opened.map_err(OpenError::Failed),
            Err(_) => Err(OpenError::TimedOut(format!(
                "opening a consumer on {} timed out after {:?}",
                self.group.queue, self.group.operation_timeout
            ))),
        }
    }

    /// A channel with `prefetch`, the topology declared, a consumer; and
    /// the parking queue's message count on quorum queues.
    async fn open(&self, live: Arc<Live>, prefetch: u16) -> Result<(Current, Option<u32>), StartError> {
        let channel = live.connection.create_channel().await?;
        channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
        self.topology
            .declare_with_dlq(&channel, &self.group.topic, &self.group_name)
            .await?;
        let parked = match &self.parking {
            Some(queue) => Some(ParkingWatch::count(queue, &channel).await?),
            None => None,
        };
        let consumer = self.consume(&channel).await?;
        Ok((
            Current {
                live,
                channel,
                consumer,
            },
            parked,
        ))
    }

    async fn consume(&self, channel: &Channel) -> lapin::Result<Consumer> {
        channel
            .basic_consume(
                self.group.queue.clone(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
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
        let as_received = event
            .is_err()
            .then(|| headers::received(&properties, body.clone()));
        let attempt = headers::attempt(&properties, redelivered);
        let received = Received {
            properties,
            body,
            routing_key,
            attempt,
        };
        let delivery = Delivery::new(
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
        );
        match as_received {
            Some(message) => delivery.with_received(message),
            None => delivery,
        }
    }
}

impl State {
    /// The next delivery or the error the subscription ends with; `None`
    /// once the bus is shut down (or after that error).
    async fn next(&mut self) -> Option<Result<Delivery, ConsumeError>> {
        let mut closed = self.member.group.closed.clone();
        loop {
            if *closed.borrow() {
                // Dropping the consumer cancels it; what the broker sent
                // and nobody took goes back with the channel.
                self.current = None;
                return None;
            }
            if self.failed {
                return None;
            }
            if self.restore {
                self.restore = false;
                self.restore_prefetch().await;
            }
            if let Some(delivery) = self.pending.pop_front() {
                self.progress();
                return Some(Ok(delivery));
            }
            let Some(current) = &mut self.current else {
                self.current = self.reconnect().await;
                continue;
            };
            let recheck = self.parking.as_ref().and_then(ParkingWatch::next_recheck);
            let far = Instant::now() + Duration::from_secs(3600);
            let event = tokio::select! {
                biased;
                _ = closed.changed() => Event::Closed,
                _ = tokio::time::sleep_until(recheck.unwrap_or(far)), if recheck.is_some() => Event::Recheck,
                next = current.consumer.next() => Event::Next(next),
            };
            match event {
                Event::Closed => continue,
                Event::Recheck => self.recheck_parking().await,
                Event::Next(Some(Ok(d))) => {
                    self.progress();
                    let channel = &self.current.as_ref().expect("a consumer").channel;
                    return Some(Ok(self.member.delivery(channel, d)));
                }
                Event::Next(Some(Err(e))) => {
                    if let Some(failure) = self.lost(Some(&e)) {
                        return Some(Err(failure));
                    }
                }
                Event::Next(None) => {
                    tracing::info!(queue = %self.member.group.queue, "consumer cancelled; consuming again");
                    self.lost(None);
                }
            }
        }
    }

    /// A delivery arrived: the losses in a row are over.
    fn progress(&mut self) {
        self.streak = 0;
        self.unparseable_streak = 0;
        if let Some(left) = self.careful {
            if left <= 1 {
                self.careful = None;
                self.restore = true;
            } else {
                self.careful = Some(left - 1);
            }
        }
    }

    /// The consumer is gone (`error` says why, `None`: cancelled by the
    /// broker). Returns the error the subscription ends with when it gives
    /// up.
    fn lost(&mut self, error: Option<&lapin::Error>) -> Option<ConsumeError> {
        let member = &self.member;
        let queue = &member.group.queue;
        self.current = None;
        self.streak = self.streak.saturating_add(1);
        Counters::add(&member.counters.consumer_losses, 1);
        let unparseable = error.is_some_and(is_unparseable);
        self.last_unparseable = unparseable;
        if !unparseable {
            if let Some(e) = error {
                tracing::info!(queue = %queue, error = %e, "consumer lost; reconnecting");
            }
            return None;
        }
        let e = error.expect("a parse error");
        Counters::add(&member.counters.unparseable_losses, 1);
        self.unparseable_streak += 1;
        // Only the message at the head comes again, so only its delivery
        // count grows, until the messages that were in flight are past.
        self.careful = Some(u32::from(member.prefetch));
        self.restore = false;
        if let Some(w) = &mut self.parking {
            w.loss();
        }
        let n = self.unparseable_streak;
        let max = member.losses.max_unparseable;
        if n < max {
            tracing::warn!(
                queue = %queue, error = %e, losses = n, max,
                "the broker sent a message the client cannot parse (a header name or content type \
                 that is not UTF-8); the connection was dropped, reconnecting"
            );
            return None;
        }
        self.failed = true;
        Counters::add(&member.counters.unparseable_failures, 1);
        let what = match &member.parking {
            Some(p) => format!(
                "the broker did not move it into `{p}` at the queue's delivery limit: \
                 check the queue's arguments (`rabbitmqctl list_queues name arguments`)"
            ),
            None => format!(
                "classic queues have no delivery limit, so it stays at the head of `{queue}`: \
                 remove it (management UI: Get messages with ack mode \"reject requeue false\", \
                 or `rabbitmqctl purge_queue {queue}`), or use `queue_type = \"quorum\"`"
            ),
        };
        tracing::error!(queue = %queue, losses = n, "giving up on a message the client cannot parse: {what}");
        Some(
            ConsumeError::new(ConsumeErrorKind::Unparseable, member.group.topic.as_ref()).with_source(
                format!(
                    "the consumer of `{queue}` lost its connection {n} times in a row to a message \
                 lapin cannot parse ({e}); {what}"
                ),
            ),
        )
    }

    /// Counts the parking queue now, on a channel of its own.
    async fn recheck_parking(&mut self) {
        let (Some(w), Some(current)) = (&mut self.parking, &self.current) else {
            return;
        };
        w.rechecked();
        let live = current.live.clone();
        let queue = w.queue.clone();
        let count = async {
            let channel = live.connection.create_channel().await?;
            let n = ParkingWatch::count(&queue, &channel).await;
            let _ = channel.close(200, "counted".into()).await;
            n
        };
        match tokio::time::timeout(self.member.group.operation_timeout, count).await {
            Ok(Ok(n)) => w.observe(n, self.member.group.queue.as_str(), &self.member.counters),
            Ok(Err(e)) => tracing::debug!(queue = %queue, error = %e, "cannot count the parking queue"),
            Err(_) => tracing::debug!(queue = %queue, "counting the parking queue timed out"),
        }
    }

    /// Replaces the prefetch-1 consumer by one with the full prefetch on
    /// the same channel. Cancelling leaves the delivery handed out last
    /// unacked and ackable on the channel; with prefetch 1 no other one is
    /// on its way. If any step fails, the member reconnects.
    async fn restore_prefetch(&mut self) {
        let Some(current) = &mut self.current else { return };
        let member = &self.member;
        let mut received = Vec::new();
        let swap = async {
            let tag = current.consumer.tag();
            current
                .channel
                .basic_cancel(tag, BasicCancelOptions::default())
                .await?;
            // The delivery handed out last may be settled already, and the
            // broker may have sent the next one before the cancel: lapin
            // has queued it in the old consumer by the time the cancel is
            // confirmed, and does not give it back. Dropped with the old
            // consumer it would stay unacked on this open channel, holding
            // a prefetch slot, until the channel closes.
            while let Some(Some(Ok(d))) = current.consumer.next().now_or_never() {
                received.push(d);
            }
            current
                .channel
                .basic_qos(member.prefetch, BasicQosOptions::default())
                .await?;
            member.consume(&current.channel).await
        };
        let swapped = tokio::time::timeout(member.group.operation_timeout, swap).await;
        for d in received {
            self.pending.push_back(member.delivery(&current.channel, d));
        }
        let why = match swapped {
            Ok(Ok(consumer)) => {
                current.consumer = consumer;
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", member.group.operation_timeout),
        };
        tracing::info!(queue = %member.group.queue, error = %why, "cannot restore the prefetch; reconnecting");
        Counters::add(&member.counters.consumer_losses, 1);
        self.current = None;
        self.streak = self.streak.saturating_add(1);
        self.last_unparseable = false;
    }

    /// A new consumer after waiting for the loss streak's delay, then
    /// through connection attempts; `None` when the bus shut down
    /// meanwhile.
    async fn reconnect(&mut self) -> Option<Current> {
        let member = self.member.clone();
        let mut closed = member.group.closed.clone();
        if self.streak > 0 {
            let wait = member.losses.delay(self.streak, self.last_unparseable);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = closed.wait_for(|c| *c) => return None,
            }
        }
        let prefetch = if self.careful.is_some() {
            1
        } else {
            member.prefetch
        };
        loop {
            let live = match member.link.connection_retrying().await {
                Ok(live) => live,
                Err(LinkError::Closed) => return None,
                Err(LinkError::Connect(_)) => continue,
            };
            match member.open_bounded(live.clone(), prefetch).await {
                Ok((current, parked)) => {
                    if let (Some(w), Some(n)) = (&mut self.parking, parked) {
                        w.observe(n, member.group.queue.as_str(), &member.counters);
                    }
                    return Some(current);
                }
                Err(e) => {
                    tracing::warn!(queue = %member.group.queue, error = %e, "cannot resume consuming; retrying");
                    if let OpenError::TimedOut(_) = e {
                        member.link.discard(&live).await;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = closed.wait_for(|c| *c) => return None,
                    }
                }
            }
        }
    }
}
