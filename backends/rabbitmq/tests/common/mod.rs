//! The RabbitMQ fixture shared by this crate's integration tests.
#![allow(dead_code)]

pub mod raw;

use std::time::Duration;

use busline_core::backend::async_trait;
use busline_core::wire::HeaderDialect;
use busline_core::{Bus, Delivery, Subscription};
use busline_rabbitmq::{RabbitBus, RabbitConfig};
use busline_testkit::brokers::{self, Broker, Origin, TestBroker};
use busline_testkit::support::{within, WAIT};
use busline_testkit::{test_settings, BusFixture, WireInput};
use lapin::{Connection, ConnectionProperties};

/// The broker of the test run (env URL or the local default port), and
/// the tuning of the buses the fixture connects.
pub struct RabbitFixture {
    pub broker: TestBroker,
    pub config: RabbitConfig,
    /// The command that names a quorum queue's leader
    /// (`<command> leader <queue>`), kills (`<command> kill <node>`) and
    /// revives (`<command> revive <node>`) a member of the cluster the
    /// broker's URL lists.
    cluster: Option<String>,
}

impl RabbitFixture {
    pub async fn new() -> Self {
        let broker = brokers::find(Broker::RabbitMq)
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ tests need a broker: {e}"));
        Self {
            broker,
            config: RabbitConfig {
                // The project's node serves it (`.ci/rabbitmq-restartable.sh env`).
                management_url: std::env::var("BUSLINE_TEST_AMQP_MANAGEMENT_URL").ok(),
                ..RabbitConfig::default()
            },
            cluster: None,
        }
    }

    /// The 3-node cluster of `BUSLINE_TEST_AMQP_CLUSTER_URL` (seed URLs),
    /// quorum group queues (the default), members killed and revived by
    /// `BUSLINE_TEST_AMQP_CLUSTER` (`bash .ci/rabbitmq-cluster.sh`); `None`
    /// when either is unset.
    pub fn cluster() -> Option<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let url = var("BUSLINE_TEST_AMQP_CLUSTER_URL")?;
        let command = var("BUSLINE_TEST_AMQP_CLUSTER")?;
        Some(Self {
            broker: TestBroker::new(url, Origin::Environment),
            config: RabbitConfig::default(),
            cluster: Some(command),
        })
    }

    /// The fixture with classic group queues instead of the default quorum
    /// queues.
    pub async fn classic() -> Self {
        Self {
            config: RabbitConfig {
                queue_type: busline_rabbitmq::QueueType::Classic,
                ..RabbitConfig::default()
            },
            ..Self::new().await
        }
    }

    /// A plain lapin connection, as a foreign service would have.
    pub async fn plain(&self) -> Connection {
        Connection::connect(&self.broker.url, ConnectionProperties::default())
            .await
            .expect("plain lapin connects")
    }

    /// A busline connection with its own connection name and tuning.
    pub async fn rabbit(&self, name: &str, config: RabbitConfig) -> RabbitBus {
        RabbitBus::connect(&self.broker.url, name, config)
            .await
            .expect("busline connects to RabbitMQ")
    }
}

#[async_trait]
impl BusFixture for RabbitFixture {
    fn name(&self) -> &str {
        "rabbitmq"
    }

    async fn connect(&self) -> Bus {
        let rabbit = self.rabbit("busline-test", self.config.clone()).await;
        Bus::new(rabbit, test_settings())
    }

    fn dialect(&self) -> HeaderDialect {
        HeaderDialect::AMQP
    }

    /// Writes the message as it is, bytes and all, with the raw AMQP
    /// client (lapin cannot write a short string that is not UTF-8).
    async fn publish_wire(&self, topic: &str, message: WireInput) -> Result<(), String> {
        let message = raw::RawMessage {
            exchange: topic.to_owned(),
            routing_key: message.event_type,
            content_type: message.content_type.map(String::into_bytes),
            headers: message.headers,
            body: message.body.to_vec(),
        };
        raw::publish(&self.broker.url, &[message], Duration::from_secs(30)).await
    }

    async fn restart_broker(&self) -> Option<Result<(), String>> {
        let command = brokers::restart_command(Broker::RabbitMq)?;
        Some(brokers::run_restart(&command).await)
    }

    async fn kill_leader(&self, topic: &str, group: &str) -> Option<Result<String, String>> {
        let command = self.cluster.as_ref()?;
        Some(
            async {
                let queue = format!("{topic}::{group}");
                let leader = run_output(&format!("{command} leader '{queue}'")).await?;
                let leader = leader.trim();
                if leader.is_empty() || leader.contains(char::is_whitespace) {
                    return Err(format!("`{command} leader` named no node: {leader:?}"));
                }
                brokers::run_restart(&format!("{command} kill {leader}")).await?;
                Ok(leader.to_owned())
            }
            .await,
        )
    }

    async fn revive_member(&self, member: &str) -> Result<(), String> {
        let command = self.cluster.as_ref().ok_or("not a cluster fixture")?;
        brokers::run_restart(&format!("{command} revive {member}")).await
    }
}

/// The standard output of a shell command, `Err` with its output when it
/// fails; bounded, since it talks to brokers.
async fn run_output(command: &str) -> Result<String, String> {
    let run = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .map_err(|_| format!("`{command}` did not finish in 120 s"))?
        .map_err(|e| format!("cannot run `{command}`: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{command}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Closes, from the broker's side, every connection whose client-provided
/// name contains `name` (as a network failure or an operator would), and
/// returns how many it closed. Uses `rabbitmqctl`, so the broker must be
/// local.
pub async fn close_connections_named(name: &str) -> usize {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "-q",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
        .await
        .expect("rabbitmqctl runs (these tests need the broker to be local)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut closed = 0;
    for line in listing.lines().filter(|l| l.contains(name)) {
        let pid = line.split_whitespace().next().expect("a pid column");
        let status = tokio::process::Command::new("rabbitmqctl")
            .args(["close_connection", pid, "busline test: connection dropped"])
            .status()
            .await
            .expect("rabbitmqctl runs");
        assert!(status.success());
        closed += 1;
    }
    closed
}

/// The next delivery of `sub`, within [`WAIT`]; panics naming `what` if
/// the subscription ends or fails instead.
pub async fn next(sub: &mut Subscription, what: &str) -> Delivery {
    use futures::StreamExt;
    within(WAIT, what, sub.next())
        .await
        .unwrap_or_else(|| panic!("subscription ended while waiting for {what}"))
        .unwrap_or_else(|e| panic!("subscription failed while waiting for {what}: {e}"))
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    busline_testkit::support::unique(prefix)
}
