//! Passwords never show: a user of the test's own, whose password holds
//! `/`, `@`, `#`, `?`, `:` and `,`, is added to the project's broker node
//! (`rabbitmqctl`, removed at the end), connected to with its password
//! (raw in the URL and percent-encoded) and with wrong ones (a seed list
//! too); the captured logs of the whole process (lapin's included, at
//! TRACE) and every error's `Display` and `Debug` are searched for each
//! password.

use std::process::Command;
use std::time::Duration;

use busline_core::BusConfig;
use busline_testkit::brokers::{self, Broker};
use busline_testkit::logs::{assert_no_secret, capture, percent_encoded};
use busline_testkit::support::unique;

const PASSWORD: &str = "Rb7/p@ss#w?rd:x,y";
const WRONG: &str = "Wr0ng/p@ss#1?a:b";

fn rabbitmqctl(args: &[&str]) -> Result<(), String> {
    // RABBITMQ_NODENAME and RABBITMQ_ERLANG_COOKIE from
    // `.ci/rabbitmq-restartable.sh env` point it at the project's node.
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .map_err(|e| format!("rabbitmqctl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "rabbitmqctl {}: {}",
            args[0],
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A broker user of this test, deleted when dropped.
struct User(String);

impl User {
    fn add(password: &str) -> Self {
        let name = unique("busline-sec");
        rabbitmqctl(&["add_user", &name, password]).expect("rabbitmqctl add_user (the broker must be local)");
        let user = Self(name);
        rabbitmqctl(&["set_permissions", "-p", "/", &user.0, ".*", ".*", ".*"]).expect("set_permissions");
        user
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["delete_user", &self.0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_show_in_logs_errors_or_configs() {
    let logs = capture();
    let broker = brokers::find(Broker::RabbitMq).await.expect("a RabbitMQ broker");
    // host:port of the test broker's URL, whatever its credentials.
    let after_at = broker
        .url
        .rsplit_once('@')
        .map_or(broker.url.as_str(), |(_, h)| h);
    let host = after_at
        .trim_start_matches("amqp://")
        .split(['/', '?'])
        .next()
        .unwrap()
        .to_owned();
    let user = User::add(PASSWORD);
    let mut shown: Vec<(String, String)> = Vec::new();

    for url in [
        format!("amqp://{}:{PASSWORD}@{host}/%2f", user.0),
        format!("amqp://{}:{}@{host}/%2f", user.0, percent_encoded(PASSWORD)),
    ] {
        let config = BusConfig::from_url(&url);
        let bus = tokio::time::timeout(Duration::from_secs(30), busline_rabbitmq::connect(&config))
            .await
            .expect("connect within 30 s")
            .unwrap_or_else(|e| panic!("the right password is accepted: {e}"));
        shown.push(("the bus's Debug".into(), format!("{bus:?}")));
        shown.push(("the config's Debug".into(), format!("{config:?}")));
        shown.push(("the URL's Display".into(), config.url.to_string()));
        shown.push((
            "the serialized config".into(),
            serde_json::to_string(&config).unwrap(),
        ));
        bus.shutdown().await;
    }

    for url in [
        format!("amqp://{}:{WRONG}@{host}/%2f", user.0),
        format!("amqp://{}:{WRONG}@{host},{host}/%2f", user.0),
    ] {
        let config = BusConfig::from_url(&url);
        let err = tokio::time::timeout(Duration::from_secs(30), busline_rabbitmq::connect(&config))
            .await
            .expect("a refused login is reported within 30 s")
            .expect_err("a wrong password is refused");
        // The broker's answer is the error's source; the chain shows both.
        let display = busline_core::ErrorChain(&err).to_string();
        assert!(
            display.contains("***") && display.contains("ACCESS_REFUSED"),
            "{display}"
        );
        shown.push(("the error's Display".into(), err.to_string()));
        shown.push(("the error and its sources".into(), display));
        shown.push(("the error's Debug".into(), format!("{err:?}")));
        shown.push(("the config's Debug".into(), format!("{config:?}")));
    }

    let text = logs.text();
    // Not vacuous: lapin logged the connections, at TRACE.
    assert!(text.contains("TRACE lapin::"), "lapin logged nothing:\n{text}");
    shown.push(("the captured logs".into(), text));
    let shown: Vec<(&str, &str)> = shown.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_no_secret(&[PASSWORD, WRONG], &shown);
}
