//! [`MemoryDedupStore`]: marks in process memory.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use busline_core::BoxError;
use tokio::time::Instant;

use super::DedupStore;

/// A [`DedupStore`] in process memory: marks expire after `ttl`, and at most
/// `max_entries` are kept (the oldest go first). Lost on restart; for one
/// process, or as a cheap front of a durable store.
pub struct MemoryDedupStore {
    ttl: Duration,
    max_entries: usize,
    inner: Mutex<Marks>,
}

#[derive(Default)]
struct Marks {
    by_key: HashMap<(String, String), Instant>,
    /// Keys in marking order, with the instant they were marked, for expiry
    /// and eviction; stale entries (re-marked keys) are skipped.
    order: VecDeque<((String, String), Instant)>,
}

impl std::fmt::Debug for MemoryDedupStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryDedupStore")
            .field("ttl", &self.ttl)
            .field("max_entries", &self.max_entries)
            .field("len", &self.len())
            .finish()
    }
}

impl MemoryDedupStore {
    /// Marks kept for `ttl`, at most `max_entries` (at least 1) of them.
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            ttl,
            max_entries: max_entries.max(1),
            inner: Mutex::new(Marks::default()),
        }
    }

    /// Marks held now (expired ones included until they are purged).
    pub fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    /// Whether no marks are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Marks> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn purge(&self, marks: &mut Marks, now: Instant) {
        while let Some((key, at)) = marks.order.front() {
            let expired = now.saturating_duration_since(*at) >= self.ttl;
            if !expired && marks.by_key.len() <= self.max_entries {
                break;
            }
            if marks.by_key.get(key) == Some(at) {
                marks.by_key.remove(key);
            }
            marks.order.pop_front();
        }
    }
}

#[async_trait]
impl DedupStore for MemoryDedupStore {
    async fn seen(&self, group: &str, event_id: &str) -> Result<bool, BoxError> {
        let now = Instant::now();
        let mut marks = self.lock();
        self.purge(&mut marks, now);
        Ok(marks
            .by_key
            .get(&(group.to_owned(), event_id.to_owned()))
            .is_some_and(|at| now.saturating_duration_since(*at) < self.ttl))
    }

    async fn mark(&self, group: &str, event_id: &str) -> Result<(), BoxError> {
        let now = Instant::now();
        let key = (group.to_owned(), event_id.to_owned());
        let mut marks = self.lock();
        marks.by_key.insert(key.clone(), now);
        marks.order.push_back((key, now));
        self.purge(&mut marks, now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn memory_store_expires_and_bounds() {
        let store = MemoryDedupStore::new(Duration::from_secs(10), 2);
        store.mark("g", "a").await.unwrap();
        assert!(store.seen("g", "a").await.unwrap());
        assert!(!store.seen("other", "a").await.unwrap(), "keys are per group");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!store.seen("g", "a").await.unwrap(), "expired");
        for id in ["b", "c", "d"] {
            store.mark("g", id).await.unwrap();
        }
        assert_eq!(store.len(), 2);
        assert!(!store.seen("g", "b").await.unwrap(), "the oldest was evicted");
        assert!(store.seen("g", "c").await.unwrap() && store.seen("g", "d").await.unwrap());
    }
}
