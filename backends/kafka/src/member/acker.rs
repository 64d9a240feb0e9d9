//! Settling one delivery: ack marks its offset decided; nack keeps it at
//! the head of its key's lane and hands it out again after the delay;
//! release hands it out again at once without counting the attempt;
//! dead-letter produces it to the DLQ topic (headers and body byte for
//! byte), awaits the report, then marks it decided; dropped undecided, it
//! is handed out again at once.
//!
//! A dead letter that cannot be written hands its record out again after a
//! backoff that grows with each failure of that record
//! ([`KafkaConfig::dead_letter_backoff`](crate::KafkaConfig::dead_letter_backoff)).
//! One refused for its size is written at once as a smaller letter with
//! reason `too_large`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use busline_core::backend::{async_trait, Acknowledge};
use busline_core::{DeadLetter, DeadLetterReason, PublishError, SettleError, SettleErrorKind};

use super::{MemberShared, Record, Ticket};
use crate::errors::is_too_large;
use crate::headers;
use crate::publisher;

/// Body bytes a dead letter refused for its size keeps: enough to inspect,
/// far below any broker's message size limit.
const CUT_BODY: usize = 64 * 1024;

pub(crate) struct KafkaAcker {
    member: Arc<MemberShared>,
    ticket: Ticket,
    record: Arc<Record>,
    attempt: u32,
    settled: bool,
}

impl KafkaAcker {
    pub(crate) fn new(member: Arc<MemberShared>, ticket: Ticket, record: Arc<Record>, attempt: u32) -> Self {
        Self {
            member,
            ticket,
            record,
            attempt,
            settled: false,
        }
    }

    fn decided(&mut self) {
        self.settled = true;
        let t = self.ticket;
        let owned = self.member.state().decide(t);
        if owned {
            self.member
                .bus
                .attempts
                .settled(&self.member.record_id(t.partition, t.offset));
        }
        // Not owned: the partition was revoked before the decision, nothing
        // was committed for it, and its next owner delivers it again, as a
        // further attempt.
        self.member.settled_one();
        self.member.wake();
    }

    /// Hands the record out again after `delay`.
    fn retry(&mut self, delay: Duration) {
        self.settled = true;
        let t = self.ticket;
        let owned = self.member.state().delay(t);
        self.member.settled_one();
        self.member.wake();
        if !owned {
            return;
        }
        let member = self.member.clone();
        let requeue = move || {
            member.state().requeue(t);
            member.wake();
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if !delay.is_zero() => {
                rt.spawn(async move {
                    tokio::time::sleep(delay).await;
                    requeue();
                });
            }
            _ => requeue(),
        }
    }

    async fn produce_dead_letter(&mut self, letter: DeadLetter) -> Result<(), SettleError> {
        let dlq = letter.dead_letter_topic();
        let r = self.record.clone();
        let bus = &self.member.bus;
        let headers = headers::dead_letter(&r.headers, &letter);
        let mut result = publisher::produce_raw(bus, &dlq, r.key.as_deref(), &r.payload, headers).await;
        if let Err(e) = &result {
            if is_too_large(e) {
                result = self.produce_cut(&dlq, &letter, e).await;
            }
        }
        match result {
            Ok(()) => {
                r.dead_letter_failures.store(0, Ordering::Relaxed);
                self.decided();
                Ok(())
            }
            Err(e) => {
                // Not stored in the DLQ: the record comes again, later each
                // time, so a DLQ that keeps refusing is never a hot loop.
                let failures = r.dead_letter_failures.fetch_add(1, Ordering::Relaxed) + 1;
                let delay = bus.config.dead_letter_delay(failures);
                tracing::warn!(topic = %self.member.topic, group = %self.member.group, dlq, failures, ?delay, error = %busline_core::ErrorChain(&e), "dead letter not written; its record comes again after the delay");
                self.retry(delay);
                Err(SettleError::new(SettleErrorKind::DeadLetterPublish, dlq).with_source(e))
            }
        }
    }

    /// A letter refused for its size, written again as one that fits:
    /// reason `too_large` (the original reason and error in the error
    /// text), the body cut, the original body size as an extension; with
    /// the record's own headers while they fit.
    async fn produce_cut(
        &self,
        dlq: &str,
        letter: &DeadLetter,
        refusal: &PublishError,
    ) -> Result<(), PublishError> {
        let r = &self.record;
        let size = r.payload.len();
        let none = headers::RawHeaders::new();
        let mut last = None;
        for (original, cut) in [(&r.headers, CUT_BODY.min(size)), (&r.headers, 0), (&none, 0)] {
            let error = format!(
                "{}: {}; its dead letter ({size} bytes of body) was refused for its size ({refusal}); written with the body cut to {cut} bytes{}",
                letter.reason.as_str(),
                letter.error,
                if original.is_empty() { " and without the record's headers" } else { "" },
            );
            let small = DeadLetter {
                reason: DeadLetterReason::TooLarge,
                error,
                ..letter.clone()
            };
            let headers = headers::cut_dead_letter(original, &small, size);
            match publisher::produce_raw(
                &self.member.bus,
                dlq,
                r.key.as_deref(),
                &r.payload[..cut],
                headers,
            )
            .await
            {
                Err(e) if is_too_large(&e) => last = Some(e),
                done => return done,
            }
        }
        Err(last.expect("at least one shape was tried"))
    }
}

#[async_trait]
impl Acknowledge for KafkaAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), SettleError> {
        self.decided();
        Ok(())
    }

    async fn nack(mut self: Box<Self>, retry_after: Duration) -> Result<(), SettleError> {
        let bound = self.member.bus.config.max_attempts;
        if bound > 0 && self.attempt >= bound {
            // The in-partition retry bound: the key must move on.
            let letter = DeadLetter {
                reason: DeadLetterReason::MaxAttemptsExceeded,
                error: format!(
                    "nacked {} times (the backend's in-partition retry bound)",
                    self.attempt
                ),
                topic: self.member.topic.to_string(),
                group: self.member.group.to_string(),
                attempts: self.attempt,
                failed_at: chrono::Utc::now(),
            };
            return self.produce_dead_letter(letter).await;
        }
        self.retry(retry_after);
        Ok(())
    }

    async fn release(mut self: Box<Self>) -> Result<(), SettleError> {
        // Left undecided, so nothing is committed past it; handed out again
        // at once with the same attempt number, here or, through the
        // connection's attempt memory, by the next member in this process.
        self.settled = true;
        self.member.state().release(self.ticket);
        self.member.settled_one();
        self.member.wake();
        Ok(())
    }

    async fn dead_letter(mut self: Box<Self>, letter: DeadLetter) -> Result<(), SettleError> {
        self.produce_dead_letter(letter).await
    }
}

impl Drop for KafkaAcker {
    fn drop(&mut self) {
        if !self.settled {
            self.retry(Duration::ZERO);
        }
    }
}
