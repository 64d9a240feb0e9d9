//! Progress acks for long handlers: while a delivery is unsettled, the
//! server is told every so often that work is ongoing (`+WPI`), so its
//! `ack_wait` does not run out under a slow handler and redeliver the event
//! to another member meanwhile.
//!
//! One task per subscription does this for all of its deliveries, rather
//! than a timer per delivery: most deliveries settle long before the first
//! progress ack is due, and then cost one map insert and remove.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::{Client, Subject};
use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const PROGRESS: Bytes = Bytes::from_static(b"+WPI");

#[derive(Default)]
pub(crate) struct Keepalive {
    next: AtomicU64,
    pending: Mutex<HashMap<u64, (Subject, Instant)>>,
}

impl Keepalive {
    /// Starts the keep-alive task of one subscription; it ends when the
    /// subscription and all its deliveries are gone, or on shutdown.
    pub(crate) fn start(client: Client, ack_wait: Duration, closed: CancellationToken) -> Arc<Self> {
        let this = Arc::new(Self::default());
        let weak = Arc::downgrade(&this);
        // A quarter of ack_wait between rounds, and a delivery is refreshed
        // once it is half a round old: the first progress ack goes out well
        // before ack_wait, even for a delivery that waited in the client.
        let tick = (ack_wait / 4).max(Duration::from_millis(50));
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = closed.cancelled() => return,
                    _ = interval.tick() => {}
                }
                let Some(this) = Weak::upgrade(&weak) else { return };
                for reply in this.due(tick / 2) {
                    // A lost progress ack only risks a redelivery, which
                    // at-least-once allows.
                    let _ = client.publish(reply, PROGRESS).await;
                }
            }
        });
        this
    }

    fn due(&self, age: Duration) -> Vec<Subject> {
        let now = Instant::now();
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending
            .values()
            .filter(|(_, since)| now.duration_since(*since) >= age)
            .map(|(reply, _)| reply.clone())
            .collect()
    }

    /// Keeps `reply`'s delivery alive until [`Keepalive::remove`].
    pub(crate) fn insert(&self, reply: Subject) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (reply, Instant::now()));
        id
    }

    pub(crate) fn remove(&self, id: u64) {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }
}
