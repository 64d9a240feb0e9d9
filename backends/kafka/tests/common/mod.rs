//! Kafka fixtures shared by this crate's integration tests: tansu (or any
//! Kafka-protocol broker) at `BUSLINE_TEST_KAFKA_URL` / 127.0.0.1:9092, and
//! librdkafka's in-process mock cluster.
#![allow(dead_code)]

mod mock;
pub mod plain;
pub mod raw;

use std::time::Duration;

use busline_core::wire::HeaderDialect;
use busline_core::{async_trait, Bus, BusConfig};
use busline_kafka::{KafkaBus, KafkaConfig};
use busline_testkit::brokers::{self, Broker};
use busline_testkit::{test_settings, BusFixture, WireInput};
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
        Self {
            url: format!("kafka://{}", mock.bootstrap()),
            kafka,
            name: "kafka-mock",
            mock: Some(mock),
        }
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
}
