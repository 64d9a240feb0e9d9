//! Moving dead letters back to the topic they came from.

use std::time::Duration;

use futures::StreamExt;
use thiserror::Error;

use crate::{dead_letter_topic, Bus, DeadLetter, PublishError, RawEvent, SubscribeError, SubscribeOptions};

/// Extension attribute counting how often an event was replayed from a DLQ:
/// operators see replay loops, and brokers that deduplicate by id see a
/// replay as a new publish.
pub const REPLAY_COUNT: &str = "replaycount";

/// Extension attribute naming the group a replayed event is meant for: a
/// replay goes back to the topic, where every group could see it, and
/// routers of the other groups acknowledge it unhandled (counted as
/// skipped, reason [`SKIP_REPLAYED_FOR_OTHER_GROUP`]).
pub const REPLAY_GROUP: &str = "replaygroup";

/// The skip reason of an event replayed for another group.
pub const SKIP_REPLAYED_FOR_OTHER_GROUP: &str = "replayed_for_another_group";

/// How much to replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayOptions {
    /// Move at most this many events.
    pub max: usize,
    /// Stop when the DLQ yields nothing for this long.
    pub idle_timeout: Duration,
    /// Dead letters whose envelope cannot be read cannot be republished; they
    /// are returned to the DLQ with this delay, so one replay run does not
    /// see them again.
    pub unreadable_delay: Duration,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self {
            max: usize::MAX,
            idle_timeout: Duration::from_secs(2),
            unreadable_delay: Duration::from_secs(600),
        }
    }
}

impl ReplayOptions {
    /// At most `max` events.
    pub fn max(mut self, max: usize) -> Self {
        self.max = max;
        self
    }

    /// Stop after `idle` without a dead letter.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }
}

/// What a replay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Republished to their original topic and removed from the DLQ.
    pub moved: usize,
    /// Left in the DLQ because their envelope is unreadable.
    pub unreadable: usize,
    /// Left in the DLQ because the repair function said [`Repair::Keep`].
    pub kept: usize,
    /// Dropped from the DLQ on purpose by the repair function.
    pub discarded: usize,
    /// Left in the DLQ because their dead-letter attributes name another
    /// topic or group than the DLQ they were read from: anyone who can write
    /// to a DLQ can set those attributes, so they never pick a destination.
    pub misplaced: usize,
}

/// Why a replay stopped early. Nothing is lost: a dead letter leaves the DLQ
/// only after its republish is confirmed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The DLQ could not be read.
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
    /// Republishing failed; the dead letter stays in the DLQ.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// What the repair function wants done with one dead letter.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // built once per dead letter and moved at once
pub enum Repair {
    /// Republish this (possibly changed) event.
    Replay(RawEvent),
    /// Leave it in the DLQ (in a replay it comes back after
    /// `unreadable_delay`).
    Keep,
    /// Remove it from the DLQ without republishing.
    Discard,
}

impl Bus {
    /// Moves up to `options.max` dead letters of `group` on `topic` (from
    /// `<topic>.<group>.dlq`) back to `topic`, without their dead-letter
    /// attributes, for `group` alone: the event carries
    /// [`REPLAY_GROUP`]` = group`, and routers of every other group on the
    /// topic acknowledge it without handling it. A letter whose attributes
    /// name another topic or group is left in the DLQ and counted as
    /// `misplaced`.
    pub async fn replay_dead_letters(
        &self,
        topic: &str,
        group: &str,
        options: ReplayOptions,
    ) -> Result<ReplayReport, ReplayError> {
        self.replay_dead_letters_with(topic, group, options, |event, _| Repair::Replay(event))
            .await
    }

    /// Like [`replay_dead_letters`](Self::replay_dead_letters), passing each
    /// dead letter through `repair` first, e.g. to fix a malformed payload.
    /// `repair` gets the event without its dead-letter attributes, and those
    /// attributes read back as a [`DeadLetter`] (reason, error, attempts, …).
    pub async fn replay_dead_letters_with(
        &self,
        topic: &str,
        group: &str,
        options: ReplayOptions,
        mut repair: impl FnMut(RawEvent, Option<DeadLetter>) -> Repair,
    ) -> Result<ReplayReport, ReplayError> {
        let dlq = dead_letter_topic(topic, group);
        // From the start where the group never read its DLQ (a Kafka group
        // without offsets there): every letter in it is the group's.
        let from_start = SubscribeOptions::default()
            .max_in_flight(1)
            .start_from(crate::StartFrom::Earliest);
        let mut sub = self.subscribe(&dlq, group, from_start).await?;
        let mut report = ReplayReport::default();
        while report.moved + report.discarded + report.unreadable + report.kept + report.misplaced
            < options.max
        {
            let Ok(Some(next)) = tokio::time::timeout(options.idle_timeout, sub.next()).await else {
                break;
            };
            let delivery = next.map_err(|e| {
                SubscribeError::new(crate::SubscribeErrorKind::Connection, dlq.clone()).with_source(e)
            })?;
            let Ok(event) = delivery.event() else {
                report.unreadable += 1;
                let _ = delivery.nack(options.unreadable_delay).await;
                continue;
            };
            let letter = DeadLetter::read(event);
            let event = match prepare_replay(event.clone(), letter.as_ref(), topic, group) {
                Prepared::Misplaced => {
                    report.misplaced += 1;
                    let _ = delivery.nack(options.unreadable_delay).await;
                    continue;
                }
                Prepared::Ready(event) => event,
            };
            match repair(event, letter) {
                Repair::Replay(event) => {
                    if let Err(e) = self.publish_raw(topic, event).await {
                        let _ = delivery.nack(Duration::ZERO).await;
                        return Err(e.into());
                    }
                    report.moved += 1;
                    // A failed ack leaves the letter in the DLQ as well as
                    // republished: at-least-once, never lost.
                    let _ = delivery.ack().await;
                }
                Repair::Keep => {
                    report.kept += 1;
                    let _ = delivery.nack(options.unreadable_delay).await;
                }
                Repair::Discard => {
                    report.discarded += 1;
                    let _ = delivery.ack().await;
                }
            }
        }
        Ok(report)
    }
}

/// A dead letter made ready to go back to its topic, or found to belong
/// elsewhere.
#[allow(clippy::large_enum_variant)] // built once per dead letter and moved at once
pub(crate) enum Prepared {
    Ready(RawEvent),
    /// Its attributes name another topic or group than the DLQ it was read
    /// from: anyone who can write to a DLQ can set those attributes, so they
    /// never pick a destination.
    Misplaced,
}

/// Strips the dead-letter attributes of `event` (read from the DLQ of
/// `group` on `topic`, its attributes read as `letter`), marks it for
/// `group` alone and counts the replay.
pub(crate) fn prepare_replay(
    mut event: RawEvent,
    letter: Option<&DeadLetter>,
    topic: &str,
    group: &str,
) -> Prepared {
    if letter.is_some_and(|l| l.topic != topic || l.group != group) {
        return Prepared::Misplaced;
    }
    DeadLetter::strip(&mut event);
    event.extensions.insert(REPLAY_GROUP.into(), group.to_owned());
    let replays = event
        .extensions
        .get(REPLAY_COUNT)
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    event
        .extensions
        .insert(REPLAY_COUNT.into(), (replays + 1).to_string());
    Prepared::Ready(event)
}
