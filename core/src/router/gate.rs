//! [`Gate`]: lets a handler hold back its subscription's consumption.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;

/// Whether a [`Gate`] lets the router take deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateState {
    /// Deliveries are taken.
    Open,
    /// No delivery is taken before this instant; the gate counts as open
    /// from then on, until it is set again.
    ClosedUntil(Instant),
    /// No delivery is taken until the gate is opened.
    Closed,
}

/// A switch shared by a handler and the router's consumer loop: while it is
/// closed, the loop takes no delivery from the subscription, so events wait
/// in the broker (no attempt is used up). Handlers expose theirs through
/// [`EventService::gate`](super::EventService::gate); a consumer circuit breaker is the
/// main user.
///
/// Closing a gate holds back the whole subscription of the handler's topic
/// in its group, other event types on that topic included: a subscription
/// cannot be told which events to hand out. Deliveries already taken still
/// run.
///
/// ```
/// use busline_core::{Gate, GateState};
/// let gate = Gate::new();
/// assert!(gate.is_open());
/// gate.close();
/// assert_eq!(gate.state(), GateState::Closed);
/// gate.open();
/// assert!(gate.is_open());
/// ```
#[derive(Clone, Debug)]
pub struct Gate {
    tx: Arc<watch::Sender<GateState>>,
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    /// An open gate.
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::Sender::new(GateState::Open)),
        }
    }

    /// Lets deliveries through.
    pub fn open(&self) {
        self.set(GateState::Open);
    }

    /// Holds deliveries back until [`open`](Self::open).
    pub fn close(&self) {
        self.set(GateState::Closed);
    }

    /// Holds deliveries back until `until` (a tokio instant, so paused test
    /// clocks apply).
    pub fn close_until(&self, until: Instant) {
        self.set(GateState::ClosedUntil(until));
    }

    /// Sets the state.
    pub fn set(&self, state: GateState) {
        self.tx.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
    }

    /// The state as set.
    pub fn state(&self) -> GateState {
        *self.tx.borrow()
    }

    /// Whether deliveries are taken now.
    pub fn is_open(&self) -> bool {
        match self.state() {
            GateState::Open => true,
            GateState::ClosedUntil(t) => Instant::now() >= t,
            GateState::Closed => false,
        }
    }

    /// Waits until the gate is open.
    pub async fn wait_open(&self) {
        let mut rx = self.tx.subscribe();
        loop {
            let state = *rx.borrow_and_update();
            match state {
                GateState::Open => return,
                GateState::ClosedUntil(t) => {
                    if Instant::now() >= t {
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(t) => return,
                        _ = rx.changed() => {}
                    }
                }
                GateState::Closed => {
                    // The sender lives as long as this gate does.
                    let _ = rx.changed().await;
                }
            }
        }
    }
}

/// Waits until every gate is open at once.
pub(crate) async fn wait_all_open(gates: &[Gate]) {
    while let Some(closed) = gates.iter().find(|g| !g.is_open()) {
        closed.wait_open().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn closed_until_opens_by_itself() {
        let gate = Gate::new();
        let start = Instant::now();
        gate.close_until(start + Duration::from_secs(5));
        assert!(!gate.is_open());
        gate.wait_open().await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert!(gate.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn closed_waits_for_open() {
        let gate = Gate::new();
        gate.close();
        let g = gate.clone();
        let opener = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            g.open();
        });
        let start = Instant::now();
        wait_all_open(&[Gate::new(), gate]).await;
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        opener.await.unwrap();
    }
}
