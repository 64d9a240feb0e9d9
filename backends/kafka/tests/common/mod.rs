//! Kafka fixtures shared by this crate's integration tests: tansu (or any
//! Kafka-protocol broker) at `BUSLINE_TEST_KAFKA_URL` / 127.0.0.1:9092, and
//! librdkafka's in-process mock cluster.
#![allow(dead_code)]

mod mock;
pub mod plain;
pub mod raw;

use std::time::Duration;

use busline_core::backend::async_trait;
use busline_core::wire::HeaderDialect;
use busline_core::{Bus, BusConfig};
use busline_kafka::{KafkaBus, KafkaConfig};
use busline_testkit::brokers::{self, Broker};
use busline_testkit::{test_settings, BusFixture, WireInput};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

pub use mock::MockKafka;

/// Clients of one Kafka-protocol cluster.
pub struct KafkaFixture {
    pub url: String,
    pub kafka: KafkaConfig,
    name: &'static str,
    mock: Option<MockKafka>,
}

/// Tuning for tests: shorter timeouts so failures show quickly.
pub fn test_config() -> KafkaConfig {
    KafkaConfig {
        drain_timeout: Duration::from_secs(20),
        ..KafkaConfig::default()
    }
}

/// Logs to stderr when `RUST_LOG` is set.
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

impl KafkaFixture {
    /// The broker of `BUSLINE_TEST_KAFKA_URL`, or 127.0.0.1:9092 (tansu in CI).
    pub async fn new() -> Self {
        init_logs();
        let broker = brokers::find(Broker::Kafka)
            .await
            .expect("a Kafka-protocol broker (run `bash .ci/tansu.sh start`)");
        let mut kafka = test_config();
        // tansu 0.6 returns nothing for a fetch that starts inside a stored
        // record batch (see examples/fetch_mid_batch.rs); start a little
        // earlier and skip. librdkafka batches at most 10,000 records.
        kafka.fetch_rewind = 10_000;
        Self {
            url: broker.url,
            kafka,
            name: "kafka",
            mock: None,
        }
    }

    /// A fresh in-process mock cluster of `brokers` brokers.
    pub fn mock(brokers: i32) -> Self {
        init_logs();
        let mock = MockKafka::start(brokers);
        let mut kafka = test_config();
        kafka.replication = brokers.min(3);
        // The mock cluster has no CreateTopics; it creates topics (with 4
        // partitions) when asked for their metadata.
        kafka.admin_create_topics = false;
        // Nor DeleteGroups and DeleteTopics: remove_group answers
        // Unsupported (librdkafka, asked to send DeleteGroups to a broker
        // without it, failed an assertion here).
        kafka.admin_delete_groups = false;
        Self {
            url: format!("kafka://{}", mock.bootstrap()),
            kafka,
            name: "kafka-mock",
            mock: Some(mock),
        }
    }

    /// A 3-broker mock cluster for scenario 19. The mock has no
    /// CreateTopics, so the bus's topics are created on their first
    /// metadata request with the mock's defaults: 4 partitions and
    /// replication factor min(3, brokers) = 3 (`rd_kafka_mock_cluster_new`).
    /// librdkafka has no setter for that default and the topic's name is
    /// known only once the scenario's router has subscribed (which creates
    /// it), so [`kill_leader`](BusFixture::kill_leader) checks the replica
    /// count in the metadata instead of creating the topic itself.
    pub fn cluster() -> Self {
        let mut fixture = Self::mock(3);
        fixture.name = "kafka-mock-cluster";
        fixture
    }

    /// The bootstrap list for plain rdkafka clients.
    pub fn bootstrap(&self) -> String {
        self.url.trim_start_matches("kafka://").to_owned()
    }

    /// A new connection as a `KafkaBus`.
    pub async fn connect_kafka(&self) -> KafkaBus {
        KafkaBus::connect(&BusConfig::from_url(&self.url), self.kafka.clone())
            .await
            .expect("connect to Kafka")
    }

    /// A plain rdkafka client configuration for this cluster.
    pub fn plain_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap());
        c
    }

    /// The mock cluster, if this fixture runs one.
    pub fn mock_cluster(&self) -> Option<&MockKafka> {
        self.mock.as_ref()
    }
}

#[async_trait]
impl BusFixture for KafkaFixture {
    fn name(&self) -> &str {
        self.name
    }

    async fn connect(&self) -> Bus {
        Bus::new(self.connect_kafka().await, test_settings())
    }

    fn dialect(&self) -> HeaderDialect {
        HeaderDialect::KAFKA
    }

