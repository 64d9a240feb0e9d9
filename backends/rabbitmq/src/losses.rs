//! What a member does when its consumer is lost: how long it waits before
//! reconnecting, when it gives up on a message lapin cannot parse, and
//! what it tells about the group's parking queue.
//!
//! lapin keeps AMQP short strings (header-table keys, `content_type`) as
//! Rust `String`s. A message a foreign producer wrote with such a string
//! that is not UTF-8 fails to parse (`ErrorKind::ParsingError`), and lapin
//! drops the whole connection: the broker takes the message back and, at
//! the head of the queue, sends it again to the next consumer. Reconnecting
//! at once makes a storm (1,647 reconnects in 45 s were measured before
//! this module existed). So after every loss the member waits, doubling
//! from `reconnect_min_backoff`, jittered; after a parse loss it consumes
//! with prefetch 1 for a while (only the poison is sent again, so only its
//! delivery count grows, not that of the valid messages behind it); and
//! after `max_unparseable_losses` parse losses in a row with no delivery in
//! between it gives up with `ConsumeErrorKind::Unparseable`. On quorum
//! queues the broker parks the poison before that (`x-delivery-limit`).

use std::time::Duration;

use busline_core::RetryPolicy;
use lapin::options::QueueDeclareOptions;
use lapin::types::{FieldTable, ShortString};
use lapin::Channel;
use tokio::time::Instant;

use crate::stats::Counters;

/// Whether a consumer's error is lapin failing to parse what the broker
/// sent (as opposed to a lost socket, a missed heartbeat, a closed
/// channel): only then does reconnecting get the same frame again.
pub(crate) fn is_unparseable(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ParsingError(_))
}

/// Bounds of a member's reconnections.
#[derive(Debug, Clone)]
pub(crate) struct LossPolicy {
    pub(crate) max_unparseable: u32,
    pub(crate) min_backoff: Duration,
    pub(crate) max_backoff: Duration,
}

/// After a parse loss the broker is up (it just sent the frame), and
/// waiting does not make the frame readable: the wait only spreads the
/// bounded number of losses out, so it stops growing at this.
const UNPARSEABLE_MAX_BACKOFF: Duration = Duration::from_secs(1);

impl LossPolicy {
    /// The wait before reconnecting after the `streak`-th loss in a row.
    pub(crate) fn delay(&self, streak: u32, unparseable: bool) -> Duration {
        let cap = if unparseable {
            self.max_backoff.min(UNPARSEABLE_MAX_BACKOFF)
        } else {
            self.max_backoff
        };
        RetryPolicy::default()
            .with_backoff(self.min_backoff, cap.max(self.min_backoff))
            .with_jitter(0.25)
            .backoff(streak.max(1))
    }
}

/// When to look at the parking queue again after a parse loss: the broker
/// dead-letters asynchronously, so the message may arrive there after the
/// member already consumes again.
const RECHECKS: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(5)];

/// A member's view of its group's parking queue (quorum queues only).
pub(crate) struct ParkingWatch {
    pub(crate) queue: ShortString,
    /// Messages in it when last looked.
    seen: Option<u32>,
    /// Pending re-checks after the last parse loss.
    rechecks: Vec<Instant>,
}

impl ParkingWatch {
    pub(crate) fn new(queue: ShortString) -> Self {
        Self {
            queue,
            seen: None,
            rechecks: Vec::new(),
        }
    }

    /// The queue's message count, by a passive declaration on `channel`
    /// (the queue was declared on it just before, so it exists).
    pub(crate) async fn count(queue: &ShortString, channel: &Channel) -> lapin::Result<u32> {
        let q = channel
            .queue_declare(
                queue.clone(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(q.message_count())
    }

    /// Takes a fresh count: messages that arrived since the last one are
    /// warned about and counted as parked. The first count is the baseline.
    pub(crate) fn observe(&mut self, count: u32, group_queue: &str, counters: &Counters) {
        if let Some(before) = self.seen {
            if count > before {
                let n = count - before;
                Counters::add(&counters.parked, u64::from(n));
                tracing::warn!(
                    queue = %group_queue,
                    parking = %self.queue,
                    parked = n,
                    "the broker moved {n} message(s) the client cannot parse into `{}` \
                     (quorum delivery limit); busline cannot read them: inspect them in the \
                     management UI (Get messages) or with `rabbitmqadmin get queue={}`",
                    self.queue,
                    self.queue
                );
                self.rechecks.clear();
            }
        }
        self.seen = Some(count);
    }

    /// A parse loss happened: look again a little later.
    pub(crate) fn loss(&mut self) {
        let now = Instant::now();
        self.rechecks = RECHECKS.iter().map(|d| now + *d).collect();
    }

    /// The next re-check, if one is due.
    pub(crate) fn next_recheck(&self) -> Option<Instant> {
        self.rechecks.first().copied()
    }

    /// The next re-check is being made.
    pub(crate) fn rechecked(&mut self) {
        if !self.rechecks.is_empty() {
            self.rechecks.remove(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_losses_back_off_less_than_network_losses() {
        let p = LossPolicy {
            max_unparseable: 3,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        };
        assert!(p.delay(1, true) <= Duration::from_millis(125));
        assert!(p.delay(1, true) >= Duration::from_millis(75));
        assert!(p.delay(20, true) <= UNPARSEABLE_MAX_BACKOFF);
        assert!(p.delay(20, false) > Duration::from_secs(3));
    }

    #[test]
    fn parked_messages_are_counted_from_the_baseline() {
        let counters = Counters::default();
        let mut w = ParkingWatch::new("t::g::unparseable".into());
        w.observe(4, "t::g", &counters);
        assert_eq!(counters.snapshot().parked, 0, "the first count is the baseline");
        w.loss();
        assert!(w.next_recheck().is_some());
        w.observe(5, "t::g", &counters);
        assert_eq!(counters.snapshot().parked, 1);
        assert!(w.next_recheck().is_none(), "seen: no more re-checks");
        w.observe(0, "t::g", &counters);
        w.observe(2, "t::g", &counters);
        assert_eq!(counters.snapshot().parked, 3, "a purge lowers the baseline");
    }
}
