//! Passwords never show: librdkafka's mock cluster (which offers no SASL)
//! is connected to with SASL
//! credentials whose password holds `/`, `@`, `#`, `?` and `:` (raw in the
//! URL and percent-encoded) and with a `sasl.password` property, with
//! librdkafka's debug contexts on; the login fails, and the captured logs
//! of the whole process (librdkafka's included, at TRACE) and the error's
//! `Display` and `Debug` are searched for each password.

use std::time::Duration;

use busline_core::BusConfig;
mod common;

use busline_testkit::logs::{assert_no_secret, capture, percent_encoded};

const PASSWORD: &str = "Kf7/p@ss#w?rd:x";
const PROPERTY_PASSWORD: &str = "Kp9/pr0p#s3cret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_show_in_logs_errors_or_configs() {
    let logs = capture();
    let mock = common::MockKafka::start(1);
    let hosts = mock.bootstrap().to_owned();
    let mut shown: Vec<(String, String)> = Vec::new();
    for (url, property) in [
        (format!("kafka://busline:{PASSWORD}@{hosts}"), None),
        (
            format!("kafka://busline:{}@{hosts}", percent_encoded(PASSWORD)),
            None,
        ),
        (format!("kafka://busline:x@{hosts}"), Some(PROPERTY_PASSWORD)),
    ] {
        let mut toml = format!(
            "url = \"{url}\"\n[kafka]\noperation_timeout = \"5s\"\n\"debug\" = \"security,broker,conf,protocol\"\n"
        );
        if let Some(p) = property {
            toml.push_str(&format!("\"sasl.password\" = \"{p}\"\n"));
        }
        let config = BusConfig::from_toml_str(&toml).unwrap();
        let result = tokio::time::timeout(Duration::from_secs(30), busline_kafka::connect(&config))
            .await
            .expect("connect answers within 30 s");
        let err = result.expect_err("a SASL login to a broker without SASL fails");
        let display = err.to_string();
        assert!(display.contains("busline:***@"), "{display}");
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
        let kafka = busline_kafka::KafkaConfig::from_bus_config(&config).unwrap();
        shown.push(("the Kafka config's Debug".into(), format!("{kafka:?}")));
        shown.push((
            "the serialized Kafka config".into(),
            serde_json::to_string(&kafka).unwrap(),
        ));
    }
    let text = logs.text();
    // Not vacuous: librdkafka logged the SASL attempt.
    assert!(
        text.to_ascii_lowercase().contains("sasl"),
        "nothing was logged about SASL:\n{text}"
    );
    shown.push(("the captured logs".into(), text));
    let shown: Vec<(&str, &str)> = shown.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_no_secret(&[PASSWORD, PROPERTY_PASSWORD], &shown);
}
