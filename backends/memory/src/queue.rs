//! One group's queue: competing members, order per key, bounded size.
//!
//! Keyed messages wait in a lane per key; a lane hands out its head only
//! when no other message of that key is in flight or waiting for a delayed
//! retry, so one key is handled one event at a time, in order, while
//! different keys proceed in parallel. Every operation is O(1).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use crate::message::Stored;

/// One message as this group sees it.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) message: Arc<Stored>,
    pub(crate) attempt: u32,
    pub(crate) key: Option<Arc<str>>,
}

impl Entry {
    pub(crate) fn new(message: Arc<Stored>) -> Self {
        let key = message.key().map(Arc::from);
        Self {
            message,
            attempt: 1,
            key,
        }
    }
}

enum Ready {
    Unkeyed(Entry),
    Lane(Arc<str>),
}

#[derive(Default)]
struct Lane {
    entries: VecDeque<Entry>,
    /// Its head is in flight or waiting for a delayed retry.
    busy: bool,
}

#[derive(Default)]
struct State {
    ready: VecDeque<Ready>,
    lanes: HashMap<Arc<str>, Lane>,
    /// Messages stored (ready, in lanes, or waiting for a delayed retry).
    stored: usize,
}

pub(crate) struct GroupQueue {
    state: Mutex<State>,
    capacity: usize,
    /// Wakes members waiting for a message.
    available: Notify,
    /// Wakes publishers waiting for space.
    space: Notify,
}

impl GroupQueue {
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            capacity: capacity.max(1),
            available: Notify::new(),
            space: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock would leave the queue consistent
        // (every mutation is a single push or pop), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a new message if there is space; gives it back if the queue
    /// is full.
    pub(crate) fn try_push(&self, entry: Entry) -> Result<(), Entry> {
        let mut st = self.lock();
        if st.stored >= self.capacity {
            return Err(entry);
        }
        Self::append(&mut st, entry);
        drop(st);
        self.available.notify_one();
        Ok(())
    }

    /// Appends a new message, waiting while the queue is full (backpressure).
    pub(crate) async fn push(&self, mut entry: Entry) {
        loop {
            let space = self.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            match self.try_push(entry) {
                Ok(()) => return,
                Err(back) => entry = back,
            }
            space.await;
        }
    }

    /// Appends without waiting for space: for dead letters, which must not
    /// block the handler that gives up on an event.
    pub(crate) fn push_now(&self, entry: Entry) {
        Self::append(&mut self.lock(), entry);
        self.available.notify_one();
    }

    fn append(st: &mut State, entry: Entry) {
        st.stored += 1;
        match entry.key.clone() {
            None => st.ready.push_back(Ready::Unkeyed(entry)),
            Some(key) => {
                let lane = st.lanes.entry(key.clone()).or_default();
                let was_idle = lane.entries.is_empty() && !lane.busy;
                lane.entries.push_back(entry);
                if was_idle {
                    st.ready.push_back(Ready::Lane(key));
                }
            }
        }
    }

    /// Takes the next deliverable message, if any.
    pub(crate) fn try_pop(&self) -> Option<Entry> {
        let mut st = self.lock();
        let taken = match st.ready.pop_front()? {
            Ready::Unkeyed(entry) => entry,
            Ready::Lane(key) => {
                let lane = st.lanes.get_mut(&key).expect("a ready lane exists");
                lane.busy = true;
                lane.entries.pop_front().expect("a ready lane has entries")
            }
        };
        st.stored -= 1;
        let more = !st.ready.is_empty();
        drop(st);
        self.space.notify_one();
        if more {
            // Pass the wake-up on, so an idle member takes the rest while
            // this one is at its in-flight bound.
            self.available.notify_one();
        }
        Some(taken)
    }

    /// A future that resolves when a message may have become available;
    /// create it before calling `try_pop` so no wake-up is missed.
    pub(crate) fn available(&self) -> tokio::sync::futures::Notified<'_> {
        self.available.notified()
    }

    /// An in-flight message is done (acked or dead-lettered): its key's
    /// next message may go.
    pub(crate) fn settle(&self, key: Option<&Arc<str>>) {
        let Some(key) = key else { return };
        let mut st = self.lock();
        let Some(lane) = st.lanes.get_mut(key) else { return };
        lane.busy = false;
        if lane.entries.is_empty() {
            st.lanes.remove(key);
        } else {
            st.ready.push_back(Ready::Lane(key.clone()));
            drop(st);
            self.available.notify_one();
        }
    }

    /// An in-flight message comes back for another attempt, now or after a
    /// delay. Its key stays blocked meanwhile, so order per key holds across
    /// retries.
    pub(crate) fn redeliver(self: &Arc<Self>, mut entry: Entry, delay: Duration) {
        entry.attempt = entry.attempt.saturating_add(1);
        self.requeue(entry, delay);
    }

    /// An in-flight message comes back unhandled with its attempt number as
    /// it was: nothing was tried (shutdown abandoned it).
    pub(crate) fn release(self: &Arc<Self>, entry: Entry) {
        self.requeue(entry, Duration::ZERO);
    }

    fn requeue(self: &Arc<Self>, entry: Entry, delay: Duration) {
        self.lock().stored += 1;
        if delay.is_zero() {
            self.return_to_front(entry);
        } else {
            let queue = Arc::clone(self);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                queue.return_to_front(entry);
            });
        }
    }

    fn return_to_front(&self, entry: Entry) {
        let mut st = self.lock();
        match entry.key.clone() {
            None => st.ready.push_front(Ready::Unkeyed(entry)),
            Some(key) => {
                let lane = st.lanes.entry(key.clone()).or_default();
                lane.busy = false;
                lane.entries.push_front(entry);
                st.ready.push_front(Ready::Lane(key));
            }
        }
        drop(st);
        self.available.notify_one();
    }

    /// Messages stored and not in flight.
    pub(crate) fn depth(&self) -> usize {
        self.lock().stored
    }
}
