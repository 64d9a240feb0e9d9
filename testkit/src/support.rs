//! Small tools for tests against shared brokers: unique names, bounded waits.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use busline_core::{
    dead_letter_topic, Bus, DomainEvent, Event, EventService, HandlerWithoutStateExt, SubscribeOptions,
    Subscription,
};
use tokio::sync::Notify;

/// How long the suite waits for anything before it fails, saying what it
/// waited for. Generous, because a loaded 2-core CI machine is slow; a test
/// that passes never waits this long.
pub const WAIT: Duration = Duration::from_secs(60);

/// A name no other test uses: `<prefix>-<12 hex digits>`, safe as a topic,
/// group, queue or stream name on every broker (lower-case alphanumerics and
/// `-`).
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..12])
}

/// Awaits `fut` for at most `limit`; panics with `what` on timeout.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Waits until `condition` holds, checking every 10 ms, for at most
/// `limit`; panics with `what` on timeout. For state that offers nothing to
/// wait on (counters); prefer a [`Collector`] where there is one.
pub async fn eventually(limit: Duration, what: &str, condition: impl Fn() -> bool) {
    within(limit, what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// The dead letters of `group` on `topic`: a subscription to
/// `<topic>.<group>.dlq` as `group`, the way an operator reads them.
/// Panics if the subscription is refused.
pub async fn dead_letters(bus: &Bus, topic: &str, group: &str) -> Subscription {
    let dlq = dead_letter_topic(topic, group);
    within(
        WAIT,
        &format!("a subscription to {dlq}"),
        bus.subscribe(&dlq, group, SubscribeOptions::default()),
    )
    .await
    .unwrap_or_else(|e| panic!("subscribe to {dlq}: {}", busline_core::ErrorChain(&e)))
}

/// A list that tests append to from handlers and wait on.
#[derive(Debug)]
pub struct Collector<T> {
    items: Mutex<Vec<T>>,
    changed: Notify,
}

impl<T> Default for Collector<T> {
    fn default() -> Self {
        Self {
            items: Mutex::new(Vec::new()),
            changed: Notify::new(),
        }
    }
}

impl<T: Clone> Collector<T> {
    /// A new, shared, empty collector.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Appends an item.
    pub fn push(&self, item: T) {
        self.items.lock().unwrap_or_else(|p| p.into_inner()).push(item);
        self.changed.notify_waiters();
    }

    /// A copy of the items so far.
    pub fn snapshot(&self) -> Vec<T> {
        self.items.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many items so far.
    pub fn len(&self) -> usize {
        self.items.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until `done(items)` holds, for at most `limit`; panics with
    /// `what` and the items' count on timeout.
    pub async fn wait_until(&self, limit: Duration, what: &str, done: impl Fn(&[T]) -> bool) -> Vec<T> {
        let waited = tokio::time::timeout(limit, async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                {
                    let items = self.items.lock().unwrap_or_else(|p| p.into_inner());
                    if done(&items) {
                        return items.clone();
                    }
                }
                changed.await;
            }
        })
        .await;
        match waited {
            Ok(items) => items,
            Err(_) => panic!(
                "timed out after {limit:?} waiting for {what} (have {} items)",
                self.len()
            ),
        }
    }

    /// Waits until there are at least `n` items.
    pub async fn wait_len(&self, n: usize, limit: Duration, what: &str) -> Vec<T> {
        self.wait_until(limit, what, |items| items.len() >= n).await
    }
}

/// A handler that records every event it handles into `sink` and succeeds.
///
/// ```
/// use busline_testkit::events::Ping;
/// use busline_testkit::support::{recorder, Collector};
/// let got = Collector::new();
/// let handler = recorder::<Ping>(&got);
/// # let _ = handler;
/// ```
pub fn recorder<E: Event + Clone>(sink: &Arc<Collector<DomainEvent<E>>>) -> impl EventService<E> {
    let sink = sink.clone();
    // `FnOnce + Clone`: the closure moves its copy of `sink` into the future.
    (move |event: DomainEvent<E>| async move { sink.push(event) }).into_service()
}

/// Counts handled events towards a target and wakes whoever waits for it;
/// for benchmarks, where a [`Collector`] would cost more than what is
/// measured.
#[derive(Debug, Default)]
pub struct Countdown {
    count: AtomicU64,
    target: AtomicU64,
    reached: Notify,
}

impl Countdown {
    /// Counts one event.
    pub fn hit(&self) {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        if n == self.target.load(Ordering::Relaxed) {
            self.reached.notify_one();
        }
    }

    /// Starts a new count towards `target`.
    pub fn reset(&self, target: u64) {
        self.count.store(0, Ordering::Relaxed);
        self.target.store(target, Ordering::Relaxed);
    }

    /// Waits until `target` events are counted (unbounded: benchmarks only).
    pub async fn wait(&self, target: u64) {
        loop {
            let notified = self.reached.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count.load(Ordering::Relaxed) >= target {
                return;
            }
            notified.await;
        }
    }
}
