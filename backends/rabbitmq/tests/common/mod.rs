//! The RabbitMQ fixture shared by this crate's integration tests.
#![allow(dead_code)]

pub mod proxy;

use std::collections::BTreeMap;

use busline_core::wire::HeaderDialect;
use busline_core::{async_trait, Bus};
use busline_rabbitmq::{RabbitBus, RabbitConfig};
use busline_testkit::brokers::{self, Broker, TestBroker};
use busline_testkit::{test_settings, BusFixture, WireInput};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};

/// The broker of the test run (env URL or the local default port).
pub struct RabbitFixture {
    pub broker: TestBroker,
}

impl RabbitFixture {
    pub async fn new() -> Self {
        let broker = brokers::find(Broker::RabbitMq)
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ tests need a broker: {e}"));
        Self { broker }
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
        let rabbit = self.rabbit("busline-test", RabbitConfig::default()).await;
        Bus::new(rabbit, test_settings())
    }

    fn dialect(&self) -> HeaderDialect {
        HeaderDialect::AMQP
    }

    async fn publish_wire(&self, topic: &str, message: WireInput) -> Result<(), String> {
        let conn = Connection::connect(&self.broker.url, ConnectionProperties::default())
            .await
            .map_err(|e| e.to_string())?;
        let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        let table: BTreeMap<ShortString, AMQPValue> = message
            .headers
            .into_iter()
            .map(|(k, v)| {
                let k = String::from_utf8(k).map_err(|_| "lapin writes only UTF-8 header names")?;
                Ok((ShortString::from(k), AMQPValue::LongString(LongString::from(v))))
            })
            .collect::<Result<_, String>>()?;
        let mut props = BasicProperties::default()
            .with_headers(FieldTable::from(table))
            .with_delivery_mode(2);
        if let Some(ct) = message.content_type {
            props = props.with_content_type(ShortString::from(ct));
        }
        let confirm = channel
            .basic_publish(
                ShortString::from(topic),
                ShortString::from(message.event_type),
                BasicPublishOptions::default(),
                &message.body,
                props,
            )
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let _ = conn.close(200, "done".into()).await;
        if confirm.is_ack() {
            Ok(())
        } else {
            Err(format!("not confirmed: {confirm:?}"))
        }
    }

    async fn restart_broker(&self) -> Option<Result<(), String>> {
        let command = brokers::restart_command(Broker::RabbitMq)?;
        Some(brokers::run_restart(&command).await)
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

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    busline_testkit::support::unique(prefix)
}
