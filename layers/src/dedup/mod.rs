//! [`DedupLayer`]: the idempotent consumer. Events whose id this group has
//! already handled are skipped.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use busline_core::{BoxError, Context, DomainEvent, Event, Gate, Handler, HandlerError, Layer};
use futures::future::BoxFuture;
use tokio::time::Instant;

/// The skip reason of a duplicate (a metrics label).
pub const SKIP_DUPLICATE: &str = "duplicate";

/// Remembers which events each group has handled, by (group, event id).
///
/// A mark is recorded only after the handler succeeded, so an event whose
/// handler failed is tried again. Two deliveries of one event that run at
/// the same time may both be handled (at-least-once stays the floor); the
/// store makes later repeats cheap and harmless.
#[async_trait]
pub trait DedupStore: Send + Sync + 'static {
    /// Whether `event_id` was marked handled for `group`.
    async fn seen(&self, group: &str, event_id: &str) -> Result<bool, BoxError>;

    /// Marks `event_id` handled for `group`.
    async fn mark(&self, group: &str, event_id: &str) -> Result<(), BoxError>;
}

/// Skips events already handled by this group, as told by a
/// [`DedupStore`]: the handler is not called and the event is acknowledged
/// and counted as skipped ([`HandlerError::skip`] with reason
/// [`SKIP_DUPLICATE`]). After the handler succeeds, the event is marked; a
/// failed mark is logged and does not fail the (handled) event.
///
/// If the store cannot be asked, the call fails as retryable: handling
/// without knowing could handle twice.
///
/// ```
/// use std::time::Duration;
/// use busline_layers::{DedupLayer, MemoryDedupStore};
/// let layer = DedupLayer::new(MemoryDedupStore::new(Duration::from_secs(3600), 100_000));
/// ```
#[derive(Clone)]
pub struct DedupLayer {
    store: Arc<dyn DedupStore>,
}

impl std::fmt::Debug for DedupLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DedupLayer")
    }
}

impl DedupLayer {
    /// Deduplicates through `store`.
    pub fn new(store: impl DedupStore) -> Self {
        Self {
            store: Arc::new(store),
        }
    }

    /// Deduplicates through a shared store.
    pub fn from_arc(store: Arc<dyn DedupStore>) -> Self {
        Self { store }
    }
}

impl<H> Layer<H> for DedupLayer {
    type Handler = Dedup<H>;

    fn layer(&self, inner: H) -> Dedup<H> {
        Dedup {
            inner: Arc::new(inner),
            store: self.store.clone(),
        }
    }
}

/// An idempotent handler; made by [`DedupLayer`].
pub struct Dedup<H> {
    inner: Arc<H>,
    store: Arc<dyn DedupStore>,
}

impl<H> std::fmt::Debug for Dedup<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dedup")
    }
}

impl<E: Event, H: Handler<E>> Handler<E> for Dedup<H> {
    type Future = BoxFuture<'static, Result<(), HandlerError>>;

    fn call(&self, event: DomainEvent<E>, ctx: Context) -> Self::Future {
        let (inner, store) = (self.inner.clone(), self.store.clone());
        Box::pin(async move {
            let (group, id) = (ctx.group().to_owned(), event.id.clone());
            let seen = store
                .seen(&group, &id)
                .await
                .map_err(|e| HandlerError::retryable(format!("dedup store could not be asked: {e}")))?;
            if seen {
                tracing::debug!(%group, event_id = %id, "duplicate event skipped");
                return Err(HandlerError::skip(SKIP_DUPLICATE));
            }
            inner.call(event, ctx).await?;
            if let Err(e) = store.mark(&group, &id).await {
                tracing::warn!(%group, event_id = %id, error = %e, "handled event could not be marked; a repeat would be handled again");
            }
            Ok(())
        })
    }

    fn gate(&self) -> Option<Gate> {
        self.inner.gate()
    }
}

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
