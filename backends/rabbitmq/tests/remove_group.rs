//! `remove_group` as the broker sees it: checked with plain lapin, not
//! through busline, so a queue busline forgot to delete (or an exchange it
//! deleted that other groups still use) shows up here even when the
//! conformance scenario, which only sees events, passes.

mod common;

use std::time::Duration;

use busline_core::{dead_letter_topic, Bus, SubscribeOptions};
use busline_rabbitmq::{QueueType, RabbitConfig};
use busline_testkit::events::Ping;
use busline_testkit::support::{within, WAIT};
use busline_testkit::test_settings;
use common::{unique, RabbitFixture};
use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ExchangeKind};

/// One broker call of these tests: a broker that stops answering fails the
/// test instead of hanging it.
const CALL: Duration = Duration::from_secs(10);

/// The reply code of a refused call, or `None` when it was not the broker
/// refusing (the connection failed: the test cannot tell anything then).
fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

/// `Ok` when `queue` exists, the broker's reply code otherwise. A passive
/// declaration of a missing queue closes its channel, so each look has a
/// channel of its own.
async fn queue_exists(conn: &Connection, queue: &str) -> Result<(), u16> {
    let channel = within(CALL, "a channel", conn.create_channel()).await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let looked = within(
        CALL,
        &format!("a passive declaration of {queue}"),
        channel.queue_declare(queue.into(), passive, FieldTable::default()),
    )
    .await;
    let _ = within(CALL, "closing the channel", channel.close(200, "looked".into())).await;
    looked
        .map(drop)
        .map_err(|e| reply_code(&e).unwrap_or_else(|| panic!("looking for {queue}: {e}")))
}

/// Like [`queue_exists`], for an exchange.
async fn exchange_exists(conn: &Connection, exchange: &str) -> Result<(), u16> {
    let channel = within(CALL, "a channel", conn.create_channel()).await.unwrap();
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    let looked = within(
        CALL,
        &format!("a passive declaration of {exchange}"),
        channel.exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            passive,
            FieldTable::default(),
        ),
    )
    .await;
    let _ = within(CALL, "closing the channel", channel.close(200, "looked".into())).await;
    looked.map_err(|e| reply_code(&e).unwrap_or_else(|| panic!("looking for {exchange}: {e}")))
}

async fn assert_all(conn: &Connection, queues: &[String], expected: Result<(), u16>, when: &str) {
    for queue in queues {
        assert_eq!(
            queue_exists(conn, queue).await,
            expected,
            "queue `{queue}` {when}"
        );
    }
}

