//! The member's poller thread: fetches records into the member's state,
//! commits decided offsets every `commit_interval`, pauses fetching while
//! too much is buffered, serves rebalances, and on leaving stops fetching,
//! waits for deliveries in flight to settle (at most `drain_timeout`),
//! commits, and closes the consumer (which leaves the group).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use super::context::MemberContext;
use super::{MemberShared, Record};
use crate::headers;

const POLL: Duration = Duration::from_millis(50);

pub(crate) fn spawn(consumer: BaseConsumer<MemberContext>, member: Arc<MemberShared>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("busline-kafka-{}", member.topic))
        .spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&consumer, &member)));
            if let Err(panic) = outcome {
                // A bug, not input: the member stops and its stream reports
                // it, so the router ends with an error instead of waiting
                // on a member that consumes nothing.
                let what = panic_text(&*panic);
                tracing::error!(topic = %member.topic, group = %member.group, panic = %what, "poller thread panicked; the member stops");
                member.crashed(what);
            }
            // Closing runs the final revocation (commit) and leaves the group.
            drop(consumer);
            member.done.send_replace(true);
            member.wake();
        })?;
    Ok(())
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

fn run(consumer: &BaseConsumer<MemberContext>, member: &MemberShared) {
    let commits = CommitQueue::new(consumer);
    run_with(consumer, member, &commits);
    commits.drain(member);
}

fn run_with(consumer: &BaseConsumer<MemberContext>, member: &MemberShared, commits: &CommitQueue) {
    let config = &member.bus.config;
    let mut last_commit = Instant::now();
    let mut paused = false;
    while !member.is_leaving() {
        let buffered = member.state().buffered();
        if !paused && buffered >= config.max_buffered.max(1) {
            paused = set_paused(consumer, true);
        } else if paused && buffered <= config.max_buffered / 2 {
            rewind(consumer, member);
            paused = !set_paused(consumer, false);
        }
        if last_commit.elapsed() >= config.commit_interval {
            commit(consumer, member, false, Some(commits));
            last_commit = Instant::now();
        }
        receive(consumer, member, POLL);
        commits.drain(member);
    }
    // Leaving: no new records; what is in flight may still be settled.
    set_paused(consumer, true);
    let deadline = Instant::now() + config.drain_timeout;
    while member.state().in_flight() > 0 && Instant::now() < deadline {
        if last_commit.elapsed() >= config.commit_interval {
            commit(consumer, member, false, Some(commits));
            last_commit = Instant::now();
        }
        receive(consumer, member, POLL);
        commits.drain(member);
    }
    commit(consumer, member, true, None);
}

/// Records taken from the consumer per round at most, to hand them to the
/// state under one lock.
const BATCH: usize = 256;

fn receive(consumer: &BaseConsumer<MemberContext>, member: &MemberShared, timeout: Duration) {
    let mut received = Vec::new();
    let mut wait = timeout;
    while received.len() < BATCH {
        match consumer.poll(wait) {
            Some(Ok(message)) => received.push(record(&message)),
            Some(Err(e)) => {
                tracing::debug!(topic = %member.topic, group = %member.group, error = %e, "consumer error");
                break;
            }
            None => break,
        }
        wait = Duration::ZERO;
    }
    if received.is_empty() {
        return;
    }
    let attempts = &member.bus.attempts;
    let ready = {
        let mut state = member.state();
        for (partition, offset, record) in received {
            if state.wants(partition, offset) {
                let delivered = attempts.delivered(&member.record_id(partition, offset));
                state.push(partition, offset, record, delivered);
            }
        }
        state.has_ready()
    };
    if ready {
        member.wake();
    }
}

fn record(message: &BorrowedMessage<'_>) -> (i32, i64, Arc<Record>) {
    let record = Arc::new(Record::new(
        message.key().map(<[u8]>::to_vec),
        headers::from_message(message),
        Bytes::copy_from_slice(message.payload().unwrap_or_default()),
    ));
    (message.partition(), message.offset(), record)
}

/// Commits the member's commit points (those that moved, or all):
/// asynchronously through `queue`, else synchronously.
fn commit(
    consumer: &BaseConsumer<MemberContext>,
    member: &MemberShared,
    all: bool,
    queue: Option<&CommitQueue>,
) {
    let points = member.state().commit_points(all);
    if points.is_empty() {
        return;
    }
    tracing::trace!(topic = %member.topic, group = %member.group, ?points, "commit");
    let mut tpl = TopicPartitionList::new();
    for (p, o) in points {
        let _ = tpl.add_partition_offset(&member.topic, p, Offset::Offset(o));
    }
    let sent = match queue {
        Some(q) => q.commit(consumer, &tpl),
        None => consumer.commit(&tpl, CommitMode::Sync),
    };
    if let Err(e) = sent {
        // Asynchronous: the commit could not be sent at all (its answer
        // comes through the queue); synchronous: the answer itself.
        member.commit_failed("offset commit", &partitions(&tpl, &member.topic), &e);
    }
}

