//! One group member: a consumer in the group, polled on a thread of its
//! own, and the delivery stream the application reads.

mod acker;
mod context;
mod poller;
mod state;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use busline_core::{ConsumeError, ConsumeErrorKind, Delivery, StartFrom, SubscribeError, SubscribeErrorKind};
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::sync::{watch, Notify};

use crate::shared::Shared;
pub(crate) use state::{Record, State, Ticket};

/// What the stream, the poller thread and the ackers of one member share.
pub(crate) struct MemberShared {
    pub(crate) bus: Arc<Shared>,
    pub(crate) topic: Arc<str>,
    /// The busline group: deliveries and dead letters name it.
    pub(crate) group: Arc<str>,
    /// The Kafka consumer group the member joins
    /// ([`consumer_group_id`](crate::consumer_group_id)).
    pub(crate) group_id: Arc<str>,
    pub(crate) start: StartFrom,
    pub(crate) max_in_flight: usize,
    state: Mutex<State>,
    /// Wakes the stream: a record is ready or a slot was freed.
    wake: Notify,
    /// Signalled when a delivery is settled while a revocation waits.
    settle: Condvar,
    /// A revocation waits for deliveries to settle.
    fencing: AtomicBool,
    /// Set when the member is to leave: stop handing out, drain, commit,
    /// close.
    leaving: AtomicBool,
    /// The first assignment happened.
    joined: watch::Sender<bool>,
    /// The poller thread finished (committed and closed).
    done: watch::Sender<bool>,
    /// Why the poller thread died, until the stream has reported it.
    crash: Mutex<Option<String>>,
}

impl MemberShared {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// A delivery was settled (decided, delayed, released or dropped): a
    /// revocation waiting for it may go on.
    pub(crate) fn settled_one(&self) {
        // The waiter sets the flag before it checks under the state lock,
        // and every settlement changes the state before it gets here, so
        // no wake-up is lost; without a waiter, no syscall per ack.
        if self.fencing.load(Ordering::Acquire) {
            self.settle.notify_all();
        }
    }

    /// Stops handing out records of `partitions` and waits, at most
    /// `limit`, for their deliveries in flight to be settled; how many were
    /// not.
    pub(crate) fn drain_partitions(&self, partitions: &[i32], limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        self.fencing.store(true, Ordering::Release);
        let mut state = self.state();
        state.fence(partitions);
        let left = loop {
            let left = state.in_flight_of(partitions);
            let now = Instant::now();
            if left == 0 || now >= deadline {
                break left;
            }
            state = match self.settle.wait_timeout(state, deadline - now) {
                Ok((s, _)) => s,
                Err(p) => p.into_inner().0,
            };
        };
        drop(state);
        self.fencing.store(false, Ordering::Release);
        left
    }

    pub(crate) fn leave(&self) {
        self.leaving.store(true, Ordering::Release);
        self.wake();
    }

    pub(crate) fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::Acquire)
    }

    /// The poller thread died: the member leaves and its stream ends with
    /// an error.
    pub(crate) fn crashed(&self, why: String) {
        *self.crash.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        self.leave();
    }

    /// A commit of `partitions` failed: counted, logged, and their commit
    /// points sent again by the next commit round.
    pub(crate) fn commit_failed(&self, what: &str, partitions: &[i32], error: &dyn std::fmt::Display) {
        self.bus.commit_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(topic = %self.topic, group = %self.group, ?partitions, %error, "{what} failed; the offsets are sent again");
        let mut state = self.state();
        for p in partitions {
            state.uncommit(*p);
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        *self.done.borrow()
    }

    /// Waits until the poller thread has committed and closed.
    pub(crate) async fn finished(&self) {
        let mut rx = self.done.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Record id for the connection's attempt memory.
    pub(crate) fn record_id(&self, partition: i32, offset: i64) -> crate::attempts::RecordId {
        (self.topic.clone(), self.group_id.clone(), partition, offset)
    }

    /// The next delivery; an error if the poller thread died, then `None`
    /// once the member leaves.
    async fn next(self: &Arc<Self>) -> Option<Result<Delivery, ConsumeError>> {
        loop {
            let woken = self.wake.notified();
            if self.is_leaving() {
                let crash = self.crash.lock().unwrap_or_else(|p| p.into_inner()).take();
                return crash.map(|why| {
                    Err(ConsumeError::new(ConsumeErrorKind::Other, &*self.topic)
                        .with_source(format!("the member's poller thread died: {why}")))
                });
            }
            let handout = {
                let mut state = self.state();
                if state.in_flight() < self.max_in_flight {
                    state.take()
                } else {
                    None
                }
            };
            if let Some(h) = handout {
                let received = h.event.is_err().then(|| h.record.received());
                let acker = acker::KafkaAcker::new(self.clone(), h.ticket, h.record, h.attempt);
                let delivery = Delivery::new(
                    h.event,
                    h.attempt,
                    self.topic.clone(),
                    self.group.clone(),
                    Box::new(acker),
                );
                return Some(Ok(match received {
                    Some(received) => delivery.with_received(received),
                    None => delivery,
                }));
            }
            woken.await;
        }
    }
}

/// Leaves the group when the application drops the subscription.
struct Stream {
    member: Arc<MemberShared>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.member.leave();
    }
}

