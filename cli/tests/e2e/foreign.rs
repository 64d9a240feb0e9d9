//! A message from another team's producer, written with each broker's own
//! client: an envelope busline cannot read (CloudEvents 0.3), a header of
//! its own, and where the client can write bytes (Kafka, AMQP) a header
//! value that is not UTF-8.

use std::time::Duration;

use busline_testkit::support::within;

/// Every broker call here answers within this, or the test fails.
const CALL: Duration = Duration::from_secs(30);

/// The envelope attributes, without the dialect's prefix.
fn attributes(id: &str) -> [(&'static str, String); 4] {
    [
        ("specversion", "0.3".into()),
        ("id", id.into()),
        ("type", "order.created".into()),
        ("source", "legacy-billing".into()),
    ]
}

pub const BODY: &[u8] = br#"{"order_id":"o-legacy"}"#;
/// What the Kafka and AMQP writers put in `x-trace`.
pub const NOT_UTF8: &[u8] = b"\xff\xfe";

/// Writes the foreign message with id `id` to `topic` on the broker of `url`.
pub async fn publish(url: &str, topic: &str, id: &str) {
    let scheme = url.split("://").next().unwrap_or_default();
    match scheme {
        "kafka" => kafka(url, topic, id).await,
        "nats" => nats(url, topic, id).await,
        "amqp" => amqp(url, topic, id).await,
        other => panic!("no raw writer for {other}"),
    }
}

async fn kafka(url: &str, topic: &str, id: &str) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let bootstrap = url.trim_start_matches("kafka://").trim_end_matches('/');
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("a raw producer");
    let mut headers = OwnedHeaders::new();
    for (name, value) in attributes(id) {
        headers = headers.insert(Header {
            key: &format!("ce_{name}"),
            value: Some(value.as_bytes()),
        });
    }
    headers = headers
        .insert(Header {
            key: "x-team",
            value: Some("legacy-billing".as_bytes()),
        })
        .insert(Header {
            key: "x-trace",
            value: Some(NOT_UTF8),
        });
    let record = FutureRecord::to(topic)
        .key("o-legacy")
        .payload(BODY)
        .headers(headers);
    producer
        .send(record, CALL)
        .await
        .map_err(|(e, _)| e)
        .expect("the broker takes the foreign record");
}

async fn nats(url: &str, topic: &str, id: &str) {
    let client = within(CALL, "a raw NATS connection", async_nats::connect(url))
        .await
        .expect("a raw NATS client");
    let js = async_nats::jetstream::new(client);
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in attributes(id) {
        headers.insert(format!("ce-{name}").as_str(), value.as_str());
    }
    headers.insert("x-team", "legacy-billing");
    let subject = format!("{}.order.created", busline_nats::escape(topic).unwrap());
    let ack = within(
        CALL,
        "a raw JetStream publish",
        js.publish_with_headers(subject, headers, BODY.into()),
    )
    .await
    .expect("published");
    within(
        CALL,
        "the stream's ack",
        std::future::IntoFuture::into_future(ack),
    )
    .await
    .expect("stored");
}

async fn amqp(url: &str, topic: &str, id: &str) {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use lapin::types::{AMQPValue, FieldTable, LongString};
    use lapin::{BasicProperties, Connection, ConnectionProperties};
    let connection = within(
        CALL,
        "a raw AMQP connection",
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .expect("a raw AMQP client");
    let channel = connection.create_channel().await.expect("a channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let mut headers = FieldTable::default();
    for (name, value) in attributes(id) {
        headers.insert(
            format!("cloudEvents_{name}").into(),
            AMQPValue::LongString(LongString::from(value.into_bytes())),
        );
    }
    headers.insert("x-team".into(), AMQPValue::LongString("legacy-billing".into()));
    headers.insert(
        "x-trace".into(),
        AMQPValue::LongString(LongString::from(NOT_UTF8.to_vec())),
    );
    let confirm = within(
        CALL,
        "a raw AMQP publish",
        channel.basic_publish(
            topic.into(),
            "order.created".into(),
            BasicPublishOptions::default(),
            BODY,
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_headers(headers),
        ),
    )
    .await
    .expect("published");
    within(CALL, "the broker's confirm", confirm)
        .await
        .expect("confirmed");
    let _ = connection.close(200, "done".into()).await;
}
