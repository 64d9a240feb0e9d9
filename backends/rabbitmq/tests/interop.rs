//! Interoperability with plain AMQP clients: busline's events are readable
//! by plain lapin with every attribute visible, and CloudEvents messages
//! from plain lapin reach typed busline handlers.

mod common;

use std::collections::BTreeMap;

use busline_core::{Bus, DomainEvent, Event, Router};
use busline_rabbitmq::RabbitConfig;
use busline_testkit::support::{recorder, within, Collector, WAIT};
use busline_testkit::test_settings;
use common::{unique, RabbitFixture};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: String,
    total_cents: u64,
}

impl Event for OrderPlaced {
    const TYPE: &'static str = "order.placed";
    const VERSION: u32 = 3;
}

fn text(table: &FieldTable, name: &str) -> String {
    match table.inner().get(name) {
        Some(AMQPValue::LongString(s)) => String::from_utf8(s.as_bytes().to_vec()).unwrap(),
        other => panic!("header {name} is {other:?}, expected a long string"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_lapin_reads_every_attribute_of_a_busline_event() {
    let fixture = RabbitFixture::new().await;
    let bus = Bus::new(
        fixture.rabbit("interop-out", RabbitConfig::default()).await,
        test_settings(),
    );
    let topic = unique("interop-out");
    // The exchange exists once busline provisions any group on the topic.
    bus.provision(&topic, "busline-side").await.unwrap();

    let conn = fixture.plain().await;
    let channel = conn.create_channel().await.unwrap();
    let queue = channel
        .queue_declare("".into(), QueueDeclareOptions::exclusive(), FieldTable::default())
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.name().clone(),
            ShortString::from(topic.as_str()),
            "order.*".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let sent = DomainEvent::new(OrderPlaced {
        order_id: "o-9".into(),
        total_cents: 1299,
    })
    .with_key("o-9")
    .with_correlation_id("request-1")
    .with_causation_id("cause-1")
    .with_extension(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    bus.publish_event(&topic, sent.clone()).await.unwrap();

    let delivery = within(WAIT, "the event at the plain consumer", consumer.next())
        .await
        .unwrap()
        .unwrap();
    let props = &delivery.properties;
    assert_eq!(
        delivery.routing_key.as_str(),
        "order.placed",
        "routing key = event type"
    );
    assert_eq!(props.message_id().as_ref().unwrap().as_str(), sent.id);
    assert_eq!(props.correlation_id().as_ref().unwrap().as_str(), "request-1");
    assert_eq!(
        props.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    assert_eq!(props.kind().as_ref().unwrap().as_str(), "order.placed");
    assert_eq!(props.app_id().as_ref().unwrap().as_str(), "busline-test");
    assert_eq!(*props.delivery_mode(), Some(2), "persistent");
    assert_eq!(props.timestamp().unwrap() as i64, sent.time.timestamp());

    let headers = props.headers().as_ref().expect("a header table");
    let got: BTreeMap<&str, String> = [
        "specversion",
        "id",
        "type",
        "source",
        "time",
        "dataversion",
        "correlationid",
        "causationid",
        "partitionkey",
        "traceparent",
    ]
    .into_iter()
    .map(|a| (a, text(headers, &format!("cloudEvents_{a}"))))
    .collect();
    assert_eq!(got["specversion"], "1.0");
    assert_eq!(got["id"], sent.id);
    assert_eq!(got["type"], "order.placed");
    assert_eq!(got["source"], "busline-test");
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(&got["time"]).unwrap(),
        sent.time
    );
    assert_eq!(got["dataversion"], "3");
    assert_eq!(got["correlationid"], "request-1");
    assert_eq!(got["causationid"], "cause-1");
    assert_eq!(got["partitionkey"], "o-9");
    assert_eq!(got["traceparent"], sent.extensions["traceparent"]);
    let body: OrderPlaced = serde_json::from_slice(&delivery.data).unwrap();
    assert_eq!(body, sent.data);
    delivery.ack(BasicAckOptions::default()).await.unwrap();
    let _ = conn.close(200, "done".into()).await;
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloudevents_message_from_plain_lapin_reaches_a_typed_handler() {
    let fixture = RabbitFixture::new().await;
    let bus = Bus::new(
        fixture.rabbit("interop-in", RabbitConfig::default()).await,
        test_settings(),
    );
    let (topic, group) = (unique("interop-in"), unique("g"));
    let got = Collector::<DomainEvent<OrderPlaced>>::new();
    let router = Router::new(bus.clone(), &group)
        .on(&topic, recorder(&got))
        .start()
        .await
        .unwrap();

    // What any CloudEvents AMQP producer writes: the required attributes as
    // headers, the content type as the native property.
    let conn = fixture.plain().await;
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut headers = FieldTable::default();
    for (name, value) in [
        ("cloudEvents_specversion", "1.0"),
        ("cloudEvents_id", "foreign-1"),
        ("cloudEvents_type", "order.placed"),
        ("cloudEvents_source", "/legacy/checkout"),
        ("cloudEvents_time", "2024-05-01T12:30:00.123Z"),
        ("cloudEvents_dataversion", "3"),
        ("cloudEvents_tenant", "acme"),
    ] {
        headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
    }
    let body = serde_json::to_vec(&OrderPlaced {
        order_id: "o-77".into(),
        total_cents: 500,
    })
    .unwrap();
    let confirm = channel
        .basic_publish(
            ShortString::from(topic.as_str()),
            "order.placed".into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default()
                .with_headers(headers)
                .with_content_type("application/json".into())
                .with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());

    let events = got
        .wait_len(1, WAIT, "the foreign event in the typed handler")
        .await;
    let e = &events[0];
    assert_eq!(e.id, "foreign-1");
    assert_eq!(e.source, "/legacy/checkout");
    assert_eq!(e.version, 3);
    assert_eq!(
        e.correlation_id, "foreign-1",
        "a foreign event starts its own chain"
    );
    assert_eq!(e.extensions["tenant"], "acme");
    assert_eq!(
        e.data,
        OrderPlaced {
            order_id: "o-77".into(),
            total_cents: 500
        }
    );
    let stats = router.shutdown().await.unwrap();
    assert_eq!(stats.handled, 1);
    let _ = conn.close(200, "done".into()).await;
    bus.shutdown().await;
}
