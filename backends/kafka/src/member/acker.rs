//! Settling one delivery: ack marks its offset decided; nack keeps it at
//! the head of its key's lane and hands it out again after the delay;
//! dead-letter produces it to the DLQ topic (headers and body byte for
//! byte), awaits the report, then marks it decided; dropped undecided, it
//! is handed out again at once.

use std::sync::Arc;
use std::time::Duration;

use busline_core::{async_trait, Acknowledge, DeadLetter, DeadLetterReason, SettleError, SettleErrorKind};

use super::{MemberShared, Record, Ticket};
use crate::headers;
use crate::publisher;

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
        self.member.state().decide(t);
        self.member
            .bus
            .attempts
            .settled(&self.member.record_id(t.partition, t.offset));
        self.member.wake();
    }

    /// Hands the record out again after `delay`.
    fn retry(&mut self, delay: Duration) {
        self.settled = true;
        let t = self.ticket;
        let owned = self.member.state().delay(t);
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
        let headers = headers::dead_letter(&self.record.headers, &letter);
        let r = &self.record;
        match publisher::produce_raw(&self.member.bus, &dlq, r.key.as_deref(), &r.payload, headers).await {
            Ok(()) => {
                self.decided();
                Ok(())
            }
            Err(e) => {
                // Not stored in the DLQ: the event comes again instead.
                self.retry(Duration::ZERO);
                Err(SettleError::new(SettleErrorKind::DeadLetterPublish, dlq).with_source(e))
            }
        }
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