/// Provisions two groups on one topic, gives the first a retry bucket (a
/// delayed nack) and its parking queue (on quorum), removes it, and looks
/// at every queue of both with passive declarations.
async fn remove_group_deletes_its_queues(queue_type: QueueType) {
    let fixture = RabbitFixture::new().await;
    let config = RabbitConfig {
        queue_type,
        ..RabbitConfig::default()
    };
    let bus = Bus::new(fixture.rabbit(&unique("remove"), config).await, test_settings());
    let (topic, group, other) = (unique("remove"), unique("g"), unique("other"));
    bus.provision(&topic, &group).await.unwrap();
    bus.provision(&topic, &other).await.unwrap();
    {
        let mut sub = bus
            .subscribe(&topic, &group, SubscribeOptions::default())
            .await
            .unwrap();
        bus.publish(&topic, Ping::new(1)).await.unwrap();
        let first = common::next(&mut sub, "the event to retry").await;
        // 50 ms waits in the 100 ms bucket (the default base).
        first.nack(Duration::from_millis(50)).await.unwrap();
        let again = common::next(&mut sub, "the retried event").await;
        assert_eq!(again.attempt(), 2);
        again.ack().await.unwrap();
    }

    let dlq = dead_letter_topic(&topic, &group);
    let mut removed = vec![
        format!("{topic}::{group}"),
        format!("{topic}::{group}::retry.100ms"),
        format!("{dlq}::{group}"),
    ];
    let mut kept = vec![
        format!("{topic}::{other}"),
        format!("{}::{other}", dead_letter_topic(&topic, &other)),
    ];
    if queue_type == QueueType::Quorum {
        removed.extend([
            format!("{topic}::{group}::unparseable"),
            format!("{dlq}::{group}::unparseable"),
        ]);
        kept.push(format!("{topic}::{other}::unparseable"));
    }
    let raw = fixture.plain().await;
    // Seen before: a typo in a name above would pass the 404 check below.
    assert_all(&raw, &removed, Ok(()), "exists before the removal").await;
    assert_all(&raw, &kept, Ok(()), "exists before the removal").await;

    within(WAIT, "the removal", bus.remove_group(&topic, &group))
        .await
        .expect("remove the group");
    within(WAIT, "removing it again", bus.remove_group(&topic, &group))
        .await
        .expect("removing a removed group is fine");

    assert_all(&raw, &removed, Err(404), "is deleted with its group").await;
    assert_eq!(
        exchange_exists(&raw, &dlq).await,
        Err(404),
        "the group's dead-letter exchange is deleted"
    );
    assert_all(&raw, &kept, Ok(()), "of another group stays").await;
    assert_eq!(
        exchange_exists(&raw, &topic).await,
        Ok(()),
        "the topic's exchange stays for the other group"
    );
    // The bus must not trust what it remembered declaring.
    bus.provision(&topic, &group).await.unwrap();
    assert_eq!(
        queue_exists(&raw, &format!("{topic}::{group}")).await,
        Ok(()),
        "provisioned again after the removal"
    );

    clean_up(bus, raw, &[(&topic, &group), (&topic, &other)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_group_deletes_its_quorum_queues() {
    remove_group_deletes_its_queues(QueueType::Quorum).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_group_deletes_its_classic_queues() {
    remove_group_deletes_its_queues(QueueType::Classic).await;
}

/// A group that consumes another group's dead-letter topic (an operator's
/// tail) is bound to that group's dead-letter exchange: removing the group
/// deletes its own queues there but not the exchange, or the tail would stop
/// receiving dead letters without any error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_group_keeps_a_dead_letter_exchange_other_groups_consume() {
    let fixture = RabbitFixture::new().await;
    let bus = Bus::new(
        fixture
            .rabbit(&unique("remove-tail"), RabbitConfig::default())
            .await,
        test_settings(),
    );
    let (topic, group, tail) = (unique("remove-tail"), unique("g"), unique("tail"));
    let dlq = dead_letter_topic(&topic, &group);
    bus.provision(&topic, &group).await.unwrap();
    bus.provision(&dlq, &tail).await.unwrap();

    within(WAIT, "the removal", bus.remove_group(&topic, &group))
        .await
        .expect("remove the group");

    let raw = fixture.plain().await;
    assert_eq!(queue_exists(&raw, &format!("{dlq}::{group}")).await, Err(404));
    assert_eq!(
        exchange_exists(&raw, &dlq).await,
        Ok(()),
        "the dead-letter exchange stays while another group consumes it"
    );
    assert_eq!(queue_exists(&raw, &format!("{dlq}::{tail}")).await, Ok(()));
    // Still bound: a letter published to the dead-letter topic reaches the tail.
    let mut letters = bus
        .subscribe(&dlq, &tail, SubscribeOptions::default())
        .await
        .unwrap();
    let id = bus.publish(&dlq, Ping::new(1)).await.unwrap();
    let letter = common::next(&mut letters, "the tail's letter").await;
    assert_eq!(letter.event().unwrap().id, id);
    letter.ack().await.unwrap();
    drop(letters);

    clean_up(bus, raw, &[(&dlq, &tail)]).await;
}

/// Removes what a test left on the shared broker and closes both connections.
async fn clean_up(bus: Bus, raw: Connection, groups: &[(&str, &str)]) {
    for (topic, group) in groups {
        within(WAIT, "the cleanup", bus.remove_group(topic, group))
            .await
            .unwrap();
    }
    let _ = within(
        CALL,
        "closing the plain connection",
        raw.close(200, "done".into()),
    )
    .await;
    bus.shutdown().await;
}
