//! What every part of one connection shares: the client, the JetStream
//! context, the topology, and the shutdown state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::Client;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::attempts::AttemptFloor;
use crate::config::NatsConfig;
use crate::reconnect::WireWatch;
use crate::topology::Topology;

pub(crate) struct Shared {
    pub(crate) client: Client,
    pub(crate) js: Context,
    pub(crate) config: Arc<NatsConfig>,
    pub(crate) topology: Topology,
    /// Cancelled by shutdown: subscriptions end, publishes fail `Closed`.
    pub(crate) closed: CancellationToken,
    /// Settlements running in the background (those of dropped deliveries),
    /// which shutdown waits for before it drains the connection.
    pub(crate) settling: TaskTracker,
    /// Deliveries handed out and not yet settled.
    pub(crate) in_flight: InFlight,
    /// Attempts of events this connection returned to the server.
    pub(crate) attempts: AttemptFloor,
    /// Reconnects as the members see them.
    pub(crate) wire: WireWatch,
    /// The groups this connection subscribed to, by [`group_key`]: a token
    /// its advisory watcher and members stop on, so that `remove_group` can
    /// stop them before they find the consumer gone and declare it again.
    pub(crate) groups: Mutex<HashMap<String, CancellationToken>>,
    /// Messages moved aside by the advisory watchers.
    pub(crate) stats: Counters,
}

/// Counts behind [`NatsStats`](crate::NatsStats).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) unparseable: AtomicU64,
    pub(crate) max_delivered: AtomicU64,
}

/// The key of the durable `consumer` on `stream` in per-group state:
/// escaped names never contain `.`, so two pairs never share a key.
pub(crate) fn group_key(stream: &str, consumer: &str) -> String {
    format!("{stream}.{consumer}")
}

impl Shared {
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// The token of the group at `key` on this connection (cancelled with
    /// the connection too), and whether it is new.
    pub(crate) fn group_life(&self, key: &str) -> (CancellationToken, bool) {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(life) = groups.get(key) {
            return (life.clone(), false);
        }
        let life = self.closed.child_token();
        groups.insert(key.to_owned(), life.clone());
        (life, true)
    }

    /// Stops this connection's watcher and members of the group at `key`,
    /// and forgets the attempts it returned; a later subscribe starts anew.
    pub(crate) fn end_group(&self, key: &str) {
        let life = self.groups.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
        if let Some(life) = life {
            life.cancel();
        }
        self.attempts.forget(key);
    }

    /// Runs a settlement in the background, tracked so shutdown waits for it;
    /// outside a runtime (a delivery dropped after its runtime ended) the
    /// server redelivers after `ack_wait` instead.
    pub(crate) fn spawn_settle(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(self.settling.track_future(fut));
        }
    }
}

/// A count of unsettled deliveries that can be waited on.
#[derive(Default)]
pub(crate) struct InFlight {
    count: AtomicUsize,
    zero: Notify,
}

impl InFlight {
    pub(crate) fn enter(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn leave(&self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.zero.notify_waiters();
        }
    }

    /// Waits until none is in flight, at most `limit`; whether it got there.
    pub(crate) async fn wait_idle(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, async {
            loop {
                let zero = self.zero.notified();
                tokio::pin!(zero);
                zero.as_mut().enable();
                if self.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                zero.await;
            }
        })
        .await
        .is_ok()
    }
}
