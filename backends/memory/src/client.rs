//! A client connection to a [`MemoryBroker`]: the `EventBus` of the memory
//! backend.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use busline_core::backend::{async_trait, Acknowledge};
use busline_core::wire;
use busline_core::{
    Capabilities, ConnectionState, ConsumeError, DeadLetter, Delivery, EventBus, GroupInfo, InspectError,
    InspectErrorKind, PublishError, PublishErrorKind, RawEvent, SettleError, SubscribeError,
    SubscribeErrorKind, SubscribeOptions, Subscription, TopicInfo,
};
use futures::Stream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::message::{PackedWire, Stored, WireMessage};
use crate::queue::{Entry, GroupQueue};
use crate::MemoryBroker;

/// One connection to an in-memory broker. Cloning shares the connection.
#[derive(Clone)]
pub struct MemoryBus {
    broker: MemoryBroker,
    closed: Arc<Closed>,
}

#[derive(Default)]
struct Closed {
    flag: AtomicBool,
    notify: Notify,
}

impl Closed {
    fn is_set(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }
}

impl std::fmt::Debug for MemoryBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBus")
            .field("closed", &self.closed.is_set())
            .finish()
    }
}

impl MemoryBus {
    pub(crate) fn new(broker: MemoryBroker) -> Self {
        Self {
            broker,
            closed: Arc::default(),
        }
    }

    /// The broker this client is connected to.
    pub fn broker(&self) -> &MemoryBroker {
        &self.broker
    }

    /// Publishes a message in wire form, as a foreign producer would: its
    /// headers are read only when delivered, so a malformed one arrives as a
    /// poison delivery. For interop and poison tests.
    pub async fn publish_wire(&self, topic: &str, message: WireMessage) -> Result<(), PublishError> {
        self.check_open(topic)?;
        self.publish_stored(topic, Stored::Wire(message)).await
    }

    fn check_open(&self, topic: &str) -> Result<(), PublishError> {
        if self.closed.is_set() {
            Err(PublishError::new(PublishErrorKind::Closed, topic))
        } else {
            Ok(())
        }
    }

    /// What the broker keeps of `event`: its wire form unless the broker is
    /// configured without the wire mapping. A structured-mode event is kept
    /// as it is: its body is the wire form, read by the structured decoder.
    fn stored(&self, topic: &str, event: RawEvent) -> Result<Stored, PublishError> {
        if !self.broker.state.config.wire_mapping || wire::is_structured(&event.data.content_type) {
            return Ok(Stored::Event(Box::new(event)));
        }
        PackedWire::from_event(&event)
            .map(Stored::Packed)
            .map_err(|e| PublishError::new(PublishErrorKind::InvalidEnvelope, topic).with_source(e))
    }

    async fn publish_stored(&self, topic: &str, message: Stored) -> Result<(), PublishError> {
        let Some((message, full)) = self.broker.state.try_publish(topic, message) else {
            return Ok(());
        };
        // A publish waiting for queue space when the client closes fails: the
        // caller learns the event was not stored in every group.
        let wait = async {
            for queue in full {
                queue.push(crate::queue::Entry::new(message.clone())).await;
            }
        };
        tokio::select! {
            biased;
            _ = wait => Ok(()),
            _ = self.closed.wait() => Err(PublishError::new(PublishErrorKind::Closed, topic)),
        }
    }
}

#[async_trait]
impl EventBus for MemoryBus {
    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
            .with_order_per_key(true)
            .with_release_keeps_attempt(true)
    }

    async fn publish(&self, topic: &str, event: RawEvent) -> Result<(), PublishError> {
        self.check_open(topic)?;
        let stored = self.stored(topic, event)?;
        self.publish_stored(topic, stored).await
    }

    async fn publish_batch(&self, topic: &str, events: Vec<RawEvent>) -> Result<(), PublishError> {
        self.check_open(topic)?;
        for event in events {
            let stored = self.stored(topic, event)?;
            self.publish_stored(topic, stored).await?;
        }
        Ok(())
    }

    async fn provision(&self, topic: &str, group: &str) -> Result<(), SubscribeError> {
        if self.closed.is_set() {
            return Err(SubscribeError::new(SubscribeErrorKind::Closed, topic));
        }
        if topic.is_empty() || group.is_empty() {
            return Err(SubscribeError::new(SubscribeErrorKind::InvalidName, topic));
        }
        self.broker.state.group(topic, group);
        Ok(())
    }

    async fn remove_group(&self, topic: &str, group: &str) -> Result<(), SubscribeError> {
        if self.closed.is_set() {
            return Err(SubscribeError::new(SubscribeErrorKind::Closed, topic));
        }
        self.broker.state.remove_group(topic, group);
        Ok(())
    }

    fn connection_state(&self) -> ConnectionState {
        if self.closed.is_set() {
            ConnectionState::Closed
        } else {
            ConnectionState::Connected
        }
    }

    async fn list_topics(&self) -> Result<Vec<TopicInfo>, InspectError> {
        if self.closed.is_set() {
            return Err(InspectError::topics(InspectErrorKind::Closed));
        }
        // A memory topic keeps nothing itself; its groups' queues do.
        Ok(self
            .broker
            .state
            .topic_names()
            .into_iter()
            .map(TopicInfo::new)
            .collect())
    }

    async fn list_groups(&self, topic: &str) -> Result<Vec<GroupInfo>, InspectError> {
        if self.closed.is_set() {
            return Err(InspectError::groups(InspectErrorKind::Closed, topic));
        }
        let groups = self
            .broker
            .state
            .group_depths(topic)
            .ok_or_else(|| InspectError::groups(InspectErrorKind::NotFound, topic))?;
        Ok(groups
            .into_iter()
            .map(|(group, depth)| GroupInfo::new(group).with_lag(Some(depth as u64)))
            .collect())
    }

    async fn subscribe(
        &self,
        topic: &str,
        group: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, SubscribeError> {
        self.provision(topic, group).await?;
        let member = Member {
            queue: self.broker.state.group(topic, group),
            broker: self.broker.clone(),
            closed: self.closed.clone(),
            in_flight: Arc::new(Semaphore::new(options.max_in_flight.max(1))),
            topic: topic.into(),
            group: group.into(),
        };
        Ok(Subscription::new(MemberStream {
            member: Arc::new(member),
            waiting: None,
        }))
    }

    async fn shutdown(&self) {
        self.closed.flag.store(true, Ordering::Release);
        self.closed.notify.notify_waiters();
    }
}

