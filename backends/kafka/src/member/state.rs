//! One member's bookkeeping: the records it fetched and has not decided,
//! per partition, handed out one key at a time, and the offsets it may
//! commit.
//!
//! - A record is *undecided* from the moment it is fetched until it is
//!   acked or dead-lettered. The commit point of a partition is its lowest
//!   undecided offset (or, with none, the offset after the last fetched
//!   record), so a commit never passes an undecided record.
//! - Records with a key wait in a lane per key; only a lane's head is ever
//!   handed out, and it stays the head while it waits for a retry, so a key
//!   has at most one event in flight and keeps its order across retries.
//!   Records without a key are handed out as they come.
//! - Every assignment of a partition has its own epoch; a decision about a
//!   record of an earlier epoch (the partition was revoked meanwhile) changes
//!   nothing: the partition's next owner reads the record again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use busline_core::{EnvelopeError, RawEvent};
use bytes::Bytes;

use crate::headers::{self, RawHeaders};

/// A fetched record as the member keeps it.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) headers: RawHeaders,
    pub(crate) payload: Bytes,
    /// Dead letters of this record that could not be written, in a row:
    /// the next try waits longer.
    pub(crate) dead_letter_failures: AtomicU32,
}

impl Record {
    pub(crate) fn new(key: Option<Vec<u8>>, headers: RawHeaders, payload: Bytes) -> Self {
        Self {
            key,
            headers,
            payload,
            dead_letter_failures: AtomicU32::new(0),
        }
    }

    pub(crate) fn decode(&self) -> Result<RawEvent, EnvelopeError> {
        headers::decode(&self.headers, self.key.as_deref(), self.payload.clone())
    }

    /// The record as the broker handed it over, for an operator: its
    /// headers (a header without a value as empty) and, where it has one,
    /// its key as `kafka.key`.
    pub(crate) fn received(&self) -> busline_core::ReceivedMessage {
        let mut headers: Vec<(Bytes, Bytes)> = self
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    Bytes::copy_from_slice(k),
                    v.as_deref().map(Bytes::copy_from_slice).unwrap_or_default(),
                )
            })
            .collect();
        if let Some(key) = &self.key {
            headers.push((Bytes::from_static(b"kafka.key"), Bytes::copy_from_slice(key)));
        }
        busline_core::ReceivedMessage::new(headers, self.payload.clone())
    }
}

/// Names one record of one assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) epoch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// In the ready queue.
    Queued,
    /// Handed out, not settled.
    InFlight,
    /// Nacked, waiting for its retry delay; still its lane's head.
    Delayed,
    /// Waiting behind an earlier record of its key.
    Behind,
}

struct Slot {
    record: Arc<Record>,
    /// Decoded on arrival; taken by the first delivery.
    event: Option<Result<RawEvent, EnvelopeError>>,
    /// Deliveries so far (this member's and, carried over, earlier ones').
    delivered: u32,
    status: Status,
}

struct Partition {
    epoch: u64,
    slots: BTreeMap<i64, Slot>,
    lanes: HashMap<Vec<u8>, VecDeque<i64>>,
    /// The offset after the last fetched record, once known.
    next: Option<i64>,
    /// The last commit point sent.
    committed: Option<i64>,
    /// A revocation is waiting for the partition's deliveries in flight:
    /// nothing more of it is handed out.
    fenced: bool,
}

impl Partition {
    fn commit_point(&self) -> Option<i64> {
        self.slots.keys().next().copied().or(self.next)
    }
}

/// What a member hands out next.
pub(crate) struct Handout {
    pub(crate) ticket: Ticket,
    pub(crate) event: Result<RawEvent, EnvelopeError>,
    pub(crate) attempt: u32,
    pub(crate) record: Arc<Record>,
}

/// A record that left with a revoked partition after being delivered.
pub(crate) struct Abandoned {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) delivered: u32,
}

#[derive(Default)]
pub(crate) struct State {
    partitions: HashMap<i32, Partition>,
    ready: VecDeque<Ticket>,
    buffered: usize,
    in_flight: usize,
    epochs: u64,
    /// Keys get no lanes: every record is handed out as it comes.
    unordered: bool,
}

impl State {
    /// A state that keeps no order per key (`SubscribeOptions::order_per_key`
    /// false).
    pub(crate) fn unordered() -> Self {
        Self {
            unordered: true,
            ..Self::default()
        }
    }

