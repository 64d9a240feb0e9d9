//! Where the real brokers for backend tests are: a URL from the
//! environment, else the broker on its local default port, else (with the
//! `containers` feature and a Docker engine) a container started for the
//! test run.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A broker kind the backends test against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    /// Kafka protocol (Kafka, tansu, Redpanda).
    Kafka,
    /// RabbitMQ (AMQP 0-9-1).
    RabbitMq,
    /// NATS with JetStream.
    Nats,
}

impl Broker {
    /// The environment variable naming this broker's URL.
    pub fn url_env(self) -> &'static str {
        match self {
            Broker::Kafka => "BUSLINE_TEST_KAFKA_URL",
            Broker::RabbitMq => "BUSLINE_TEST_AMQP_URL",
            Broker::Nats => "BUSLINE_TEST_NATS_URL",
        }
    }

    /// The environment variable holding the shell command that restarts this
    /// broker (scenario 15); `.ci/run` sets it for brokers it started.
    pub fn restart_env(self) -> &'static str {
        match self {
            Broker::Kafka => "BUSLINE_TEST_KAFKA_RESTART",
            Broker::RabbitMq => "BUSLINE_TEST_AMQP_RESTART",
            Broker::Nats => "BUSLINE_TEST_NATS_RESTART",
        }
    }

    /// The URL of a broker on its default local port.
    pub fn local_default(self) -> &'static str {
        match self {
            Broker::Kafka => "kafka://127.0.0.1:9092",
            Broker::RabbitMq => "amqp://guest:guest@127.0.0.1:5672/%2f",
            Broker::Nats => "nats://127.0.0.1:4222",
        }
    }

    fn local_addr(self) -> SocketAddr {
        let port = match self {
            Broker::Kafka => 9092,
            Broker::RabbitMq => 5672,
            Broker::Nats => 4222,
        };
        SocketAddr::from(([127, 0, 0, 1], port))
    }
}

/// A broker to test against. Keep it alive for the test: with the
/// `containers` feature it may own the container.
#[derive(Debug)]
pub struct TestBroker {
    /// The URL to connect to.
    pub url: String,
    /// Where the URL came from.
    pub origin: Origin,
    #[cfg(feature = "containers")]
    _container: Option<testcontainers::ContainerAsync<testcontainers::GenericImage>>,
}

/// Where a [`TestBroker`]'s URL came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The `BUSLINE_TEST_*_URL` variable.
    Environment,
    /// A broker answering on its default local port.
    LocalPort,
    /// A container started for this test run.
    Container,
}

/// Finds a broker of `kind`, or says exactly why there is none.
pub async fn find(kind: Broker) -> Result<TestBroker, String> {
    if let Ok(url) = std::env::var(kind.url_env()) {
        if !url.trim().is_empty() {
            return Ok(TestBroker::new(url, Origin::Environment));
        }
    }
    if answers(kind.local_addr(), Duration::from_millis(500)) {
        return Ok(TestBroker::new(
            kind.local_default().to_owned(),
            Origin::LocalPort,
        ));
    }
    #[cfg(feature = "containers")]
    {
        return containers::start(kind).await;
    }
    #[allow(unreachable_code)]
    Err(format!(
        "no {kind:?} broker: set {} or start one on {} (or enable the `containers` feature where Docker runs)",
        kind.url_env(),
        kind.local_addr()
    ))
}

impl TestBroker {
    /// The broker at `url`, found in `origin` (a fixture that reads its
    /// own variables, such as a cluster's seed list, makes one with it).
    pub fn new(url: String, origin: Origin) -> Self {
        Self {
            url,
            origin,
            #[cfg(feature = "containers")]
            _container: None,
        }
    }
}

/// Whether something accepts TCP connections at `host:port`-like `addr`.
pub fn answers(addr: impl ToSocketAddrs, timeout: Duration) -> bool {
    addr.to_socket_addrs()
        .map(|mut addrs| addrs.any(|a| TcpStream::connect_timeout(&a, timeout).is_ok()))
        .unwrap_or(false)
}

/// The restart command for `kind` from the environment, if set.
pub fn restart_command(kind: Broker) -> Option<String> {
    std::env::var(kind.restart_env())
        .ok()
        .filter(|c| !c.trim().is_empty())
}

/// How long a restart, kill or revive command may run: a RabbitMQ node
/// holding thousands of queues takes minutes to restart, but not forever.
pub const COMMAND_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Runs a restart command with `sh -c` and waits for it, at most
/// [`COMMAND_LIMIT`]; `Err` with its output if it fails, and if it runs
/// longer (the shell is killed then).
pub async fn run_restart(command: &str) -> Result<(), String> {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(COMMAND_LIMIT, child)
        .await
        .map_err(|_| format!("`{command}` did not finish within {COMMAND_LIMIT:?}"))?
        .map_err(|e| format!("cannot run `{command}`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{command}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[cfg(feature = "containers")]
mod containers {
    use testcontainers::core::{IntoContainerPort, WaitFor};
    use testcontainers::runners::AsyncRunner;
    use testcontainers::{GenericImage, ImageExt};

    use super::{Broker, Origin, TestBroker};

    pub(super) async fn start(kind: Broker) -> Result<TestBroker, String> {
        let (image, tag, port, ready) = match kind {
            Broker::RabbitMq => ("rabbitmq", "3.13-alpine", 5672, "Server startup complete"),
            Broker::Nats => ("nats", "2.10-alpine", 4222, "Server is ready"),
            Broker::Kafka => ("apache/kafka", "3.8.0", 9092, "Kafka Server started"),
        };
        let mut request = GenericImage::new(image, tag)
            .with_exposed_port(port.tcp())
            .with_wait_for(WaitFor::message_on_stdout(ready))
            .with_cmd(Vec::<String>::new());
        if kind == Broker::Nats {
            request = GenericImage::new(image, tag)
                .with_exposed_port(port.tcp())
                .with_wait_for(WaitFor::message_on_stderr(ready))
                .with_cmd(["-js"]);
        }
        let container = request
            .start()
            .await
            .map_err(|e| format!("cannot start a {kind:?} container: {e}"))?;
        let host_port = container
            .get_host_port_ipv4(port.tcp())
            .await
            .map_err(|e| format!("container port: {e}"))?;
        let url = match kind {
            Broker::RabbitMq => format!("amqp://guest:guest@127.0.0.1:{host_port}/%2f"),
            Broker::Nats => format!("nats://127.0.0.1:{host_port}"),
            Broker::Kafka => format!("kafka://127.0.0.1:{host_port}"),
        };
        Ok(TestBroker {
            url,
            origin: Origin::Container,
            _container: Some(container),
        })
    }
}
