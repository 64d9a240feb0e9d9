//! Passwords never show: a NATS server of the test's own, requiring a user
//! whose password holds every character that ends a URL's parts, is
//! connected to with the right password (raw and percent-encoded) and with
//! wrong ones (in a seed list, each item with its own credentials); the
//! captured logs of the whole process (async-nats' included, at TRACE) and
//! every error's `Display` and `Debug` are searched for each password.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use busline_core::BusConfig;
use busline_testkit::brokers::answers;
use busline_testkit::logs::{assert_no_secret, capture, percent_encoded};
use busline_testkit::support::eventually;

const USER: &str = "busline";
const PASSWORD: &str = "Nq7/p@ss#w?rd:x,y[z]";
const WRONG: &str = "Wr0ng/p@ss#1?a:b";
const WRONG2: &str = "Wr0ng2@x/y#z";

/// A nats-server started by this test, ended by its PID (the child handle)
/// when dropped.
struct OwnServer {
    child: Child,
    port: u16,
}

impl OwnServer {
    async fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "--user",
                USER,
                "--pass",
                PASSWORD,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (installed by .ci/brokers.sh)");
        let server = Self { child, port };
        eventually(
            Duration::from_secs(20),
            "the test's nats-server to listen",
            || answers(("127.0.0.1", port), Duration::from_millis(200)),
        )
        .await;
        server
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_show_in_logs_errors_or_configs() {
    let logs = capture();
    let server = OwnServer::start().await;
    let port = server.port;
    let mut shown: Vec<(String, String)> = Vec::new();

    for url in [
        format!("nats://{USER}:{PASSWORD}@127.0.0.1:{port}"),
        format!("nats://{USER}:{}@127.0.0.1:{port}", percent_encoded(PASSWORD)),
    ] {
        let config = BusConfig::from_url(&url);
        let bus = tokio::time::timeout(Duration::from_secs(20), busline_nats::connect(&config))
            .await
            .expect("connect within 20 s")
            .unwrap_or_else(|e| panic!("the right password is accepted: {e}"));
        shown.push(("the bus's Debug".into(), format!("{bus:?}")));
        shown.push(("the config's Debug".into(), format!("{config:?}")));
        shown.push(("the config's Display".into(), config.url.to_string()));
        shown.push((
            "the serialized config".into(),
            serde_json::to_string(&config).unwrap(),
        ));
        bus.shutdown().await;
    }

    let url = format!("nats://{USER}:{WRONG}@127.0.0.1:{port},nats://{USER}:{WRONG2}@127.0.0.1:{port}");
    let config = BusConfig::from_url(&url);
    let err = tokio::time::timeout(Duration::from_secs(20), busline_nats::connect(&config))
        .await
        .expect("a refused login is reported within 20 s")
        .expect_err("a wrong password is refused");
    let display = err.to_string();
    assert!(display.contains("***"), "{display}");
    shown.push(("the error's Display".into(), display));
    shown.push((
        "the error and its sources".into(),
        busline_core::ErrorChain(&err).to_string(),
    ));
    shown.push(("the error's Debug".into(), format!("{err:?}")));
    shown.push(("the config's Debug".into(), format!("{config:?}")));
    shown.push((
        "the serialized config".into(),
        serde_json::to_string(&config).unwrap(),
    ));

    let text = logs.text();
    // Not vacuous: the client logged its connection attempts.
    assert!(
        text.contains(&port.to_string()),
        "nothing was logged about the server:\n{text}"
    );
    // async-nats 0.46 itself writes its CONNECT message, password
    // included, at TRACE on target `async_nats::connection` (connection.rs:
    // `trace!(?connect_info, "write operation: CONNECT")`): busline cannot
    // redact it, the README says to keep that target at DEBUG. Those lines
    // are set apart, and shown to be there, so this test says when an
    // upstream fix lets the advice go.
    let (upstream, ours): (Vec<&str>, Vec<&str>) = text
        .lines()
        .partition(|l| l.contains("async_nats::connection") && l.contains("write operation: CONNECT"));
    assert!(
        upstream.iter().any(|l| l.contains(PASSWORD)),
        "async-nats no longer logs its CONNECT with the password: drop the README's advice"
    );
    shown.push((
        "the captured logs (but async-nats' CONNECT trace)".into(),
        ours.join("\n"),
    ));
    let shown: Vec<(&str, &str)> = shown.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_no_secret(&[PASSWORD, WRONG, WRONG2], &shown);
}