/// Answers to the member's asynchronous commits.
///
/// rdkafka's `commit_callback` never sees the answer to a manual
/// asynchronous commit: librdkafka replies to a reply queue or an
/// `offset_commit_cb`, rdkafka sets neither, and the failure is only logged
/// (`COMMITFAIL`). So commits go through `rd_kafka_commit_queue` with a
/// queue of the member's own, drained on the poller thread.
struct CommitQueue {
    queue: *mut rdsys::rd_kafka_queue_t,
}

impl CommitQueue {
    fn new(consumer: &BaseConsumer<MemberContext>) -> Self {
        // SAFETY: the client is alive; the queue is destroyed (Drop) before
        // the consumer, which `spawn` drops only after `run` returns.
        let queue = unsafe { rdsys::rd_kafka_queue_new(consumer.client().native_ptr()) };
        Self { queue }
    }

    fn commit(&self, consumer: &BaseConsumer<MemberContext>, tpl: &TopicPartitionList) -> KafkaResult<()> {
        // SAFETY: client, list and queue are valid for the call; librdkafka
        // copies the list.
        let err = unsafe {
            rdsys::rd_kafka_commit_queue(
                consumer.client().native_ptr(),
                tpl.ptr(),
                self.queue,
                None,
                std::ptr::null_mut(),
            )
        };
        if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
            Ok(())
        } else {
            Err(KafkaError::ConsumerCommit(err.into()))
        }
    }

    /// Counts and reports the failed commits answered so far.
    fn drain(&self, member: &MemberShared) {
        loop {
            // SAFETY: the queue is valid; each event is destroyed below.
            let event = unsafe { rdsys::rd_kafka_queue_poll(self.queue, 0) };
            if event.is_null() {
                return;
            }
            let (err, failed) = unsafe { commit_result(event, &member.topic) };
            unsafe { rdsys::rd_kafka_event_destroy(event) };
            match err {
                // Nothing to commit is not a failure.
                RDKafkaErrorCode::NoError | RDKafkaErrorCode::NoOffset if failed.is_empty() => {}
                RDKafkaErrorCode::NoError => {
                    member.commit_failed("offset commit", &failed, &"refused for some partitions");
                }
                code => member.commit_failed("offset commit", &failed, &code),
            }
        }
    }
}

/// The error of a commit answer and the partitions of `topic` it failed.
///
/// # Safety
/// `event` is a valid event, alive for the call.
unsafe fn commit_result(event: *mut rdsys::rd_kafka_event_t, topic: &str) -> (RDKafkaErrorCode, Vec<i32>) {
    let err = rdsys::rd_kafka_event_error(event);
    let list = rdsys::rd_kafka_event_topic_partition_list(event);
    let mut failed = Vec::new();
    if !list.is_null() {
        let list = &*list;
        for i in 0..usize::try_from(list.cnt).unwrap_or(0) {
            let e = &*list.elems.add(i);
            let ours = !e.topic.is_null() && std::ffi::CStr::from_ptr(e.topic).to_bytes() == topic.as_bytes();
            if ours
                && (err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR
                    || e.err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
            {
                failed.push(e.partition);
            }
        }
    }
    (err.into(), failed)
}

impl Drop for CommitQueue {
    fn drop(&mut self) {
        // SAFETY: created by `rd_kafka_queue_new`, destroyed once.
        unsafe { rdsys::rd_kafka_queue_destroy(self.queue) };
    }
}

/// The partitions of `topic` in `tpl`.
pub(crate) fn partitions(tpl: &TopicPartitionList, topic: &str) -> Vec<i32> {
    tpl.elements_for_topic(topic)
        .iter()
        .map(|e| e.partition())
        .collect()
}

/// With `fetch_rewind`, moves the fetch positions back before resuming
/// (see [`KafkaConfig::fetch_rewind`](crate::KafkaConfig::fetch_rewind)).
fn rewind(consumer: &BaseConsumer<MemberContext>, member: &MemberShared) {
    let rewind = i64::from(member.bus.config.fetch_rewind);
    if rewind == 0 {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (p, next) in member.state().positions() {
        let _ = tpl.add_partition_offset(&member.topic, p, Offset::Offset((next - rewind).max(0)));
    }
    if let Err(e) = consumer.seek_partitions(tpl, member.bus.config.operation_timeout) {
        tracing::debug!(topic = %member.topic, error = %e, "cannot rewind before resuming");
    }
}

/// Pauses or resumes fetching of the whole assignment; whether it worked.
fn set_paused(consumer: &BaseConsumer<MemberContext>, pause: bool) -> bool {
    let Ok(assignment) = consumer.assignment() else {
        return false;
    };
    let result = if pause {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    result.is_ok()
}