    async fn publish_wire(&self, topic: &str, message: WireInput) -> Result<(), String> {
        let bus = self.connect_kafka().await;
        bus.ensure_topic(topic).await.map_err(|e| e.to_string())?;
        busline_core::EventBus::shutdown(&bus).await;
        // Through librdkafka's C API: header names are written as the bytes
        // given, UTF-8 or not. A foreign producer may have raised its size
        // limit (librdkafka's default is 1,000,000 bytes).
        let mut config = self.plain_config();
        config.set("message.max.bytes", "10000000");
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            raw::produce(
                &config,
                &topic,
                message.key.as_deref().map(str::as_bytes),
                &message.headers,
                &message.body,
            )
        })
        .await
        .map_err(|e| e.to_string())?
        .map(drop)
    }

    async fn restart_broker(&self) -> Option<Result<(), String>> {
        let mock = self.mock.as_ref()?;
        Some(mock.bounce(Duration::from_secs(2)).await)
    }

    /// Takes down the broker that leads most partitions of `topic` and
    /// moves their leadership to surviving replicas. `broker_down` is the
    /// mock's closest thing to kill -9: its connections are cut and no new
    /// ones accepted, while the partitions' logs, shared by the mock's
    /// replicas, stay (a replication factor 3 topic written with
    /// `acks=all` loses nothing when one broker dies). The mock elects no
    /// one by itself, so the fixture does what a controller's election
    /// would: each partition the broker led goes to its first surviving
    /// replica, and if the broker was the group's coordinator, the
    /// coordinator moves too (a real cluster elects a new leader for the
    /// broker's `__consumer_offsets` partitions).
    async fn kill_leader(&self, topic: &str, group: &str) -> Option<Result<String, String>> {
        let mock = self.mock.as_ref()?;
        Some(
            async {
                let layout = layout(self.plain_config(), topic).await?;
                if let Some(p) = layout.partitions.iter().find(|p| p.replicas.len() < 3) {
                    return Err(format!(
                        "partition {} of `{topic}` has {} replicas, not 3",
                        p.id,
                        p.replicas.len()
                    ));
                }
                let victim = layout
                    .brokers
                    .iter()
                    .map(|(id, _)| *id)
                    .max_by_key(|id| {
                        let led = layout.partitions.iter().filter(|p| p.leader == *id).count();
                        (led, -id)
                    })
                    .ok_or("no brokers in the metadata")?;
                mock.broker_down(victim)?;
                let mut moved = Vec::new();
                for p in layout.partitions.iter().filter(|p| p.leader == victim) {
                    let next = *p
                        .replicas
                        .iter()
                        .find(|r| **r != victim)
                        .ok_or_else(|| format!("partition {} has no other replica", p.id))?;
                    mock.partition_leader(topic, p.id, next)?;
                    moved.push((p.id, next));
                }
                let ids: Vec<i32> = layout.brokers.iter().map(|(id, _)| *id).collect();
                let group_id = busline_kafka::consumer_group_id(topic, group);
                let coordinator = mock_coordinator(&group_id, &ids);
                let coordinator = if coordinator == victim {
                    let next = *ids.iter().find(|id| **id != victim).ok_or("no surviving broker")?;
                    mock.group_coordinator(&group_id, next)?;
                    format!("moved to broker {next}")
                } else {
                    format!("stays on broker {coordinator}")
                };
                eprintln!(
                    "{}: broker {victim} down; (partition, new leader): {moved:?}; group coordinator {coordinator}",
                    self.name
                );
                Ok(format!("broker {victim}"))
            }
            .await,
        )
    }

    /// Brings the broker back and waits until it answers a metadata
    /// request of a client that knows only it. Leadership stays where the
    /// failover put it (a real cluster moves it back to the preferred
    /// replica only later, if `auto.leader.rebalance.enable`).
    async fn revive_member(&self, member: &str) -> Result<(), String> {
        let mock = self.mock.as_ref().ok_or("not a mock cluster")?;
        let id: i32 = member
            .strip_prefix("broker ")
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| format!("`{member}` is not a broker this fixture named"))?;
        mock.broker_up(id)?;
        let layout = layout(self.plain_config(), "").await?;
        let address = layout
            .brokers
            .into_iter()
            .find(|(b, _)| *b == id)
            .map(|(_, a)| a)
            .ok_or_else(|| format!("broker {id} is not in the metadata"))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut config = ClientConfig::new();
            config.set("bootstrap.servers", &address);
            match layout_of(config, None, Duration::from_secs(2)).await {
                Ok(_) => return Ok(()),
                Err(e) if std::time::Instant::now() > deadline => {
                    return Err(format!(
                        "broker {id} at {address} not serving 30 s after broker_up: {e}"
                    ))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// What a cluster's metadata shows.
struct Layout {
    /// Broker ids and `host:port`.
    brokers: Vec<(i32, String)>,
    partitions: Vec<PartitionLayout>,
}

struct PartitionLayout {
    id: i32,
    leader: i32,
    replicas: Vec<i32>,
}

/// The cluster's brokers and, unless `topic` is empty, the topic's
/// partitions.
async fn layout(config: ClientConfig, topic: &str) -> Result<Layout, String> {
    let topic = Some(topic.to_owned()).filter(|t| !t.is_empty());
    layout_of(config, topic, Duration::from_secs(10)).await
}

async fn layout_of(config: ClientConfig, topic: Option<String>, timeout: Duration) -> Result<Layout, String> {
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = config.create().map_err(|e| e.to_string())?;
        let md = client
            .fetch_metadata(topic.as_deref(), timeout)
            .map_err(|e| e.to_string())?;
        let brokers = md
            .brokers()
            .iter()
            .map(|b| (b.id(), format!("{}:{}", b.host(), b.port())))
            .collect();
        let mut partitions = Vec::new();
        if let Some(name) = &topic {
            let t = md
                .topics()
                .iter()
                .find(|t| t.name() == name)
                .ok_or_else(|| format!("`{name}` is not in the metadata"))?;
            if let Some(e) = t.error() {
                return Err(format!("`{name}`: {e:?}"));
            }
            partitions = t
                .partitions()
                .iter()
                .map(|p| PartitionLayout {
                    id: p.id(),
                    leader: p.leader(),
                    replicas: p.replicas().to_vec(),
                })
                .collect();
        }
        Ok(Layout { brokers, partitions })
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The coordinator the mock gives consumer group `group` when none was
/// set: the broker at the CRC-32 of its name modulo the broker count, in
/// the order the brokers were made (`rd_kafka_mock_cluster_get_coord`),
/// whether that broker is up or not.
fn mock_coordinator(group: &str, ids: &[i32]) -> i32 {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    let mut crc = !0u32;
    for &b in group.as_bytes() {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    sorted[(!crc % sorted.len() as u32) as usize]
}
