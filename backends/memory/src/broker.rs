//! The in-process broker: topics and their groups, shared by every client
//! connected to it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use busline_core::dead_letter_topic;
use serde::{Deserialize, Serialize};

use crate::message::Stored;
use crate::queue::{Entry, GroupQueue};

/// Tuning of the memory backend (the `[memory]` section of `BusConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// Messages a group's queue holds before publishers wait for space.
    /// Dead letters are taken even beyond it, so giving up on an event never
    /// blocks.
    pub queue_capacity: usize,
    /// Whether events are stored in wire form — CloudEvents headers in the
    /// memory dialect and the body — and read back through the header
    /// decoder every broker backend shares, on every delivery (the
    /// default), so unit tests on the memory bus run the decode path a
    /// broker's consumer runs. `false` stores envelopes as they are: faster
    /// (no encoding and decoding per event), for benchmarks of everything
    /// but the wire.
    pub wire_mapping: bool,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 100_000,
            wire_mapping: true,
        }
    }
}

/// A topic's groups. Publishing reads the list once per event, so it is kept
/// as a shared snapshot that adding a group replaces.
#[derive(Default)]
pub(crate) struct Topic {
    groups: RwLock<Groups>,
}

/// Group names and their queues.
type Groups = Arc<Vec<(String, Arc<GroupQueue>)>>;

impl Topic {
    fn snapshot(&self) -> Groups {
        self.groups.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

pub(crate) struct BrokerState {
    pub(crate) config: MemoryConfig,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
}

/// An in-process broker. Clients ([`MemoryBus`](crate::MemoryBus)) connected
/// to the same broker see each other's events, as services connected to one
/// real broker do.
///
/// ```
/// let broker = busline_memory::MemoryBroker::new();
/// let publisher = broker.connect();
/// let consumer = broker.connect();
/// # let _ = (publisher, consumer);
/// ```
#[derive(Clone)]
pub struct MemoryBroker {
    pub(crate) state: Arc<BrokerState>,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("config", &self.state.config)
            .finish()
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBroker {
    /// A new, empty broker with default tuning.
    pub fn new() -> Self {
        Self::with_config(MemoryConfig::default())
    }

    /// A new, empty broker.
    pub fn with_config(config: MemoryConfig) -> Self {
        Self {
            state: Arc::new(BrokerState {
                config,
                topics: RwLock::default(),
            }),
        }
    }

    /// The process-wide broker called `name` (`memory://name`; the empty name
    /// is `memory://`), created on first use with `config`.
    pub fn named(name: &str, config: MemoryConfig) -> Self {
        static BROKERS: OnceLock<Mutex<HashMap<String, MemoryBroker>>> = OnceLock::new();
        BROKERS
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_owned())
            .or_insert_with(|| MemoryBroker::with_config(config))
            .clone()
    }

    /// A new client connection.
    pub fn connect(&self) -> crate::MemoryBus {
        crate::MemoryBus::new(self.clone())
    }

    /// Messages waiting in `group` on `topic` (not counting those in
    /// flight); `None` if the group does not exist.
    pub fn depth(&self, topic: &str, group: &str) -> Option<usize> {
        let topic = self
            .state
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)?
            .clone();
        let groups = topic.groups.read().unwrap_or_else(|p| p.into_inner());
        groups.iter().find(|(g, _)| g == group).map(|(_, q)| q.depth())
    }
}

impl BrokerState {
    /// The topics, sorted.
    pub(crate) fn topic_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// The groups of `topic` with their depths, sorted; `None` if the topic
    /// does not exist.
    pub(crate) fn group_depths(&self, topic: &str) -> Option<Vec<(String, usize)>> {
        let mut groups: Vec<(String, usize)> = self
            .topic(topic)?
            .snapshot()
            .iter()
            .map(|(g, q)| (g.clone(), q.depth()))
            .collect();
        groups.sort();
        Some(groups)
    }

    fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    fn topic_or_create(&self, name: &str) -> Arc<Topic> {
        if let Some(t) = self.topic(name) {
            return t;
        }
        self.topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// The queue of `group` on `topic`, created (with its DLQ group) if new.
    pub(crate) fn group(&self, topic: &str, group: &str) -> Arc<GroupQueue> {
        let queue = self.group_only(topic, group);
        self.group_only(&dead_letter_topic(topic, group), group);
        queue
    }

    /// Forgets `group` on `topic` and on its DLQ. Members still holding the
    /// queue drain what it had; publishes no longer reach it.
    pub(crate) fn remove_group(&self, topic: &str, group: &str) {
        for name in [topic.to_owned(), dead_letter_topic(topic, group)] {
            let Some(topic) = self.topic(&name) else { continue };
            let mut groups = topic.groups.write().unwrap_or_else(|p| p.into_inner());
            if groups.iter().any(|(g, _)| g == group) {
                let next = groups.iter().filter(|(g, _)| g != group).cloned().collect();
                *groups = Arc::new(next);
            }
        }
    }

    fn group_only(&self, topic: &str, group: &str) -> Arc<GroupQueue> {
        let topic = self.topic_or_create(topic);
        let mut groups = topic.groups.write().unwrap_or_else(|p| p.into_inner());
        if let Some((_, q)) = groups.iter().find(|(g, _)| g == group) {
            return q.clone();
        }
        let q = GroupQueue::new(self.config.queue_capacity);
        let mut next = Vec::clone(&groups);
        next.push((group.to_owned(), q.clone()));
        *groups = Arc::new(next);
        q
    }

    /// Stores a message for every group of `topic` that has space now;
    /// returns the message and the groups still waiting for space.
    pub(crate) fn try_publish(
        &self,
        topic: &str,
        message: Stored,
    ) -> Option<(Arc<Stored>, Vec<Arc<GroupQueue>>)> {
        let topic = self.topic(topic)?;
        let message = Arc::new(message);
        let mut full = Vec::new();
        for (_, queue) in topic.snapshot().iter() {
            if let Err(entry) = queue.try_push(Entry::new(message.clone())) {
                drop(entry);
                full.push(queue.clone());
            }
        }
        (!full.is_empty()).then_some((message, full))
    }

    /// Stores a dead letter for every group of `topic` at once.
    pub(crate) fn publish_now(&self, topic: &str, message: Stored) {
        let message = Arc::new(message);
        if let Some(topic) = self.topic(topic) {
            for (_, queue) in topic.snapshot().iter() {
                queue.push_now(Entry::new(message.clone()));
            }
        }
    }
}
