//! The operator's flows, the same on every broker.

use std::sync::Arc;

use busline_core::{Bus, BusConfig, DomainEvent, Event, HandlerError, Router, RunningRouter};
use busline_testkit::support::{eventually, unique, Collector, WAIT};
use serde::{Deserialize, Serialize};

use crate::cli::Cli;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    order_id: String,
    #[serde(default)]
    poison: bool,
}

impl Event for Order {
    const TYPE: &'static str = "order.created";
}

async fn connect(url: &str) -> Bus {
    let config = BusConfig::from_url(url).with_service("cli-e2e");
    let bus = match config.url.scheme().as_str() {
        "amqp" => busline_rabbitmq::connect(&config).await,
        "nats" => busline_nats::connect(&config).await,
        "kafka" => busline_kafka::connect(&config).await,
        other => panic!("no backend for {other}"),
    };
    bus.expect("the test's own connection")
}

/// A consumer of `group` that dead-letters a poisoned order (permanent
/// error) until an operator replays it, and records what it handled.
async fn billing(bus: &Bus, topic: &str, group: &str) -> (RunningRouter, Arc<Collector<String>>) {
    bus.provision(topic, group).await.expect("provision");
    let handled = Collector::new();
    let sink = handled.clone();
    let router = Router::new(bus.clone(), group)
        .on(topic, move |event: DomainEvent<Order>| {
            let sink = sink.clone();
            async move {
                let replayed = event.extensions.contains_key("replaycount");
                if event.data.poison && !replayed {
                    return Err(HandlerError::permanent("order total is negative"));
                }
                sink.push(event.data.order_id.clone());
                Ok(())
            }
        })
        .start()
        .await
        .expect("the router starts");
    (router, handled)
}

fn publish_order<'a>(topic: &'a str, order: &'a str, poison: bool) -> Vec<String> {
    vec![
        "publish".into(),
        topic.into(),
        "--type".into(),
        "order.created".into(),
        "--key".into(),
        order.into(),
        "--data".into(),
        format!(r#"{{"order_id":"{order}","poison":{poison}}}"#),
    ]
}

async fn publish(cli: &Cli, topic: &str, order: &str, poison: bool) -> String {
    let args = publish_order(topic, order, poison);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cli.run(&args).await;
    out.assert_code(0);
    let id = out.stdout.trim().to_owned();
    assert!(!id.is_empty(), "publish prints the event id: {out}");
    id
}

pub async fn publish_then_tail_sees_it(url: &str, from: &str) {
    let cli = Cli::new(url);
    let topic = unique("cli-tail");
    let tail = cli
        .tail(&[
            &topic,
            "--json",
            "--count",
            "1",
            "--from",
            from,
            "--timeout",
            "120s",
        ])
        .await;
    let id = publish(&cli, &topic, "o-1", false).await;
    let out = tail.finish().await;
    out.assert_code(0);
    let line: serde_json::Value =
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(line["id"], id.as_str(), "{out}");
    assert_eq!(line["type"], "order.created");
    assert_eq!(line["key"], "o-1");
    assert_eq!(line["data"]["order_id"], "o-1");
    assert_eq!(line["topic"], topic.as_str());
}

pub async fn poison_is_listed_shown_and_replayed_by_id(url: &str) {
    let cli = Cli::new(url);
    let bus = connect(url).await;
    let topic = unique("cli-dlq");
    let group = unique("billing");
    let (router, handled) = billing(&bus, &topic, &group).await;
    let good = publish(&cli, &topic, "o-good", false).await;
    let poison = publish(&cli, &topic, "o-poison", true).await;
    handled.wait_len(1, WAIT, "the good order").await;
    eventually(WAIT, "the poisoned order dead-lettered", || {
        router.stats().dead_lettered == 1
    })
    .await;

    let list = cli.run(&["dlq", "list", &topic, &group]).await;
    list.assert_code(0);
    let row = list
        .stdout
        .lines()
        .find(|l| l.starts_with(&poison))
        .unwrap_or_else(|| panic!("dlq list shows the poison {poison}: {list}"));
    assert!(
        row.contains("order.created") && row.contains("permanent_error"),
        "{row}"
    );
    assert!(row.contains("order total is negative"), "the error text: {row}");
    assert!(
        !list.stdout.contains(&good),
        "the handled order is not dead: {list}"
    );

    let show = cli.run(&["dlq", "show", &topic, &group, &poison]).await;
    show.assert_code(0);
    let whole: serde_json::Value =
        serde_json::from_str(&show.stdout).unwrap_or_else(|e| panic!("{e}: {show}"));
    assert_eq!(whole["data"]["order_id"], "o-poison");
    assert_eq!(whole["dead_letter"]["reason"], "permanent_error");
    let missing = cli.run(&["dlq", "show", &topic, &group, "no-such-id"]).await;
    missing.assert_code(4);

    let dry = cli
        .run(&["dlq", "replay", &topic, &group, "--id", &poison, "--dry-run"])
        .await;
    dry.assert_code(0);
    assert!(dry.stdout.contains("would replay 1 of 1"), "{dry}");
    assert_eq!(handled.len(), 1, "a dry run replays nothing");

    let replay = cli.run(&["dlq", "replay", &topic, &group, "--id", &poison]).await;
    replay.assert_code(0);
    assert!(replay.stdout.contains("replayed 1, kept 0"), "{replay}");
    handled.wait_len(2, WAIT, "the replayed order").await;
    assert_eq!(
        handled.snapshot(),
        vec!["o-good".to_owned(), "o-poison".to_owned()]
    );

    let after = cli.run(&["dlq", "list", &topic, &group]).await;
    after.assert_code(0);
    assert!(
        after.stdout.contains("no dead letters"),
        "the DLQ is empty after the replay: {after}"
    );
    router.shutdown().await.expect("the router stops");
    let _ = bus.remove_group(&topic, &group).await;
    bus.shutdown().await;
}

