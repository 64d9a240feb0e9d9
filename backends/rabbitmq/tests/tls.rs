//! amqps:// with a private CA and a client certificate, against a RabbitMQ
//! node of the test's own (`.ci/rabbitmq-restartable.sh` on ports of its
//! own, its own state directory, ended by the PID the script recorded)
//! whose TLS listener requires a client certificate (`verify_peer`,
//! `fail_if_no_peer_cert`); certificates are made at test time.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use busline_core::{BusConfig, ConfigError};
use busline_testkit::events::Ping;
use busline_testkit::support::unique;
use busline_testkit::tls::TestCerts;

/// A free port whose Erlang distribution port (+20000, the script's rule)
/// is a valid port too.
fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < 45_000 && TcpListener::bind(("127.0.0.1", port + 20_000)).is_ok() {
            return port;
        }
    }
}

/// A RabbitMQ node started by `.ci/rabbitmq-restartable.sh` in a directory
/// of its own; stopped (by its recorded PID) and removed when dropped.
struct OwnNode {
    script: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl OwnNode {
    fn script(&self, action: &str) -> std::process::Output {
        Command::new("bash")
            .arg(&self.script)
            .arg(action)
            .env("RABBITMQ_RESTARTABLE_PORT", self.port.to_string())
            .env("RABBITMQ_RESTARTABLE_DIR", &self.dir)
            // The node makes its own cookie in its own HOME.
            .env_remove("RABBITMQ_ERLANG_COOKIE")
            .env_remove("RABBITMQ_NODENAME")
            .output()
            .expect("bash runs")
    }

    fn start(certs: &TestCerts, tls_port: u16) -> Self {
        let node = Self {
            script: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.ci/rabbitmq-restartable.sh"),
            dir: std::env::temp_dir().join(unique("busline-rabbit-tls")),
            port: free_port(),
        };
        std::fs::create_dir_all(&node.dir).unwrap();
        std::fs::write(
            node.dir.join("rabbitmq.conf"),
            format!(
                "listeners.ssl.1 = 127.0.0.1:{tls_port}\n\
                 ssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\n\
                 ssl_options.verify = verify_peer\n\
                 ssl_options.fail_if_no_peer_cert = true\n",
                certs.ca.display(),
                certs.server_cert.display(),
                certs.server_key.display()
            ),
        )
        .unwrap();
        let out = node.script("start");
        assert!(
            out.status.success(),
            "the test's RabbitMQ node did not start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        node
    }
}

impl Drop for OwnNode {
    fn drop(&mut self) {
        let _ = self.script("stop");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(tls_port: u16, tls: &str) -> BusConfig {
    BusConfig::from_toml_str(&format!(
        "url = \"amqps://guest:guest@127.0.0.1:{tls_port}/%2f\"\nservice = \"tls-test\"\n\
         [rabbitmq]\nconnect_timeout = \"5s\"\nqueue_type = \"classic\"\n[rabbitmq.tls]\n{tls}"
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_private_ca() {
    let certs = TestCerts::generate();
    let tls_port = free_port();
    let _node = OwnNode::start(&certs, tls_port);
    let connect = |config: BusConfig| async move {
        tokio::time::timeout(Duration::from_secs(30), busline_rabbitmq::connect(&config))
            .await
            .expect("connect answers within 30 s")
    };

    // The private CA and a client certificate: connected, and a publish is
    // confirmed over TLS.
    let both = format!(
        "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        certs.ca.display(),
        certs.client_cert.display(),
        certs.client_key.display()
    );
    let bus = connect(config(tls_port, &both))
        .await
        .unwrap_or_else(|e| panic!("mutual TLS with the private CA: {e}"));
    bus.publish(&unique("tls"), Ping::new(1))
        .await
        .expect("a publish over TLS");
    bus.shutdown().await;

    // The same CA as inline PEM.
    let pem = std::fs::read_to_string(&certs.ca).unwrap();
    let inline = format!(
        "ca_pem = '''\n{pem}'''\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        certs.client_cert.display(),
        certs.client_key.display()
    );
    connect(config(tls_port, &inline))
        .await
        .unwrap_or_else(|e| panic!("the CA as inline PEM: {e}"))
        .shutdown()
        .await;

    // No client certificate: the broker refuses the handshake.
    let ca_only = format!("ca_file = \"{}\"\n", certs.ca.display());
    let err = connect(config(tls_port, &ca_only))
        .await
        .expect_err("no client certificate: refused (fail_if_no_peer_cert)");
    assert!(matches!(err, ConfigError::Connect { .. }), "{err:?}");

    // A client certificate, but the server's CA not trusted: we refuse it.
    let untrusted = format!(
        "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        certs.other_ca.display(),
        certs.client_cert.display(),
        certs.client_key.display()
    );
    let err = connect(config(tls_port, &untrusted))
        .await
        .expect_err("an untrusted server certificate is refused");
    assert!(matches!(err, ConfigError::Connect { .. }), "{err:?}");

    // A certificate file that is not there: a configuration error.
    let missing = "ca_file = \"/nonexistent/ca.pem\"\n";
    let err = connect(config(tls_port, missing))
        .await
        .expect_err("a missing CA file");
    assert!(
        matches!(&err, ConfigError::Invalid(m) if m.contains("ca_file")),
        "{err:?}"
    );
}
