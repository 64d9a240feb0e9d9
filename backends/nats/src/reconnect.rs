//! What a lost connection means for consumers, and how fast to come back.
//!
//! async-nats drops the whole connection when it cannot parse a message
//! (a header block that is not UTF-8, a header name it refuses) and then
//! reconnects. Whatever the server had written behind that message is lost
//! with the read buffer, and JetStream redelivers all of it together after
//! `ack_wait`, in stream order, the poison first: a consumer pulling many
//! messages at once would lose its neighbours with it on every round, and
//! they would share its delivery count. So after a reconnect members pull
//! one message per request for a while ([`WireWatch`]), which leaves the
//! poison alone on the wire, and reconnect rounds that follow each other
//! closely wait a growing delay ([`StormGuard`]).

use std::sync::atomic::Ordering;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use async_nats::Client;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Reconnect rounds closer than this to the previous one count as a storm.
const STORM_WINDOW: Duration = Duration::from_secs(5);
/// First delay of a storm round, doubled each further round.
const STORM_FIRST_DELAY: Duration = Duration::from_millis(100);

/// The delay before each connection attempt: async-nats' own for repeated
/// failed attempts, and a growing one for rounds that start soon after the
/// previous round, so that a message that kills the connection on every
/// delivery cannot make the client reconnect in a tight loop.
pub(crate) struct StormGuard {
    /// Start of the previous reconnect round, and how many rounds in a row
    /// were closer than [`STORM_WINDOW`].
    last: Mutex<(Option<Instant>, u32)>,
    cap: Duration,
}

impl StormGuard {
    /// `cap` bounds the storm delay; keep it well under `ack_wait`, so the
    /// connection is back before the server's next redelivery or advisory.
    pub(crate) fn new(cap: Duration) -> Self {
        Self {
            last: Mutex::new((None, 0)),
            cap,
        }
    }

    /// The delay before connection attempt `attempts` (1 for the first of a
    /// round; async-nats starts counting again after each success).
    pub(crate) fn delay(&self, attempts: usize) -> Duration {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let own = if attempts <= 1 {
            let now = Instant::now();
            let (previous, streak) = &mut *last;
            *streak = match previous {
                Some(t) if now.duration_since(*t) < STORM_WINDOW => streak.saturating_add(1),
                _ => 0,
            };
            *previous = Some(now);
            Duration::ZERO
        } else {
            // async-nats' default: exponential up to 4 s.
            let exp = u32::try_from(attempts - 1).unwrap_or(u32::MAX).min(12);
            Duration::from_millis(1 << exp).min(Duration::from_secs(4))
        };
        let streak = last.1;
        let storm = match streak {
            0 => Duration::ZERO,
            n => STORM_FIRST_DELAY
                .saturating_mul(1 << (n - 1).min(16))
                .min(self.cap),
        };
        if attempts <= 1 && streak > 0 {
            tracing::warn!(round = streak, delay = ?storm, "NATS connection lost again soon after the last; reconnecting after a delay");
        }
        own.max(storm)
    }
}

/// Tells members whether the connection was re-established lately, from
/// the client's count of successful connects.
#[derive(Default)]
pub(crate) struct WireWatch {
    /// The connect count last seen, and when it last grew.
    seen: Mutex<(Option<u64>, Option<Instant>)>,
    /// The connect count, for members waiting on messages; fed by one task
    /// per connection, started by the first member. (A timer in each
    /// member's wait instead cost a third of consume throughput.)
    connects: OnceLock<watch::Sender<u64>>,
}

/// How often the connection's task reads the connect count.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// The connection as one member saw it when it pulled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WireState {
    /// Successful connects so far.
    pub(crate) connects: u64,
    /// Reconnected within the careful window: pull one at a time.
    pub(crate) careful: bool,
}

impl WireWatch {
    /// A receiver that changes when `client` connects again, watched until
    /// `closed`.
    pub(crate) fn subscribe(&self, client: &Client, closed: &CancellationToken) -> watch::Receiver<u64> {
        self.connects
            .get_or_init(|| {
                let count = || client.statistics().connects.load(Ordering::Relaxed);
                let (tx, _) = watch::channel(count());
                let (client, closed, sender) = (client.clone(), closed.clone(), tx.clone());
                tokio::spawn(async move {
                    let mut look = tokio::time::interval(LOOK_EVERY);
                    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = closed.cancelled() => return,
                            _ = look.tick() => {}
                        }
                        let now = client.statistics().connects.load(Ordering::Relaxed);
                        sender.send_if_modified(|seen| std::mem::replace(seen, now) != now);
                    }
                });
                tx
            })
            .subscribe()
    }

    /// The state of `client`'s connection; `careful` for `window` after
    /// each reconnect.
    pub(crate) fn state(&self, client: &Client, window: Duration) -> WireState {
        let connects = client.statistics().connects.load(Ordering::Relaxed);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen.0 {
            Some(n) if n == connects => {}
            first_look => {
                if first_look.is_some() {
                    seen.1 = Some(Instant::now());
                    tracing::warn!(
                        connects,
                        careful_for = ?window,
                        "NATS connection re-established; pulling one message at a time for a while"
                    );
                }
                seen.0 = Some(connects);
            }
        }
        WireState {
            connects,
            careful: seen.1.is_some_and(|t| t.elapsed() < window),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rounds_in_quick_succession_back_off_up_to_the_cap() {
        let g = StormGuard::new(Duration::from_millis(500));
        assert_eq!(g.delay(1), Duration::ZERO, "the first round is at once");
        let mut delays = Vec::new();
        for _ in 0..6 {
            tokio::time::advance(Duration::from_secs(1)).await;
            delays.push(g.delay(1));
        }
        let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 500, 500, 500]);
        // A failing attempt inside a round keeps at least the storm delay.
        assert_eq!(g.delay(2), Duration::from_millis(500));
        // A quiet spell ends the storm.
        tokio::time::advance(STORM_WINDOW * 2).await;
        assert_eq!(g.delay(1), Duration::ZERO);
        assert_eq!(g.delay(3), Duration::from_millis(4));
    }
}