pub async fn purge_removes_only_what_it_selects(url: &str) {
    let cli = Cli::new(url);
    let bus = connect(url).await;
    let topic = unique("cli-purge");
    let group = unique("billing");
    let (router, _handled) = billing(&bus, &topic, &group).await;
    let first = publish(&cli, &topic, "o-1", true).await;
    let second = publish(&cli, &topic, "o-2", true).await;
    eventually(WAIT, "both orders dead-lettered", || {
        router.stats().dead_lettered == 2
    })
    .await;
    router.shutdown().await.expect("the router stops");

    let refused = cli.run(&["dlq", "purge", &topic, &group, "--id", &first]).await;
    refused.assert_code(2);
    let purge = cli
        .run(&["dlq", "purge", &topic, &group, "--id", &first, "--yes"])
        .await;
    purge.assert_code(0);
    assert!(purge.stdout.contains("purged 1, kept 1"), "{purge}");

    let list = cli.run(&["dlq", "list", &topic, &group, "--json"]).await;
    list.assert_code(0);
    let ids: Vec<String> = list
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {list}")))
        .map(|v| v["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ids, vec![second], "only the other letter is left: {list}");
    let _ = bus.remove_group(&topic, &group).await;
    bus.shutdown().await;
}

pub async fn doctor_is_green(url: &str, removes_groups: bool) {
    let out = Cli::new(url).run(&["doctor"]).await;
    out.assert_code(0);
    for step in [
        "connect",
        "provision",
        "subscribe",
        "publish",
        "consume",
        "dead-letter",
        "replay",
    ] {
        assert!(
            out.stdout.contains(&format!("ok    {step}")),
            "step {step}: {out}"
        );
    }
    let cleaned = out.stdout.contains("ok    clean up");
    assert_eq!(cleaned, removes_groups, "{out}");
    assert!(out.stdout.contains("all checks passed"), "{out}");
}

pub async fn doctor_fails_to_connect(url: &str) {
    let out = Cli::new(url)
        .run(&["doctor", "--step-timeout", "10s", "--connect-timeout", "10s"])
        .await;
    assert_ne!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("FAIL"), "a failed step: {out}");
    assert!(!out.stdout.contains("all checks passed"), "{out}");
}

/// The CLI of `url`, with the RabbitMQ management API of the test node
/// (`.ci/rabbitmq-restartable.sh env`) where the URL is AMQP: AMQP itself
/// cannot list exchanges or queues.
fn inventory_cli(url: &str) -> Cli {
    let cli = Cli::new(url);
    match std::env::var("BUSLINE_TEST_AMQP_MANAGEMENT_URL") {
        Ok(management) if url.starts_with("amqp") => {
            cli.with_config(&format!("[rabbitmq]\nmanagement_url = \"{management}\"\n"))
        }
        _ => cli,
    }
}

/// `busline groups --json` until `group` shows `lag`; the brokers publish
/// their figures with a delay (RabbitMQ's statistics every 5 s).
async fn lag_shows(cli: &Cli, topic: &str, group: &str, lag: u64) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let out = cli.run(&["groups", topic, "--json"]).await;
        out.assert_code(0);
        let row = out
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|row| row["group"] == group && row["lag"] == lag);
        if let Some(row) = row {
            return row;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "group {group} never showed lag {lag}: {out}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

pub async fn topics_and_groups_show_the_lag(url: &str) {
    let cli = inventory_cli(url);
    let bus = connect(url).await;
    let topic = unique("cli-inv");
    let group = unique("billing");
    bus.provision(&topic, &group).await.expect("provision");
    publish(&cli, &topic, "o-1", false).await;
    publish(&cli, &topic, "o-2", false).await;

    let topics = cli.run(&["topics"]).await;
    topics.assert_code(0);
    assert!(topics.stdout.starts_with("TOPIC"), "a table: {topics}");
    assert!(
        topics
            .stdout
            .lines()
            .any(|l| l.split_whitespace().next() == Some(topic.as_str())),
        "the topic is listed: {topics}"
    );

    let row = lag_shows(&cli, &topic, &group, 2).await;
    assert_eq!(row["dead_letters"], 0, "nothing dead-lettered yet: {row}");
    let table = cli.run(&["groups", &topic]).await;
    table.assert_code(0);
    let line = table
        .stdout
        .lines()
        .find(|l| l.starts_with(&group))
        .unwrap_or_else(|| panic!("the group's row: {table}"));
    assert_eq!(line.split_whitespace().nth(1), Some("2"), "its lag: {table}");

    let missing = cli.run(&["groups", &unique("absent")]).await;
    missing.assert_code(4);
    let _ = bus.remove_group(&topic, &group).await;
    bus.shutdown().await;
}

pub async fn unreadable_letter_is_listed_with_its_headers(url: &str, bytes_headers: bool) {
    let cli = Cli::new(url);
    let bus = connect(url).await;
    let topic = unique("cli-foreign");
    let group = unique("billing");
    let id = unique("legacy");
    let (router, _handled) = billing(&bus, &topic, &group).await;
    let tail = cli
        .tail(&[
            &topic,
            "--json",
            "--count",
            "1",
            "--from",
            "earliest",
            "--timeout",
            "120s",
        ])
        .await;
    crate::foreign::publish(url, &topic, &id).await;
    eventually(WAIT, "the foreign message dead-lettered", || {
        router.stats().dead_lettered == 1
    })
    .await;
    let tailed = tail.finish().await;
    tailed.assert_code(0);
    let line: serde_json::Value =
        serde_json::from_str(tailed.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {tailed}"));
    assert!(
        line["unreadable"].is_string(),
        "tail shows it as unreadable: {line}"
    );
    assert!(
        line["received"]["headers"]
            .as_array()
            .is_some_and(|h| h.iter().any(|h| h[0] == "x-team" && h[1] == "legacy-billing")),
        "tail shows what was received: {line}"
    );

    let list = cli.run(&["dlq", "list", &topic, &group]).await;
    list.assert_code(0);
    let row = list
        .stdout
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("the table names the letter by its own id header: {list}"));
    assert!(row.contains("unreadable"), "{row}");
    assert!(list.stdout.contains("(1 unreadable)"), "{list}");
    let details = list
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("headers"))
        .unwrap_or_else(|| panic!("the letter's headers are listed: {list}"));
    assert!(details.contains("x-team=legacy-billing"), "{details}");
    assert!(details.contains("specversion=0.3"), "{details}");
    if bytes_headers {
        assert!(
            details.contains(r"x-trace=\xff\xfe"),
            "bytes that are not UTF-8 are escaped, not dropped: {details}"
        );
    }
    assert!(
        list.stdout.contains(r#"{"order_id":"o-legacy"}"#),
        "the body: {list}"
    );

    let json = cli.run(&["dlq", "list", &topic, &group, "--json"]).await;
    json.assert_code(0);
    let line: serde_json::Value =
        serde_json::from_str(json.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(line["id"], id.as_str(), "{line}");
    assert!(line["unreadable"].is_string(), "{line}");
    let headers = line["received"]["headers"].as_array().expect("headers");
    assert!(
        headers
            .iter()
            .any(|h| h[0] == "x-team" && h[1] == "legacy-billing"),
        "{line}"
    );
    assert_eq!(line["received"]["body"]["text"], r#"{"order_id":"o-legacy"}"#);

    let show = cli.run(&["dlq", "show", &topic, &group, &id]).await;
    show.assert_code(0);
    assert!(show.stdout.contains("\"unreadable\""), "{show}");

    let purge = cli
        .run(&["dlq", "purge", &topic, &group, "--reason", "unreadable", "--yes"])
        .await;
    purge.assert_code(0);
    let after = cli.run(&["dlq", "list", &topic, &group]).await;
    after.assert_code(0);
    assert!(after.stdout.contains("no dead letters"), "{after}");
    router.shutdown().await.expect("the router stops");
    let _ = bus.remove_group(&topic, &group).await;
    bus.shutdown().await;
}
