//! Looking at a group's dead letters before deciding what to do with them:
//! what an operator's tool lists, shows, replays by id or purges.

use std::time::Duration;

use futures::StreamExt;

use crate::replay::{prepare_replay, Prepared};
use crate::{
    dead_letter_topic, Acker, Bus, DeadLetter, EnvelopeError, RawEvent, ReplayError, ReplayReport, StartFrom,
    SubscribeError, SubscribeErrorKind, SubscribeOptions, Subscription,
};

/// How many dead letters to take in hand and how long to wait for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BrowseOptions {
    /// Hold at most this many letters (also the subscription's
    /// `max_in_flight`: the broker hands out no more).
    pub limit: usize,
    /// How long to wait for the first letter: joining a Kafka group takes
    /// seconds, an empty DLQ answers nothing at all.
    pub first_wait: Duration,
    /// Stop when no further letter comes for this long.
    pub idle_timeout: Duration,
}

impl Default for BrowseOptions {
    fn default() -> Self {
        Self {
            limit: 1000,
            first_wait: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(2),
        }
    }
}

impl BrowseOptions {
    /// Hold at most `limit` letters (at least one).
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit.max(1);
        self
    }

    /// Wait up to `wait` for the first letter.
    pub fn first_wait(mut self, wait: Duration) -> Self {
        self.first_wait = wait;
        self
    }

    /// Stop after `idle` without a further letter.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }
}

/// One dead letter held unsettled: the broker delivers it to no one else
/// until the batch it belongs to settles it.
#[derive(Debug)]
pub struct HeldLetter {
    event: Result<RawEvent, EnvelopeError>,
    letter: Option<DeadLetter>,
    acker: Acker,
    received: Option<crate::ReceivedMessage>,
}

impl HeldLetter {
    /// The envelope as it sits in the DLQ (with its dead-letter attributes),
    /// or why it could not be read.
    pub fn event(&self) -> Result<&RawEvent, &EnvelopeError> {
        self.event.as_ref()
    }

    /// Its dead-letter attributes (reason, error, attempts, …); `None` when
    /// the envelope is unreadable or carries none.
    pub fn letter(&self) -> Option<&DeadLetter> {
        self.letter.as_ref()
    }

    /// The letter as the broker handed it over, where the envelope is
    /// unreadable and the backend kept it (see [`Delivery::received`](crate::Delivery::received)).
    pub fn received(&self) -> Option<&crate::ReceivedMessage> {
        self.received.as_ref()
    }

    /// The event id, where the envelope is readable.
    pub fn id(&self) -> Option<&str> {
        self.event.as_ref().ok().map(|e| e.id.as_str())
    }

    /// How often the DLQ's own consumer has delivered this letter.
    pub fn delivery_attempt(&self) -> u32 {
        self.acker.attempt()
    }
}

/// Dead letters of one group in hand, in DLQ order. Dropping the batch hands
/// them back to the broker (the contract's "dropped undecided =
/// redelivered"); [`release`](Self::release) does it at once and waits.
#[derive(Debug)]
pub struct DeadLetterBatch {
    topic: String,
    group: String,
    held: Vec<HeldLetter>,
    // Kept open while letters are acknowledged: a Kafka member that left
    // cannot commit their offsets.
    subscription: Subscription,
}

impl DeadLetterBatch {
    /// The letters held.
    pub fn letters(&self) -> &[HeldLetter] {
        &self.held
    }

    /// How many letters are held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether the DLQ yielded nothing.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Returns every letter to the DLQ unchanged. Where the backend cannot
    /// return a message without counting a delivery (NATS:
    /// `Capabilities::release_keeps_attempt` is false), each release counts
    /// one against the DLQ consumer's `max_deliver`.
    pub async fn release(self) {
        // Closed first: NATS offers a returned message to any pull request
        // still open, and this one's would take it along and hold it until
        // ack_wait.
        drop(self.subscription);
        for held in self.held {
            let _ = held.acker.release().await;
        }
    }

