//! Confirmed publishing over a pool of channels.
//!
//! lapin assigns a publish its confirm sequence number and queues its frames
//! in two separate steps, so two tasks publishing on one channel at once
//! could get their confirmations swapped. Each channel therefore takes one
//! sender at a time, but only while the frames are handed to the socket:
//! confirmations are awaited after the channel is released, so many
//! publishes are in flight on every channel and concurrent publishers
//! spread over the pool.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use tokio::sync::{watch, Mutex};
use tokio::time::{timeout_at, Instant};

use crate::connection::{Link, LinkError};

/// Why a publish did not get a positive confirmation.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The bus is shut down.
    Closed,
    /// No connection, or it or the channel failed before the confirmation.
    Connection(String),
    /// The broker nacked it.
    Rejected,
    /// Mandatory and no queue is bound for it.
    Unroutable(String),
    /// The broker did not answer in time (no confirmation within
    /// `confirm_timeout`, or a channel or send within `operation_timeout`);
    /// it may be stored.
    Timeout,
    /// The exchange does not exist (404).
    NotFound(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Closed => f.write_str("the bus is shut down"),
            Failure::Connection(e) => write!(f, "connection failed: {e}"),
            Failure::Rejected => f.write_str("the broker nacked the message"),
            Failure::Unroutable(why) => write!(f, "returned by the broker: {why}"),
            Failure::Timeout => f.write_str("the broker did not answer in time"),
            Failure::NotFound(e) => write!(f, "exchange not found: {e}"),
        }
    }
}

impl std::error::Error for Failure {}

impl From<LinkError> for Failure {
    fn from(e: LinkError) -> Self {
        match e {
            LinkError::Closed => Failure::Closed,
            LinkError::Connect(e) => Failure::Connection(e),
        }
    }
}

/// One message to publish.
pub(crate) struct Outgoing<'a> {
    pub(crate) exchange: ShortString,
    pub(crate) routing_key: ShortString,
    pub(crate) properties: BasicProperties,
    pub(crate) body: &'a [u8],
    pub(crate) mandatory: bool,
}

/// A publish whose frames are on their way; await it for the confirmation.
pub(crate) struct Pending {
    confirm: PublisherConfirm,
}

struct Slot {
    channel: Option<(u64, Channel)>,
}

pub(crate) struct Publisher {
    link: Arc<Link>,
    slots: Vec<Mutex<Slot>>,
    next: AtomicUsize,
    confirm_timeout: Duration,
    operation_timeout: Duration,
    closed: watch::Receiver<bool>,
}

impl Publisher {
    pub(crate) fn new(
        link: Arc<Link>,
        channels: usize,
        confirm_timeout: Duration,
        operation_timeout: Duration,
        closed: watch::Receiver<bool>,
    ) -> Self {
        Self {
            link,
            slots: (0..channels.max(1))
                .map(|_| Mutex::new(Slot { channel: None }))
                .collect(),
            next: AtomicUsize::new(0),
            confirm_timeout,
            operation_timeout,
            closed,
        }
    }

    fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Publishes one message and waits for its confirmation.
    pub(crate) async fn publish(&self, message: Outgoing<'_>) -> Result<(), Failure> {
        let mut pending = self.send_all(std::iter::once(message)).await?;
        self.confirm(pending.pop().expect("one message sent")).await
    }

