//! The member's poller thread: fetches records into the member's state,
//! commits decided offsets every `commit_interval`, pauses fetching while
//! too much is buffered, serves rebalances, and on leaving stops fetching,
//! waits for deliveries in flight to settle (at most `drain_timeout`),
//! commits, and closes the consumer (which leaves the group).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
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
            commit(consumer, member, false, CommitMode::Async);
            last_commit = Instant::now();
        }
        receive(consumer, member, POLL);
    }
    // Leaving: no new records; what is in flight may still be settled.
    set_paused(consumer, true);
    let deadline = Instant::now() + config.drain_timeout;
    while member.state().in_flight() > 0 && Instant::now() < deadline {
        if last_commit.elapsed() >= config.commit_interval {
            commit(consumer, member, false, CommitMode::Async);
            last_commit = Instant::now();
        }
        receive(consumer, member, POLL);
    }
    commit(consumer, member, true, CommitMode::Sync);
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

/// Commits the member's commit points (those that moved, or all).
fn commit(consumer: &BaseConsumer<MemberContext>, member: &MemberShared, all: bool, mode: CommitMode) {
    let points = member.state().commit_points(all);
    if points.is_empty() {
        return;
    }
    tracing::trace!(topic = %member.topic, group = %member.group, ?points, "commit");
    let mut tpl = TopicPartitionList::new();
    for (p, o) in points {
        let _ = tpl.add_partition_offset(&member.topic, p, Offset::Offset(o));
    }
    if let Err(e) = consumer.commit(&tpl, mode) {
        tracing::debug!(topic = %member.topic, group = %member.group, error = %e, "commit failed; a later commit covers it");
    }
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
