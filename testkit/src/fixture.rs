//! What the conformance suite needs from a backend under test.

use std::time::Duration;

use busline_core::backend::async_trait;
use busline_core::wire::HeaderDialect;
use busline_core::{Bus, BusSettings, RetryPolicy};
use busline_memory::{MemoryBroker, WireMessage};

use crate::scenarios::{HostileOutcome, Poison};
use bytes::Bytes;

/// A message in a backend's wire form, for publishing what no busline
/// producer would write (poison input) and for interop tests.
#[derive(Debug, Clone, Default)]
pub struct WireInput {
    /// Event type, for backends that route by it (AMQP routing key, NATS
    /// subject); the headers need not contain it.
    pub event_type: String,
    /// Headers, already named in the backend's dialect. Names are bytes: a
    /// hostile producer writes names that are not UTF-8.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Content type, for brokers with a native property (AMQP).
    pub content_type: Option<String>,
    /// Native key, for brokers that have one (Kafka).
    pub key: Option<String>,
    /// The body.
    pub body: Bytes,
}

/// A backend under test: it connects fresh clients to one broker.
#[async_trait]
pub trait BusFixture: Send + Sync + 'static {
    /// A short name for messages (`memory`, `rabbitmq`, …).
    fn name(&self) -> &str;

    /// A new client connection to the broker under test, as a separate
    /// service would make.
    async fn connect(&self) -> Bus;

    /// The header dialect of this backend's wire form.
    fn dialect(&self) -> HeaderDialect;

    /// Publishes a raw message to `topic` with the backend's plain client.
    async fn publish_wire(&self, topic: &str, message: WireInput) -> Result<(), String>;

    /// Restarts the broker and returns once it accepts connections again;
    /// `None` where this fixture cannot restart its broker (scenario 15 is
    /// then skipped, saying so).
    async fn restart_broker(&self) -> Option<Result<(), String>> {
        None
    }

    /// How many events scenario 15 streams across two restarts (and
    /// scenario 19 across a failover).
    fn restart_stream_len(&self) -> u64 {
        10_000
    }

    /// Kills (SIGKILL) the cluster member that leads the storage of `topic`
    /// (the stream, the quorum queue of `group`, the partition) and returns
    /// the member's name once it is dead; `None` where the broker under test
    /// is not a cluster this fixture controls (scenario 19 is then
    /// skipped, saying so).
    async fn kill_leader(&self, topic: &str, group: &str) -> Option<Result<String, String>> {
        let _ = (topic, group);
        None
    }

    /// Starts a member [`kill_leader`](Self::kill_leader) killed again and
    /// returns once the cluster has it back.
    async fn revive_member(&self, member: &str) -> Result<(), String> {
        Err(format!("{} cannot revive cluster member {member}", self.name()))
    }

    /// What this backend does with a hostile message (scenario 18). The
    /// default is what DESIGN.md asks of a client that reads every byte;
    /// a backend whose client library cannot parse a poison declares
    /// [`HostileOutcome::MovedAside`] and says why in its README table.
    fn hostile_outcome(&self, poison: Poison) -> HostileOutcome {
        poison.ideal()
    }
}

/// Settings for test buses: service `busline-test`, JSON, and a fast retry
/// policy so retries do not dominate a test's time.
pub fn test_settings() -> BusSettings {
    BusSettings::default().with_service("busline-test").with_retry(
        RetryPolicy::default()
            .with_max_attempts(5)
            .with_backoff(Duration::from_millis(20), Duration::from_millis(200)),
    )
}

/// The in-memory backend under test: one private broker per fixture.
#[derive(Debug, Default)]
pub struct MemoryFixture {
    broker: MemoryBroker,
}

impl MemoryFixture {
    /// A fixture with a fresh broker.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl BusFixture for MemoryFixture {
    fn name(&self) -> &str {
        "memory"
    }

    async fn connect(&self) -> Bus {
        Bus::new(self.broker.connect(), test_settings())
    }

    fn dialect(&self) -> HeaderDialect {
        HeaderDialect::MEMORY
    }

    async fn publish_wire(&self, topic: &str, message: WireInput) -> Result<(), String> {
        let mut headers = message.headers;
        if let Some(ct) = message.content_type {
            headers.push((b"content-type".to_vec(), ct.into_bytes()));
        }
        if let Some(key) = message.key {
            headers.push((
                HeaderDialect::MEMORY.header("partitionkey").into_bytes(),
                key.into_bytes(),
            ));
        }
        self.broker
            .connect()
            .publish_wire(
                topic,
                WireMessage {
                    headers,
                    body: message.body,
                },
            )
            .await
            .map_err(|e| busline_core::ErrorChain(&e).to_string())
    }
}

/// A fixture with some hostile-input outcomes declared from outside, for a
/// backend's scenario-18 suite: every other method is the wrapped
/// fixture's.
///
/// ```ignore
/// busline_testkit::hostile_input_suite!(
///     Declared::new(NatsFixture::new().await)
///         .with(Poison::ForeignNameNotUtf8, HostileOutcome::MovedAside)
/// );
/// ```
#[derive(Debug)]
pub struct Declared<F> {
    fixture: F,
    outcomes: std::collections::HashMap<Poison, HostileOutcome>,
}

impl<F: BusFixture> Declared<F> {
    /// `fixture` with its own declarations.
    pub fn new(fixture: F) -> Self {
        Self {
            fixture,
            outcomes: Default::default(),
        }
    }

    /// Declares what the backend does with `poison`.
    pub fn with(mut self, poison: Poison, outcome: HostileOutcome) -> Self {
        self.outcomes.insert(poison, outcome);
        self
    }
}

#[async_trait]
impl<F: BusFixture> BusFixture for Declared<F> {
    fn name(&self) -> &str {
        self.fixture.name()
    }

    async fn connect(&self) -> Bus {
        self.fixture.connect().await
    }

    fn dialect(&self) -> HeaderDialect {
        self.fixture.dialect()
    }

    async fn publish_wire(&self, topic: &str, message: WireInput) -> Result<(), String> {
        self.fixture.publish_wire(topic, message).await
    }

    async fn restart_broker(&self) -> Option<Result<(), String>> {
        self.fixture.restart_broker().await
    }

    fn restart_stream_len(&self) -> u64 {
        self.fixture.restart_stream_len()
    }

    async fn kill_leader(&self, topic: &str, group: &str) -> Option<Result<String, String>> {
        self.fixture.kill_leader(topic, group).await
    }

    async fn revive_member(&self, member: &str) -> Result<(), String> {
        self.fixture.revive_member(member).await
    }

    fn hostile_outcome(&self, poison: Poison) -> HostileOutcome {
        self.outcomes
            .get(&poison)
            .copied()
            .unwrap_or_else(|| self.fixture.hostile_outcome(poison))
    }
}
