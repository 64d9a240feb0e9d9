//! The NATS fixture shared by this crate's integration tests.
#![allow(dead_code)]

pub mod raw;

use std::sync::Mutex;
use std::time::Duration;

use busline_core::wire::HeaderDialect;
use busline_core::{async_trait, Bus, BusConfig};
use busline_nats::{NatsBus, NatsConfig, TopicNames};
use busline_testkit::brokers::{self, Broker};
use busline_testkit::{test_settings, BusFixture, WireInput};

/// Clients of one NATS server; the streams they declared are deleted when
/// the fixture is dropped, so reruns do not pile streams up on the shared
/// server.
pub struct NatsFixture {
    pub url: String,
    pub nats: NatsConfig,
    restart: Option<String>,
    buses: Mutex<Vec<NatsBus>>,
}

/// Tuning for tests: short-lived streams (a crashed run leaves little
/// behind), a short ack_wait so an event lost in transit comes back soon,
/// and short timeouts so publishes during a restart fail fast and retry.
pub fn test_config() -> NatsConfig {
    NatsConfig {
        max_age: Duration::from_secs(3600),
        ack_wait: Duration::from_secs(5),
        request_timeout: Duration::from_secs(3),
        heartbeat: Duration::from_secs(2),
        fetch_expires: Duration::from_secs(10),
        ..NatsConfig::default()
    }
}

impl NatsFixture {
    /// The server of `BUSLINE_TEST_NATS_URL`, or 127.0.0.1:4222.
    pub async fn new() -> Self {
        let broker = brokers::find(Broker::Nats)
            .await
            .expect("a NATS server with JetStream");
        Self::with(broker.url, test_config(), None)
    }

    /// The restartable server of `BUSLINE_TEST_NATS_RESTART_URL` (default
    /// 127.0.0.1:4223), restarted by `BUSLINE_TEST_NATS_RESTART`.
    pub fn restartable() -> Self {
        let url = std::env::var("BUSLINE_TEST_NATS_RESTART_URL")
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| "nats://127.0.0.1:4223".into());
        Self::with(url, test_config(), brokers::restart_command(Broker::Nats))
    }

    pub fn with(url: String, nats: NatsConfig, restart: Option<String>) -> Self {
        Self {
            url,
            nats,
            restart,
            buses: Mutex::default(),
        }
    }

    /// A new connection as a `NatsBus`.
    pub async fn connect_nats(&self) -> NatsBus {
        let bus = NatsBus::connect(&BusConfig::from_url(&self.url), self.nats.clone())
            .await
            .expect("connect to NATS");
        self.buses.lock().unwrap().push(bus.clone());
        bus
    }

    /// A new connection as a `NatsBus`, with the bus-wide settings of
    /// `config` (its URL is replaced by the fixture's).
    pub async fn connect_nats_with(&self, mut config: BusConfig) -> NatsBus {
        config.url = BusConfig::from_url(&self.url).url;
        let bus = NatsBus::connect(&config, self.nats.clone())
            .await
            .expect("connect to NATS");
        self.buses.lock().unwrap().push(bus.clone());
        bus
    }

    /// A plain async-nats client.
    pub async fn raw(&self) -> async_nats::Client {
        async_nats::connect(self.url.trim_start_matches("nats://"))
            .await
            .expect("connect plain client")
    }
}

#[async_trait]
impl BusFixture for NatsFixture {
    fn name(&self) -> &str {
        "nats"
    }

    async fn connect(&self) -> Bus {
        Bus::new(self.connect_nats().await, test_settings())
    }

    fn dialect(&self) -> HeaderDialect {
        HeaderDialect::NATS
    }

    async fn publish_wire(&self, topic: &str, message: WireInput) -> Result<(), String> {
        // Below async-nats: its header map cannot hold bytes that are not
        // UTF-8, and a foreign producer's can.
        let mut pairs = message.headers.clone();
        if let Some(ct) = message.content_type {
            pairs.retain(|(n, _)| !n.eq_ignore_ascii_case(b"content-type"));
            pairs.push((b"content-type".to_vec(), ct.into_bytes()));
        }
        let subject = TopicNames::of(topic)
            .ok_or("empty topic")?
            .subject(&message.event_type);
        raw::publish(&self.url, &subject, &raw::header_block(&pairs), &message.body)
            .await
            .map(drop)
    }

    async fn restart_broker(&self) -> Option<Result<(), String>> {
        let command = self.restart.as_ref()?;
        Some(brokers::run_restart(command).await)
    }
}

impl Drop for NatsFixture {
    fn drop(&mut self) {
        let mut streams: Vec<String> = self
            .buses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flat_map(|b| b.declared_streams())
            .collect();
        streams.sort();
        streams.dedup();
        if streams.is_empty() {
            return;
        }
        let url = self.url.clone();
        // Cleanup is best effort and must not block the test's runtime, so
        // it runs on a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async move {
                let client = async_nats::connect(url.trim_start_matches("nats://"))
                    .await
                    .ok()?;
                let js = async_nats::jetstream::new(client);
                for s in streams {
                    let _ = tokio::time::timeout(Duration::from_secs(5), js.delete_stream(&s)).await;
                }
                Some(())
            })
        })
        .join();
    }
}
