//! The NATS fixture shared by this crate's integration tests.
#![allow(dead_code)]

pub mod raw;

use std::sync::Mutex;
use std::time::Duration;

use busline_core::backend::async_trait;
use busline_core::wire::HeaderDialect;
use busline_core::{Bus, BusConfig};
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
    /// The command that kills (`<command> kill <node>`) and revives
    /// (`<command> revive <node>`) a member of the cluster at `url`.
    cluster: Option<String>,
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

    /// The 3-node cluster of `BUSLINE_TEST_NATS_CLUSTER_URL` (seed URLs),
    /// streams with 3 replicas, members killed and revived by
    /// `BUSLINE_TEST_NATS_CLUSTER` (`bash .ci/nats-cluster.sh`); `None`
    /// when either is unset.
    pub fn cluster() -> Option<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let url = var("BUSLINE_TEST_NATS_CLUSTER_URL")?;
        let command = var("BUSLINE_TEST_NATS_CLUSTER")?;
        let nats = NatsConfig {
            replicas: 3,
            ..test_config()
        };
        let mut fixture = Self::with(url, nats, None);
        fixture.cluster = Some(command);
        Some(fixture)
    }

    pub fn with(url: String, nats: NatsConfig, restart: Option<String>) -> Self {
        Self {
            url,
            nats,
            restart,
            cluster: None,
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
        // The URL may list several seed servers (a cluster).
        let servers: Vec<async_nats::ServerAddr> = self
            .url
            .trim_start_matches("nats://")
            .split(',')
            .map(|s| format!("nats://{}", s.trim()).parse().expect("a server address"))
            .collect();
        async_nats::connect(servers).await.expect("connect plain client")
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

    async fn kill_leader(&self, topic: &str, _group: &str) -> Option<Result<String, String>> {
        let command = self.cluster.as_ref()?;
        Some(
            async {
                let stream = TopicNames::of(topic).ok_or("empty topic")?.stream;
                let js = async_nats::jetstream::new(self.raw().await);
                let mut handle = js.get_stream(&stream).await.map_err(|e| e.to_string())?;
                let info = handle.info().await.map_err(|e| e.to_string())?;
                let leader = info
                    .cluster
                    .as_ref()
                    .and_then(|c| c.leader.clone())
                    .ok_or_else(|| format!("stream {stream} has no leader: {:?}", info.cluster))?;
                brokers::run_restart(&format!("{command} kill {leader}")).await?;
                Ok(leader)
            }
            .await,
        )
    }

    async fn revive_member(&self, member: &str) -> Result<(), String> {
        let command = self.cluster.as_ref().ok_or("not a cluster fixture")?;
        brokers::run_restart(&format!("{command} revive {member}")).await
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