/// One subscription's side of a group queue.
struct Member {
    queue: Arc<GroupQueue>,
    broker: MemoryBroker,
    closed: Arc<Closed>,
    in_flight: Arc<Semaphore>,
    topic: Arc<str>,
    group: Arc<str>,
}

/// A member's deliveries: taken straight from the queue while there are
/// some and in-flight room, and only otherwise through a future that waits
/// (so the busy path builds no future per delivery).
struct MemberStream {
    member: Arc<Member>,
    waiting: Option<Pin<Box<dyn Future<Output = Option<Delivery>> + Send>>>,
}

impl Stream for MemberStream {
    type Item = Result<Delivery, ConsumeError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Option<Self::Item>> {
        if self.waiting.is_none() {
            if self.member.closed.is_set() {
                return Poll::Ready(None);
            }
            if let Some(delivery) = self.member.try_next() {
                return Poll::Ready(Some(Ok(delivery)));
            }
            let member = self.member.clone();
            self.waiting = Some(Box::pin(async move { member.next().await }));
        }
        let next = std::task::ready!(self.waiting.as_mut().expect("set above").as_mut().poll(cx));
        self.waiting = None;
        Poll::Ready(next.map(Ok))
    }
}

impl Member {
    /// The next delivery if one is ready and there is in-flight room.
    fn try_next(&self) -> Option<Delivery> {
        let permit = self.in_flight.clone().try_acquire_owned().ok()?;
        let entry = self.queue.try_pop()?;
        Some(self.deliver(entry, permit))
    }

    /// The next delivery, waiting for in-flight room and a message; `None`
    /// once the client is closed. The stream calls it only after
    /// [`try_next`](Self::try_next) found nothing.
    async fn next(&self) -> Option<Delivery> {
        let permit = tokio::select! {
            biased;
            _ = self.closed.wait() => return None,
            p = self.in_flight.clone().acquire_owned() => p.ok()?,
        };
        loop {
            let available = self.queue.available();
            tokio::pin!(available);
            available.as_mut().enable();
            if self.closed.is_set() {
                return None;
            }
            if let Some(entry) = self.queue.try_pop() {
                return Some(self.deliver(entry, permit));
            }
            tokio::select! {
                biased;
                _ = self.closed.wait() => return None,
                _ = available => {}
            }
        }
    }

    fn deliver(&self, entry: Entry, permit: OwnedSemaphorePermit) -> Delivery {
        let event = entry.message.read();
        let received = event.is_err().then(|| entry.message.received());
        let attempt = entry.attempt;
        let delivery = Delivery::new(
            event,
            attempt,
            self.topic.clone(),
            self.group.clone(),
            Box::new(MemoryAcker {
                entry: Some(entry),
                queue: self.queue.clone(),
                broker: self.broker.clone(),
                _permit: permit,
            }),
        );
        match received {
            Some(received) => delivery.with_received(received),
            None => delivery,
        }
    }
}

/// Settles one memory delivery; dropped undecided, it puts the message back
/// at the front of its queue.
struct MemoryAcker {
    entry: Option<Entry>,
    queue: Arc<GroupQueue>,
    broker: MemoryBroker,
    _permit: OwnedSemaphorePermit,
}

impl MemoryAcker {
    fn take(&mut self) -> Entry {
        self.entry.take().expect("a memory delivery is settled once")
    }
}

#[async_trait]
impl Acknowledge for MemoryAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), SettleError> {
        self.try_ack_now().unwrap_or(Ok(()))
    }

    fn try_ack_now(&mut self) -> Option<Result<(), SettleError>> {
        let entry = self.entry.take()?;
        self.queue.settle(entry.key.as_ref());
        Some(Ok(()))
    }

    async fn nack(mut self: Box<Self>, retry_after: Duration) -> Result<(), SettleError> {
        let entry = self.take();
        self.queue.redeliver(entry, retry_after);
        Ok(())
    }

    async fn release(mut self: Box<Self>) -> Result<(), SettleError> {
        let entry = self.take();
        self.queue.release(entry);
        Ok(())
    }

    async fn dead_letter(mut self: Box<Self>, letter: DeadLetter) -> Result<(), SettleError> {
        let entry = self.take();
        let dead = entry.message.dead_lettered(&letter);
        self.broker.state.publish_now(&letter.dead_letter_topic(), dead);
        self.queue.settle(entry.key.as_ref());
        Ok(())
    }
}

impl Drop for MemoryAcker {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.queue.redeliver(entry, Duration::ZERO);
        }
    }
}