    /// Settles every letter by what `decide` says of it, in DLQ order:
    /// [`LetterAction::Replay`] republishes the event to its topic for this
    /// group (as [`Bus::replay_dead_letters`] does) and then removes the
    /// letter, [`LetterAction::Discard`] removes it, [`LetterAction::Keep`]
    /// returns it to the DLQ. A letter that cannot be replayed (unreadable
    /// envelope, or attributes naming another topic or group) is returned to
    /// the DLQ when `decide` says `Replay`, and counted. `on_settled` is
    /// called after each letter, for progress.
    ///
    /// On a failed republish the letter and every one after it are returned
    /// to the DLQ, and the error is returned: nothing leaves the DLQ before
    /// its republish is confirmed.
    pub async fn settle(
        self,
        bus: &Bus,
        mut decide: impl FnMut(&HeldLetter) -> LetterAction,
        mut on_settled: impl FnMut(),
    ) -> Result<ReplayReport, ReplayError> {
        let Self {
            topic,
            group,
            held,
            subscription,
        } = self;
        let mut report = ReplayReport::default();
        // Returned after the subscription is closed, as in `release`.
        let mut returned = Vec::new();
        let mut held = held.into_iter();
        while let Some(letter) = held.next() {
            let action = decide(&letter);
            let HeldLetter {
                event, letter, acker, ..
            } = letter;
            match action {
                LetterAction::Keep => {
                    report.kept += 1;
                    returned.push(acker);
                }
                LetterAction::Discard => {
                    // Not acknowledged, it is still in the DLQ: say so.
                    match acker.ack().await {
                        Ok(()) => report.discarded += 1,
                        Err(_) => report.kept += 1,
                    }
                }
                LetterAction::Replay => {
                    let Ok(event) = event else {
                        report.unreadable += 1;
                        returned.push(acker);
                        on_settled();
                        continue;
                    };
                    let Prepared::Ready(event) = prepare_replay(event, letter.as_ref(), &topic, &group)
                    else {
                        report.misplaced += 1;
                        returned.push(acker);
                        on_settled();
                        continue;
                    };
                    if let Err(e) = bus.publish_raw(&topic, event).await {
                        returned.push(acker);
                        returned.extend(held.map(|rest| rest.acker));
                        return_all(subscription, returned).await;
                        return Err(e.into());
                    }
                    report.moved += 1;
                    // A failed ack leaves the letter in the DLQ as well as
                    // republished: at-least-once, never lost.
                    let _ = acker.ack().await;
                }
            }
            on_settled();
        }
        return_all(subscription, returned).await;
        Ok(report)
    }
}

async fn return_all(subscription: Subscription, returned: Vec<Acker>) {
    drop(subscription);
    for acker in returned {
        let _ = acker.release().await;
    }
}

/// What [`DeadLetterBatch::settle`] does with one letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LetterAction {
    /// Republish it to its topic for its group, then remove it from the DLQ.
    Replay,
    /// Remove it from the DLQ for good.
    Discard,
    /// Return it to the DLQ unchanged.
    Keep,
}

impl Bus {
    /// Takes up to `options.limit` dead letters of `group` on `topic` (from
    /// `<topic>.<group>.dlq`, read as `group`) in hand without settling
    /// them, for an operator to look at and decide on: list them, then
    /// [`release`](DeadLetterBatch::release) them, or
    /// [`settle`](DeadLetterBatch::settle) some by id or reason.
    ///
    /// While the batch is held, the group's other DLQ readers (a replay
    /// running elsewhere) do not see these letters.
    ///
    /// ```
    /// # async fn demo(bus: busline_core::Bus) -> Result<(), busline_core::SubscribeError> {
    /// use busline_core::BrowseOptions;
    ///
    /// let batch = bus.browse_dead_letters("orders", "billing", BrowseOptions::default()).await?;
    /// for held in batch.letters() {
    ///     println!("{:?} {:?}", held.id(), held.letter().map(|l| l.reason));
    /// }
    /// batch.release().await;
    /// # Ok(()) }
    /// ```
    pub async fn browse_dead_letters(
        &self,
        topic: &str,
        group: &str,
        options: BrowseOptions,
    ) -> Result<DeadLetterBatch, SubscribeError> {
        let dlq = dead_letter_topic(topic, group);
        let limit = options.limit.max(1);
        // From the start where the group never read its DLQ (a Kafka group
        // without offsets there): every letter in it is the group's and
        // undecided.
        let from_start = SubscribeOptions::default()
            .max_in_flight(limit)
            .start_from(StartFrom::Earliest)
            // Letters of one key behind each other would stay out of sight.
            .order_per_key(false);
        let mut sub = self.subscribe(&dlq, group, from_start).await?;
        let mut held = Vec::new();
        while held.len() < limit {
            let wait = if held.is_empty() {
                options.first_wait
            } else {
                options.idle_timeout
            };
            let Ok(Some(next)) = tokio::time::timeout(wait, sub.next()).await else {
                break;
            };
            let delivery = next.map_err(|e| {
                SubscribeError::new(SubscribeErrorKind::Connection, dlq.clone()).with_source(e)
            })?;
            let received = delivery.received().cloned();
            let (event, acker) = delivery.into_parts();
            let letter = event.as_ref().ok().and_then(DeadLetter::read);
            held.push(HeldLetter {
                event,
                letter,
                acker,
                received,
            });
        }
        Ok(DeadLetterBatch {
            topic: topic.to_owned(),
            group: group.to_owned(),
            held,
            subscription: sub,
        })
    }
}
