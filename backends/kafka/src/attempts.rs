//! Attempt numbers across members.
//!
//! Kafka keeps no delivery count. Within one member the count is kept with
//! the buffered record; when a member leaves with records it handed out but
//! that were not decided, the connection remembers how often each was
//! delivered, so the next member of the same connection numbers its next
//! delivery one higher (a restarted process starts again at 1: at-least-once
//! allows it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Remembered records at most; beyond it the memory starts over.
const CAPACITY: usize = 100_000;

/// (topic, group, partition, offset).
pub(crate) type RecordId = (Arc<str>, Arc<str>, i32, i64);

pub(crate) struct AttemptFloor {
    delivered: Mutex<HashMap<RecordId, u32>>,
    /// Nothing remembered: the common case, answered without the lock.
    empty: AtomicBool,
}

impl AttemptFloor {
    pub(crate) fn new() -> Self {
        Self {
            delivered: Mutex::default(),
            empty: AtomicBool::new(true),
        }
    }
}

impl AttemptFloor {
    /// How often the record was delivered by earlier members.
    pub(crate) fn delivered(&self, id: &RecordId) -> u32 {
        if self.empty.load(Ordering::Acquire) {
            return 0;
        }
        let map = self.delivered.lock().unwrap_or_else(|p| p.into_inner());
        if map.is_empty() {
            return 0;
        }
        map.get(id).copied().unwrap_or(0)
    }

    /// A member left with the record delivered `count` times, undecided.
    pub(crate) fn abandoned(&self, id: RecordId, count: u32) {
        let mut map = self.delivered.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= CAPACITY {
            map.clear();
        }
        let slot = map.entry(id).or_default();
        *slot = (*slot).max(count);
        self.empty.store(false, Ordering::Release);
    }

    /// The record is decided for good.
    pub(crate) fn settled(&self, id: &RecordId) {
        if self.empty.load(Ordering::Acquire) {
            return;
        }
        let mut map = self.delivered.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(id);
        if map.is_empty() {
            self.empty.store(true, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_survive_members_until_settled() {
        let f = AttemptFloor::new();
        let id: RecordId = ("t".into(), "g".into(), 0, 7);
        assert_eq!(f.delivered(&id), 0);
        f.abandoned(id.clone(), 2);
        f.abandoned(id.clone(), 1);
        assert_eq!(f.delivered(&id), 2);
        f.settled(&id);
        assert_eq!(f.delivered(&id), 0);
    }
}
