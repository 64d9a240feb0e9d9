//! Attempt numbers that never go backwards.
//!
//! The attempt number is the server's delivery count. A server (seen with
//! nats-server 2.9) restarts that count at 1 when it redelivers a nak'ed
//! message after the pull request it would have gone to lost interest,
//! which is what a member leaving its group leaves behind. The retry policy
//! counts on attempts growing, so each connection remembers the attempt of
//! every event it returned to the server and numbers its next delivery at
//! least one higher. Each group counts its own deliveries, so the memory is
//! per group ([`group_key`](crate::shared::group_key)), not per stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Remembered events at most; beyond it the memory starts over (attempts
/// then fall back to the server's count), so events settled by other
/// connections cannot grow it without bound.
const CAPACITY: usize = 100_000;

#[derive(Default)]
pub(crate) struct AttemptFloor {
    returned: Mutex<HashMap<(Arc<str>, u64), u32>>,
}

impl AttemptFloor {
    /// The attempt number of a delivery of stream message `seq` to `group`.
    pub(crate) fn attempt(&self, group: &Arc<str>, seq: u64, delivered: u32) -> u32 {
        let returned = self.returned.lock().unwrap_or_else(|p| p.into_inner());
        match returned.get(&(group.clone(), seq)) {
            Some(last) => delivered.max(last.saturating_add(1)),
            None => delivered,
        }
    }

    /// The delivery with `attempt` went back to the server.
    pub(crate) fn returned(&self, group: &Arc<str>, seq: u64, attempt: u32) {
        let mut returned = self.returned.lock().unwrap_or_else(|p| p.into_inner());
        if returned.len() >= CAPACITY {
            returned.clear();
        }
        returned.insert((group.clone(), seq), attempt);
    }

    /// The message is settled for good.
    pub(crate) fn settled(&self, group: &Arc<str>, seq: u64) {
        let mut returned = self.returned.lock().unwrap_or_else(|p| p.into_inner());
        if !returned.is_empty() {
            returned.remove(&(group.clone(), seq));
        }
    }

    /// The group was removed: a group made again under its name starts at
    /// the server's count.
    pub(crate) fn forget(&self, group: &str) {
        let mut returned = self.returned.lock().unwrap_or_else(|p| p.into_inner());
        if !returned.is_empty() {
            returned.retain(|(g, _), _| &**g != group);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_grow_past_a_reset_server_count() {
        let f = AttemptFloor::default();
        let s: Arc<str> = "s".into();
        assert_eq!(f.attempt(&s, 1, 1), 1);
        f.returned(&s, 1, 3);
        assert_eq!(f.attempt(&s, 1, 1), 4);
        assert_eq!(f.attempt(&s, 1, 7), 7);
        f.settled(&s, 1);
        assert_eq!(f.attempt(&s, 1, 1), 1);
    }

    #[test]
    fn groups_count_apart_and_a_removed_group_starts_over() {
        let f = AttemptFloor::default();
        let (a, b): (Arc<str>, Arc<str>) = ("s.a".into(), "s.b".into());
        f.returned(&a, 1, 3);
        assert_eq!(f.attempt(&b, 1, 1), 1, "another group's returns do not count");
        f.forget("s.a");
        assert_eq!(f.attempt(&a, 1, 1), 1);
    }
}