    /// Records fetched and not decided.
    pub(crate) fn buffered(&self) -> usize {
        self.buffered
    }

    /// Deliveries handed out and not settled.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The member now owns `partition`, reading from `start` when known.
    pub(crate) fn assign(&mut self, partition: i32, start: Option<i64>) {
        if self.partitions.contains_key(&partition) {
            return;
        }
        self.epochs += 1;
        self.partitions.insert(
            partition,
            Partition {
                epoch: self.epochs,
                slots: BTreeMap::new(),
                lanes: HashMap::new(),
                next: start,
                committed: start,
                fenced: false,
            },
        );
    }

    /// The member gives up `partition`: its commit point and the records it
    /// had delivered without a decision.
    pub(crate) fn revoke(&mut self, partition: i32) -> Option<(Option<i64>, Vec<Abandoned>)> {
        let p = self.partitions.remove(&partition)?;
        self.buffered -= p.slots.len();
        let abandoned = p
            .slots
            .iter()
            .filter(|(_, s)| s.delivered > 0)
            .map(|(offset, s)| Abandoned {
                partition,
                offset: *offset,
                delivered: s.delivered,
            })
            .collect();
        Some((p.commit_point(), abandoned))
    }

    /// Stops handing out records of `partitions`, which are about to be
    /// revoked.
    pub(crate) fn fence(&mut self, partitions: &[i32]) {
        for id in partitions {
            if let Some(p) = self.partitions.get_mut(id) {
                p.fenced = true;
            }
        }
    }

    /// Deliveries of `partitions` handed out and not settled.
    pub(crate) fn in_flight_of(&self, partitions: &[i32]) -> usize {
        partitions
            .iter()
            .filter_map(|id| self.partitions.get(id))
            .map(|p| p.slots.values().filter(|s| s.status == Status::InFlight).count())
            .sum()
    }

    /// The partitions the member owns.
    pub(crate) fn owned(&self) -> Vec<i32> {
        self.partitions.keys().copied().collect()
    }

    /// Whether a record at `offset` of `partition` is new to the member.
    pub(crate) fn wants(&self, partition: i32, offset: i64) -> bool {
        self.partitions
            .get(&partition)
            .is_some_and(|p| p.next.is_none_or(|n| offset >= n))
    }

    /// Where fetching resumes in each owned partition, when known.
    pub(crate) fn positions(&self) -> Vec<(i32, i64)> {
        self.partitions
            .iter()
            .filter_map(|(id, p)| p.next.map(|n| (*id, n)))
            .collect()
    }

    /// A fetched record; ignored when the partition is not owned or the
    /// record was fetched before.
    pub(crate) fn push(&mut self, partition: i32, offset: i64, record: Arc<Record>, delivered: u32) -> bool {
        let keyed = !self.unordered;
        let Some(p) = self.partitions.get_mut(&partition) else {
            return false;
        };
        if p.next.is_some_and(|n| offset < n) {
            // Fetched again after a seek: it was decided already.
            return false;
        }
        p.next = Some(offset + 1);
        let ticket = Ticket {
            partition,
            offset,
            epoch: p.epoch,
        };
        let mut status = Status::Queued;
        if let Some(key) = record.key.as_ref().filter(|_| keyed) {
            let lane = p.lanes.entry(key.clone()).or_default();
            if !lane.is_empty() {
                status = Status::Behind;
            }
            lane.push_back(offset);
        }
        let event = Some(record.decode());
        p.slots.insert(
            offset,
            Slot {
                record,
                event,
                delivered,
                status,
            },
        );
        self.buffered += 1;
        if status == Status::Queued {
            self.ready.push_back(ticket);
        }
        true
    }

    /// Whether a delivery can be handed out now.
    pub(crate) fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// The next delivery, if any record is ready.
    pub(crate) fn take(&mut self) -> Option<Handout> {
        while let Some(ticket) = self.ready.pop_front() {
            if self.partitions.get(&ticket.partition).is_some_and(|p| p.fenced) {
                // Its partition is being revoked: the next owner has it.
                continue;
            }
            let Some(slot) = self.slot_mut(ticket) else {
                continue;
            };
            if slot.status != Status::Queued {
                continue;
            }
            slot.status = Status::InFlight;
            slot.delivered = slot.delivered.saturating_add(1);
            let event = slot.event.take().unwrap_or_else(|| slot.record.decode());
            let handout = Handout {
                ticket,
                event,
                attempt: slot.delivered,
                record: slot.record.clone(),
            };
            self.in_flight += 1;
            return Some(handout);
        }
        None
    }

