//! From the command line and the environment to a connected bus.

use std::time::Duration;

use busline_core::{BrokerUrl, Bus, BusConfig, ConfigError};

use crate::exit::{chain, CliError, Exit};
use crate::Global;

/// The configuration: `BUSLINE_CONFIG`'s file and `BUSLINE_*` variables,
/// with `--url` on top.
pub(crate) fn config(global: &Global) -> Result<BusConfig, CliError> {
    let mut config = BusConfig::from_env()
        .map_err(|e| CliError::new(Exit::Connect, format!("configuration: {}", chain(&e))))?;
    if let Some(url) = &global.url {
        config.url = BrokerUrl::new(url.clone());
    }
    Ok(config)
}

/// Connects the backend the URL names, within `--connect-timeout`.
pub(crate) async fn connect(global: &Global) -> Result<(Bus, BusConfig), CliError> {
    let config = config(global)?;
    let bus = connect_config(&config, global.connect_timeout).await?;
    Ok((bus, config))
}

pub(crate) async fn connect_config(config: &BusConfig, timeout: Duration) -> Result<Bus, CliError> {
    let url = config.url.redacted();
    match tokio::time::timeout(timeout, by_scheme(config)).await {
        Ok(Ok(bus)) => Ok(bus),
        Ok(Err(e)) => Err(CliError::new(
            Exit::Connect,
            format!("cannot connect to {url}: {}", chain(&e)),
        )),
        Err(_) => Err(CliError::new(
            Exit::Connect,
            format!(
                "cannot connect to {url}: no answer within {}",
                humantime::format_duration(timeout)
            ),
        )),
    }
}

async fn by_scheme(config: &BusConfig) -> Result<Bus, ConfigError> {
    match config.url.scheme().as_str() {
        "memory" => busline_memory::connect(config),
        "amqp" | "amqps" => busline_rabbitmq::connect(config).await,
        "nats" | "tls" => busline_nats::connect(config).await,
        "kafka" | "kafkas" => busline_kafka::connect(config).await,
        "" => Err(ConfigError::InvalidUrl {
            url: config.url.redacted(),
            reason: "no scheme; expected memory://, amqp://, nats:// or kafka://".into(),
        }),
        other => Err(ConfigError::UnsupportedScheme {
            scheme: other.to_owned(),
            hint: "busline knows memory://, amqp(s)://, nats://, tls:// and kafka(s)://".into(),
        }),
    }
}

/// How long a fresh member waits for its first delivery: joining a Kafka
/// group takes seconds (a rebalance), the other brokers answer at once.
pub(crate) fn first_wait(config: &BusConfig) -> Duration {
    match config.url.scheme().as_str() {
        "kafka" | "kafkas" => Duration::from_secs(15),
        _ => Duration::from_secs(3),
    }
}

/// Twelve random hex digits for a scratch name: the random tail of a
/// UUID v7 (its head is the time).
pub(crate) fn random_suffix() -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    id[id.len() - 12..].to_owned()
}
