//! [`TestHarness`]: a memory bus that records what was published, handled
//! and dead-lettered, for users' unit tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use busline_core::backend::{async_trait, Acknowledge, BusDecorator};
use busline_core::{
    Acker, Bus, BusSettings, DeadLetter, Delivery, DomainEvent, EnvelopeError, Event, EventBus, EventId,
    Handled, PublishError, RawEvent, RouterObserver, SettleError, Settled, SubscribeError, SubscribeOptions,
    Subscription,
};
use busline_memory::MemoryBroker;
use futures::StreamExt;
use tokio::sync::Notify;

use crate::support::within;

/// A dead letter as the harness saw it being made.
#[derive(Debug, Clone)]
pub struct DeadLettered {
    /// The event (or why its envelope could not be read).
    pub event: Result<RawEvent, EnvelopeError>,
    /// Reason, error text, topic, group, attempts.
    pub letter: DeadLetter,
}

#[derive(Default)]
struct Records {
    published: Vec<(String, RawEvent)>,
    handled: Vec<(String, RawEvent)>,
    dead_lettered: Vec<DeadLettered>,
    /// Events a handler returned `Ok` for, as it saw them, by (group, id),
    /// until their acknowledgement moves them to `handled`.
    handler_ok: HashMap<(String, EventId), RawEvent>,
}

#[derive(Default)]
struct Recording {
    records: Mutex<Records>,
    changed: Notify,
}

impl Recording {
    fn update(&self, f: impl FnOnce(&mut Records)) {
        f(&mut self.records.lock().unwrap_or_else(|p| p.into_inner()));
        self.changed.notify_waiters();
    }

    fn read<T>(&self, f: impl FnOnce(&Records) -> T) -> T {
        f(&self.records.lock().unwrap_or_else(|p| p.into_inner()))
    }

    async fn wait<T>(&self, limit: Duration, what: &str, mut found: impl FnMut(&Records) -> Option<T>) -> T {
        within(limit, what, async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if let Some(v) = self.read(&mut found) {
                    return v;
                }
                changed.await;
            }
        })
        .await
    }
}

/// A memory bus for unit tests that records every event published, every
/// event a router's handler handled (as the handler saw it, upcast events
/// at the handled version; skips and dead letters acked by a DLQ reader do
/// not count), and every dead letter.
///
/// ```
/// use std::time::Duration;
/// use busline_core::{Context, DomainEvent, Event, HandlerError, Router};
/// use busline_testkit::TestHarness;
///
/// #[derive(serde::Serialize, serde::Deserialize, Clone)]
/// struct OrderCreated { order_id: String }
/// impl Event for OrderCreated { const TYPE: &'static str = "order.created"; }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let harness = TestHarness::new();
/// let router = Router::new(harness.bus(), "billing")
///     .on("orders", |_ctx: Context, _e: DomainEvent<OrderCreated>| async {
///         Ok::<_, HandlerError>(())
///     })
///     .start()
///     .await
///     .unwrap();
/// harness.bus().publish("orders", OrderCreated { order_id: "o-1".into() }).await.unwrap();
/// let handled = harness.wait_for_handled::<OrderCreated>(Duration::from_secs(5)).await;
/// assert_eq!(handled.data.order_id, "o-1");
/// assert_eq!(harness.published::<OrderCreated>().len(), 1);
/// router.shutdown().await.unwrap();
/// # }
/// ```
#[derive(Clone)]
pub struct TestHarness {
    bus: Bus,
    recording: Arc<Recording>,
}

impl Default for TestHarness {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for TestHarness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.recording.read(|r| {
            f.debug_struct("TestHarness")
                .field("published", &r.published.len())
                .field("handled", &r.handled.len())
                .field("dead_lettered", &r.dead_lettered.len())
                .finish()
        })
    }
}

impl TestHarness {
    /// A harness over a fresh memory broker with [`test_settings`](crate::test_settings).
    pub fn new() -> Self {
        Self::with_settings(crate::test_settings())
    }

    /// A harness over a fresh memory broker with these settings.
    pub fn with_settings(settings: BusSettings) -> Self {
        let recording = Arc::new(Recording::default());
        let transport = RecordingBus {
            inner: Arc::new(MemoryBroker::new().connect()),
            recording: recording.clone(),
        };
        let witness = HandledWitness {
            recording: recording.clone(),
        };
        Self {
            bus: Bus::new(transport, settings).observed_by(witness),
            recording,
        }
    }

    /// The bus to publish on and to build routers with.
    pub fn bus(&self) -> Bus {
        self.bus.clone()
    }

    /// Every event of type `E` (at `E::VERSION`) published so far, decoded.
    pub fn published<E: Event>(&self) -> Vec<DomainEvent<E>> {
        let raws = self.recording.read(|r| of_type::<E>(&r.published));
        raws.into_iter().map(|raw| self.decode(raw)).collect()
    }

    /// Every event published so far, with its topic.
    pub fn published_raw(&self) -> Vec<(String, RawEvent)> {
        self.recording.read(|r| r.published.clone())
    }

    /// Every event of type `E` (at `E::VERSION`) that a router's handler for
    /// `E` handled and the router then acknowledged: an older version
    /// upcast to `E` counts as an `E`; a skipped event (no handler for its
    /// type, a deliberate skip) does not count.
    pub fn handled<E: Event>(&self) -> Vec<DomainEvent<E>> {
        let raws = self.recording.read(|r| of_type::<E>(&r.handled));
        raws.into_iter().map(|raw| self.decode(raw)).collect()
    }

    /// Waits for the first handled event of type `E`; panics with a clear
    /// message after `timeout`.
    pub async fn wait_for_handled<E: Event>(&self, timeout: Duration) -> DomainEvent<E> {
        self.wait_for_handled_count::<E>(1, timeout).await.remove(0)
    }