    fn slot_mut(&mut self, t: Ticket) -> Option<&mut Slot> {
        let p = self.partitions.get_mut(&t.partition)?;
        if p.epoch != t.epoch {
            return None;
        }
        p.slots.get_mut(&t.offset)
    }

    /// A handed-out delivery is decided (acked or dead-lettered); whether
    /// its partition is still owned by this assignment.
    pub(crate) fn decide(&mut self, t: Ticket) -> bool {
        self.in_flight = self.in_flight.saturating_sub(1);
        let Some(p) = self.partitions.get_mut(&t.partition) else {
            return false;
        };
        if p.epoch != t.epoch {
            return false;
        }
        let Some(slot) = p.slots.remove(&t.offset) else {
            return false;
        };
        self.buffered -= 1;
        if let Some(key) = &slot.record.key {
            if let Some(lane) = p.lanes.get_mut(key) {
                lane.retain(|o| *o != t.offset);
                match lane.front().copied() {
                    None => {
                        p.lanes.remove(key);
                    }
                    Some(head) => {
                        if let Some(next) = p.slots.get_mut(&head) {
                            if next.status == Status::Behind {
                                next.status = Status::Queued;
                                self.ready.push_back(Ticket {
                                    partition: t.partition,
                                    offset: head,
                                    epoch: t.epoch,
                                });
                            }
                        }
                    }
                }
            }
        }
        true
    }

    /// A handed-out delivery waits for a retry; whether it is still owned.
    pub(crate) fn delay(&mut self, t: Ticket) -> bool {
        self.in_flight = self.in_flight.saturating_sub(1);
        match self.slot_mut(t) {
            Some(slot) if slot.status == Status::InFlight => {
                slot.status = Status::Delayed;
                true
            }
            _ => false,
        }
    }

    /// A handed-out delivery is returned unhandled, not as a failed
    /// attempt: it is ready again at once and its next delivery has the
    /// same attempt number.
    pub(crate) fn release(&mut self, t: Ticket) {
        self.in_flight = self.in_flight.saturating_sub(1);
        match self.slot_mut(t) {
            Some(slot) if slot.status == Status::InFlight => {
                slot.status = Status::Queued;
                slot.delivered = slot.delivered.saturating_sub(1);
                self.ready.push_back(t);
            }
            _ => {}
        }
    }

    /// A delayed (or handed-out) record is ready again.
    pub(crate) fn requeue(&mut self, t: Ticket) {
        if let Some(slot) = self.slot_mut(t) {
            if matches!(slot.status, Status::Delayed | Status::InFlight) {
                slot.status = Status::Queued;
                self.ready.push_back(t);
            }
        }
    }