/// Waits until the members of `group_id` on this connection that are
/// leaving have committed and closed, at most what a shutdown gives them.
///
/// A member that joins while another one leaves rebalances the group under
/// the leaving one: its final commit is then refused (librdkafka's mock
/// refuses commits for the whole join phase, Kafka while the new generation
/// syncs) or lands after the new member has read the committed offsets, and
/// the new member delivers again what was acked before a graceful shutdown.
async fn wait_for_leaving(bus: &Shared, group_id: &str) {
    let leaving: Vec<_> = bus
        .members
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|m| &*m.group_id == group_id && m.is_leaving() && !m.is_done())
        .cloned()
        .collect();
    let limit = bus.config.drain_timeout + Duration::from_secs(10);
    for m in leaving {
        tracing::debug!(topic = %m.topic, group = %m.group, "waiting for the group's leaving member to commit and close");
        if tokio::time::timeout(limit, m.finished()).await.is_err() {
            tracing::warn!(topic = %m.topic, group = %m.group, ?limit, "the group's leaving member did not close in time; joining anyway");
        }
    }
}

/// Joins `group` on `topic` (already provisioned) and returns the
/// delivery stream once the member has its first assignment.
pub(crate) async fn join(
    bus: Arc<Shared>,
    topic: &str,
    group: &str,
    start: StartFrom,
    max_in_flight: usize,
    order_per_key: bool,
) -> Result<busline_core::Subscription, SubscribeError> {
    let (joined, mut joined_rx) = watch::channel(false);
    let group_id = crate::consumer_group_id(topic, group);
    wait_for_leaving(&bus, &group_id).await;
    let member = Arc::new(MemberShared {
        bus: bus.clone(),
        topic: topic.into(),
        group: group.into(),
        group_id: group_id.as_str().into(),
        start,
        max_in_flight: max_in_flight.max(1),
        state: Mutex::new(if order_per_key {
            State::default()
        } else {
            State::unordered()
        }),
        wake: Notify::new(),
        settle: Condvar::new(),
        fencing: AtomicBool::new(false),
        leaving: AtomicBool::new(false),
        joined,
        done: watch::channel(false).0,
        crash: Mutex::new(None),
    });
    let consumer: BaseConsumer<context::MemberContext> = bus
        .config
        .consumer_config(&bus.bootstrap, &group_id)
        .create_with_context(context::MemberContext::new(member.clone()))
        .map_err(|e| SubscribeError::new(SubscribeErrorKind::Connection, topic).with_source(e))?;
    consumer
        .subscribe(&[topic])
        .map_err(|e| SubscribeError::new(SubscribeErrorKind::Other, topic).with_source(e))?;
    bus.register(member.clone());
    poller::spawn(consumer, member.clone())
        .map_err(|e| SubscribeError::new(SubscribeErrorKind::Other, topic).with_source(e))?;
    let limit = bus.config.join_timeout;
    if tokio::time::timeout(limit, joined_rx.wait_for(|j| *j))
        .await
        .is_err()
    {
        tracing::warn!(
            topic,
            group,
            ?limit,
            "no partition assignment yet; subscribing anyway"
        );
    }
    let stream = Stream { member };
    Ok(busline_core::Subscription::new(futures::stream::unfold(
        stream,
        |stream| async move {
            let delivery = stream.member.next().await?;
            Some((delivery, stream))
        },
    )))
}