    /// Sends `messages` in order on one channel and returns their pending
    /// confirmations; stops at the first failure (earlier ones may still be
    /// confirmed, and are not awaited). Waiting for the channel, opening it
    /// and handing over the frames share one `operation_timeout`: a broker
    /// or network that stalls yields `Timeout`, and the slot's channel,
    /// whose state is then unknown, is replaced on its next use.
    pub(crate) async fn send_all<'a>(
        &self,
        messages: impl IntoIterator<Item = Outgoing<'a>>,
    ) -> Result<Vec<Pending>, Failure> {
        let deadline = Instant::now() + self.operation_timeout;
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = timeout_at(deadline, self.slots[index].lock())
            .await
            .map_err(|_| Failure::Timeout)?;
        if self.is_closed() {
            return Err(Failure::Closed);
        }
        match timeout_at(deadline, self.send_locked(&mut slot, messages)).await {
            Ok(sent) => sent,
            Err(_) => {
                reset(&mut slot);
                Err(if self.is_closed() {
                    Failure::Closed
                } else {
                    Failure::Timeout
                })
            }
        }
    }

    async fn send_locked<'a>(
        &self,
        slot: &mut Slot,
        messages: impl IntoIterator<Item = Outgoing<'a>>,
    ) -> Result<Vec<Pending>, Failure> {
        let channel = self.channel(slot).await?;
        let mut out = Vec::new();
        for m in messages {
            let sent = channel
                .basic_publish(
                    m.exchange,
                    m.routing_key,
                    BasicPublishOptions {
                        mandatory: m.mandatory,
                        ..BasicPublishOptions::default()
                    },
                    m.body,
                    m.properties,
                )
                .await;
            match sent {
                Ok(confirm) => out.push(Pending { confirm }),
                Err(e) => {
                    slot.channel = None;
                    return Err(self.failure(e));
                }
            }
        }
        Ok(out)
    }

    /// The slot's confirm channel, opened on the live connection if it has
    /// none or its channel died.
    async fn channel(&self, slot: &mut Slot) -> Result<Channel, Failure> {
        if let Some((_, ch)) = &slot.channel {
            if ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        slot.channel = None;
        let live = self.link.connection().await?;
        let ch = live
            .connection
            .create_channel()
            .await
            .map_err(|e| self.failure(e))?;
        // Kept before confirm.select answers, so a timeout closes it too.
        slot.channel = Some((live.generation, ch.clone()));
        if let Err(e) = ch.confirm_select(ConfirmSelectOptions::default()).await {
            reset(slot);
            return Err(self.failure(e));
        }
        Ok(ch)
    }

    fn failure(&self, e: lapin::Error) -> Failure {
        if self.is_closed() {
            return Failure::Closed;
        }
        match e.kind() {
            lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 404 => Failure::NotFound(e.to_string()),
            _ => Failure::Connection(e.to_string()),
        }
    }

    /// Waits for one confirmation.
    pub(crate) async fn confirm(&self, pending: Pending) -> Result<(), Failure> {
        match tokio::time::timeout(self.confirm_timeout, pending.confirm).await {
            Err(_) => Err(Failure::Timeout),
            Ok(confirmation) => self.confirmed(confirmation),
        }
    }

    /// Waits for every confirmation of a batch under one timeout (not one
    /// timer per message); the first failure, if any.
    pub(crate) async fn confirm_all(&self, pending: Vec<Pending>) -> Result<(), Failure> {
        let all = futures::future::join_all(pending.into_iter().map(|p| p.confirm));
        match tokio::time::timeout(self.confirm_timeout, all).await {
            Err(_) => Err(Failure::Timeout),
            Ok(confirmations) => confirmations
                .into_iter()
                .map(|c| self.confirmed(c))
                .find_map(Result::err)
                .map_or(Ok(()), Err),
        }
    }

    fn confirmed(&self, confirmation: lapin::Result<Confirmation>) -> Result<(), Failure> {
        let confirmation = confirmation.map_err(|e| self.failure(e))?;
        match confirmation {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(returned)) => Err(Failure::Unroutable(format!(
                "{} {}",
                returned.reply_code, returned.reply_text
            ))),
            Confirmation::Nack(_) if self.is_closed() => Err(Failure::Closed),
            Confirmation::Nack(_) => Err(Failure::Rejected),
        }
    }

    /// Waits for the confirmations outstanding on every channel, then
    /// closes the channels, all within `grace` even if the broker does not
    /// answer. New publishes already fail: `closed` is set.
    pub(crate) async fn close(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let slots = self.slots.iter().map(|slot| async move {
            let Ok(mut slot) = timeout_at(deadline, slot.lock()).await else {
                return;
            };
            if let Some((_, ch)) = slot.channel.take() {
                if ch.status().connected() {
                    let _ = timeout_at(deadline, ch.wait_for_confirms()).await;
                    let _ = timeout_at(deadline, ch.close(200, "busline shutdown".into())).await;
                }
            }
        });
        futures::future::join_all(slots).await;
    }
}

/// Forgets a slot's channel whose state is unknown (a call on it timed
/// out), closing it in the background, bounded, so it does not linger on
/// the connection.
fn reset(slot: &mut Slot) {
    if let Some((_, ch)) = slot.channel.take() {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    ch.close(200, "busline: call timed out".into()),
                )
                .await;
            });
        }
    }
}