    /// The last commit point sent for `partition` did not arrive: the next
    /// round sends the current one again.
    pub(crate) fn uncommit(&mut self, partition: i32) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            p.committed = None;
        }
    }

    /// Commit points that moved since they were last sent (`all`: every
    /// known one); marks them sent.
    pub(crate) fn commit_points(&mut self, all: bool) -> Vec<(i32, i64)> {
        let mut out = Vec::new();
        for (id, p) in &mut self.partitions {
            if let Some(point) = p.commit_point() {
                if all || p.committed.is_none_or(|c| point > c) {
                    p.committed = Some(point);
                    out.push((*id, point));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: Option<&str>) -> Arc<Record> {
        Arc::new(Record::new(
            key.map(|k| k.as_bytes().to_vec()),
            Vec::new(),
            Bytes::new(),
        ))
    }

    #[test]
    fn commits_stop_at_the_lowest_undecided_offset() {
        let mut s = State::default();
        s.assign(0, Some(10));
        for o in 10..14 {
            assert!(s.push(0, o, rec(None), 0));
        }
        let h: Vec<_> = (0..4).map(|_| s.take().unwrap()).collect();
        assert!(s.decide(h[1].ticket));
        assert!(s.decide(h[3].ticket));
        assert!(s.commit_points(false).is_empty(), "offset 10 is undecided");
        assert!(s.decide(h[0].ticket));
        assert_eq!(s.commit_points(false), vec![(0, 12)]);
        assert!(s.decide(h[2].ticket));
        assert_eq!(s.commit_points(false), vec![(0, 14)]);
        assert_eq!((s.buffered(), s.in_flight()), (0, 0));
        assert!(s.commit_points(false).is_empty(), "sent already");
        s.uncommit(0);
        assert_eq!(
            s.commit_points(false),
            vec![(0, 14)],
            "a failed commit is sent again"
        );
    }

    #[test]
    fn a_key_has_one_event_in_flight_and_keeps_order_across_retries() {
        let mut s = State::default();
        s.assign(0, Some(0));
        s.push(0, 0, rec(Some("a")), 0);
        s.push(0, 1, rec(Some("a")), 0);
        s.push(0, 2, rec(Some("b")), 0);
        let first = s.take().unwrap();
        assert_eq!(first.ticket.offset, 0);
        let other = s.take().unwrap();
        assert_eq!(other.ticket.offset, 2, "key b is not blocked by key a");
        assert!(s.take().is_none(), "a's second event waits for the first");
        assert!(s.delay(first.ticket));
        assert!(s.take().is_none(), "a retry still blocks its key");
        s.requeue(first.ticket);
        let again = s.take().unwrap();
        assert_eq!((again.ticket.offset, again.attempt), (0, 2));
        assert!(s.decide(again.ticket));
        assert_eq!(s.take().unwrap().ticket.offset, 1);
    }

    #[test]
    fn without_order_per_key_a_keys_records_go_out_together() {
        let mut s = State::unordered();
        s.assign(0, Some(0));
        s.push(0, 0, rec(Some("a")), 0);
        s.push(0, 1, rec(Some("a")), 0);
        let first = s.take().unwrap();
        let second = s.take().expect("a's second record does not wait for the first");
        assert_eq!((first.ticket.offset, second.ticket.offset), (0, 1));
        assert!(s.decide(second.ticket));
        assert!(
            s.commit_points(false).is_empty(),
            "nothing is committed past the undecided first"
        );
        assert!(s.decide(first.ticket));
        assert_eq!(s.commit_points(false), vec![(0, 2)]);
    }

    #[test]
    fn a_fenced_partition_hands_out_nothing_and_counts_its_deliveries() {
        let mut s = State::default();
        s.assign(0, Some(0));
        s.assign(1, Some(0));
        s.push(0, 0, rec(Some("a")), 0);
        s.push(0, 1, rec(Some("a")), 0);
        s.push(1, 0, rec(Some("b")), 0);
        s.push(1, 1, rec(Some("b")), 0);
        let a = s.take().unwrap();
        let b = s.take().unwrap();
        assert_eq!((a.ticket.partition, b.ticket.partition), (0, 1));
        s.fence(&[0]);
        assert_eq!(s.in_flight_of(&[0]), 1);
        assert!(s.decide(a.ticket));
        assert_eq!(s.in_flight_of(&[0]), 0);
        assert!(s.decide(b.ticket));
        let next = s.take().expect("partition 1 goes on");
        assert_eq!((next.ticket.partition, next.ticket.offset), (1, 1));
        assert!(s.take().is_none(), "key a's next record waits for the next owner");
        let (point, _) = s.revoke(0).unwrap();
        assert_eq!(point, Some(1), "what settled before the revocation is committed");
    }

    #[test]
    fn a_released_delivery_comes_again_with_the_same_attempt() {
        let mut s = State::default();
        s.assign(0, Some(0));
        s.push(0, 0, rec(Some("a")), 1);
        let first = s.take().unwrap();
        assert_eq!(first.attempt, 2);
        s.release(first.ticket);
        assert_eq!(s.in_flight(), 0);
        let again = s.take().unwrap();
        assert_eq!(again.attempt, 2, "a release is not an attempt");
        s.release(again.ticket);
        let (_, abandoned) = s.revoke(0).unwrap();
        assert_eq!(
            abandoned.iter().map(|a| a.delivered).collect::<Vec<_>>(),
            vec![1],
            "the next member counts only the earlier attempt"
        );
    }

    #[test]
    fn decisions_after_a_revocation_change_nothing() {
        let mut s = State::default();
        s.assign(3, Some(5));
        s.push(3, 5, rec(None), 1);
        let h = s.take().unwrap();
        assert_eq!(h.attempt, 2, "attempts carried over from earlier members");
        let (point, abandoned) = s.revoke(3).unwrap();
        assert_eq!(point, Some(5));
        assert_eq!(abandoned.len(), 1);
        s.assign(3, Some(5));
        assert!(!s.decide(h.ticket));
        assert!(s.commit_points(false).is_empty());
        assert_eq!(s.in_flight(), 0);
    }
}