    /// Waits until `n` events of type `E` are handled and returns them.
    pub async fn wait_for_handled_count<E: Event>(&self, n: usize, timeout: Duration) -> Vec<DomainEvent<E>> {
        let what = format!("{n} handled `{}` event(s)", E::TYPE);
        let raws = self
            .recording
            .wait(timeout, &what, |r| {
                let found = of_type::<E>(&r.handled);
                (found.len() >= n).then_some(found)
            })
            .await;
        raws.into_iter().map(|raw| self.decode(raw)).collect()
    }

    /// Every dead letter made so far.
    pub fn dead_lettered(&self) -> Vec<DeadLettered> {
        self.recording.read(|r| r.dead_lettered.clone())
    }

    /// Waits until `n` dead letters were made and returns them.
    pub async fn wait_for_dead_letters(&self, n: usize, timeout: Duration) -> Vec<DeadLettered> {
        let what = format!("{n} dead letter(s)");
        self.recording
            .wait(timeout, &what, |r| {
                (r.dead_lettered.len() >= n).then(|| r.dead_lettered.clone())
            })
            .await
    }

    fn decode<E: Event>(&self, raw: RawEvent) -> DomainEvent<E> {
        let codecs = self.bus.codecs().clone();
        raw.try_map_data(|p| codecs.decode::<E>(&p.content_type, &p.bytes))
            .unwrap_or_else(|e| panic!("recorded `{}` event does not decode: {e}", E::TYPE))
    }
}

fn of_type<E: Event>(records: &[(String, RawEvent)]) -> Vec<RawEvent> {
    records
        .iter()
        .filter(|(_, e)| e.event_type == E::TYPE && e.version == E::VERSION)
        .map(|(_, e)| e.clone())
        .collect()
}

/// Told by every router on the harness's bus which events its handlers
/// handled, as they saw them (upcast events at the handled version).
struct HandledWitness {
    recording: Arc<Recording>,
}

impl RouterObserver for HandledWitness {
    fn on_settled(&self, _settled: &Settled<'_>) {}

    fn wants_handled_events(&self) -> bool {
        true
    }

    fn on_handled(&self, handled: &Handled<'_>) {
        let key = (handled.group.to_owned(), handled.event.id.clone());
        self.recording.update(|r| {
            r.handler_ok.insert(key, handled.event.clone());
        });
    }
}

/// An `EventBus` decorator that records traffic.
struct RecordingBus {
    inner: Arc<dyn EventBus>,
    recording: Arc<Recording>,
}

#[async_trait]
impl BusDecorator for RecordingBus {
    fn inner(&self) -> &Arc<dyn EventBus> {
        &self.inner
    }

    async fn on_publish(&self, topic: &str, event: RawEvent) -> Result<(), PublishError> {
        let copy = event.clone();
        self.inner.publish(topic, event).await?;
        self.recording
            .update(|r| r.published.push((topic.to_owned(), copy)));
        Ok(())
    }

    async fn on_publish_batch(&self, topic: &str, events: Vec<RawEvent>) -> Result<(), PublishError> {
        let copies = events.clone();
        self.inner.publish_batch(topic, events).await?;
        self.recording.update(|r| {
            r.published
                .extend(copies.into_iter().map(|e| (topic.to_owned(), e)))
        });
        Ok(())
    }

    async fn on_subscribe(
        &self,
        topic: &str,
        group: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, SubscribeError> {
        let recording = self.recording.clone();
        let sub = self.inner.subscribe(topic, group, options).await?;
        Ok(Subscription::new(sub.map(move |next| {
            next.map(|delivery| {
                let attempt = delivery.attempt();
                let (topic, group) = (delivery.topic().into(), delivery.group().into());
                let received = delivery.received().cloned();
                let (event, acker) = delivery.into_parts();
                let recorder = RecordingAcker {
                    acker,
                    event: event.clone(),
                    recording: recording.clone(),
                };
                let recorded = Delivery::new(event, attempt, topic, group, Box::new(recorder));
                match received {
                    Some(received) => recorded.with_received(received),
                    None => recorded,
                }
            })
        })))
    }
}

struct RecordingAcker {
    acker: Acker,
    event: Result<RawEvent, EnvelopeError>,
    recording: Arc<Recording>,
}

#[async_trait]
impl Acknowledge for RecordingAcker {
    async fn ack(self: Box<Self>) -> Result<(), SettleError> {
        let this = *self;
        let topic = this.acker.topic().to_owned();
        let group = this.acker.group().to_owned();
        this.acker.ack().await?;
        // Handled means a handler returned `Ok` and the delivery was then
        // acknowledged; a skip (unknown type, duplicate) is acknowledged with
        // no handler call, and so is a dead letter read by a DLQ reader.
        if let Ok(event) = this.event {
            this.recording.update(|r| {
                if let Some(as_handled) = r.handler_ok.remove(&(group, event.id)) {
                    r.handled.push((topic, as_handled));
                }
            });
        }
        Ok(())
    }

    async fn nack(self: Box<Self>, retry_after: Duration) -> Result<(), SettleError> {
        self.acker.nack(retry_after).await
    }

    async fn release(self: Box<Self>) -> Result<(), SettleError> {
        self.acker.release().await
    }

    async fn dead_letter(self: Box<Self>, letter: DeadLetter) -> Result<(), SettleError> {
        let this = *self;
        this.acker
            .dead_letter(letter.reason, letter.error.clone())
            .await?;
        this.recording.update(|r| {
            r.dead_lettered.push(DeadLettered {
                event: this.event,
                letter,
            })
        });
        Ok(())
    }
}
