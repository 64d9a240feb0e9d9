//! A short retry is not held behind a longer one scheduled before it
//! (issue 10, #12): each delay waits in its own bucket queue, so the
//! 200 ms retry of the second event comes back before the 6 s retry of the
//! first, on classic and quorum queues. A retry left in the per-message-TTL
//! queue of earlier versions still comes back after an upgrade.

mod common;

use std::time::{Duration, Instant};

use busline_core::Bus;
use busline_core::{Delivery, SubscribeOptions};
use busline_rabbitmq::{QueueType, RabbitConfig};
use busline_testkit::events::Ping;
use busline_testkit::support::{within, WAIT};
use busline_testkit::test_settings;
use common::{next, unique, RabbitFixture};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};

const LONG: Duration = Duration::from_secs(6);
const SHORT: Duration = Duration::from_millis(200);

fn id(d: &Delivery) -> busline_core::EventId {
    d.event().expect("a readable envelope").id.clone()
}

async fn short_retry_overtakes_a_long_one(queue_type: QueueType) {
    let fixture = RabbitFixture::new().await;
    let config = RabbitConfig {
        queue_type,
        ..RabbitConfig::default()
    };
    let bus = Bus::new(
        fixture.rabbit(&unique("retry-delay"), config).await,
        test_settings(),
    );
    let (topic, group) = (unique("retry-delay"), unique("g"));
    let mut sub = bus
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .unwrap();

    let long = bus.publish(&topic, Ping::new(1)).await.unwrap();
    let first = next(&mut sub, "the long event").await;
    assert_eq!((id(&first), first.attempt()), (long.clone(), 1));
    let long_nacked = Instant::now();
    first.nack(LONG).await.unwrap();

    let short = bus.publish(&topic, Ping::new(2)).await.unwrap();
    let first = next(&mut sub, "the short event").await;
    assert_eq!((id(&first), first.attempt()), (short.clone(), 1));
    let short_nacked = Instant::now();
    first.nack(SHORT).await.unwrap();

    let back = next(&mut sub, "the first retry to come back").await;
    let short_waited = short_nacked.elapsed();
    let came_first = id(&back);
    assert_eq!(back.attempt(), 2);
    back.ack().await.unwrap();
    let other = next(&mut sub, "the second retry to come back").await;
    let long_waited = long_nacked.elapsed();
    assert_eq!(other.attempt(), 2);
    other.ack().await.unwrap();
    eprintln!(
        "{queue_type:?}: asked {SHORT:?} after {LONG:?}; first back after {short_waited:?} \
         (the {} one), the other after {long_waited:?} from its nack",
        if came_first == short { "short" } else { "long" }
    );
    assert_eq!(
        came_first, short,
        "the {SHORT:?} retry waited behind the {LONG:?} one ({short_waited:?})"
    );
    assert!(
        short_waited >= SHORT,
        "a retry came back sooner than asked: {short_waited:?}"
    );
    assert!(
        long_waited >= LONG,
        "a retry came back sooner than asked: {long_waited:?}"
    );
    drop(sub);
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_retry_is_not_held_behind_a_long_one_on_classic_queues() {
    short_retry_overtakes_a_long_one(QueueType::Classic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_retry_is_not_held_behind_a_long_one_on_quorum_queues() {
    short_retry_overtakes_a_long_one(QueueType::Quorum).await;
}

/// What busline before delay buckets left behind: `<topic>::<group>::retry`
/// with per-message TTLs, dead-lettering into the group's queue. Nothing
/// declares or reads it any more; it empties itself into the group's queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_left_in_the_old_retry_queue_comes_back_after_an_upgrade() {
    let fixture = RabbitFixture::new().await;
    let bus = Bus::new(
        fixture
            .rabbit(&unique("retry-upgrade"), RabbitConfig::default())
            .await,
        test_settings(),
    );
    let (topic, group) = (unique("retry-upgrade"), unique("g"));
    bus.provision(&topic, &group).await.unwrap();
    let id = bus.publish(&topic, Ping::new(1)).await.unwrap();

    // The old version's retry: the message moved into its retry queue with
    // the next attempt number and a per-message TTL.
    let (queue, old) = (format!("{topic}::{group}"), format!("{topic}::{group}::retry"));
    let raw = fixture.plain().await;
    let channel = raw.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text("classic"));
    args.insert("x-dead-letter-exchange".into(), text(""));
    args.insert("x-dead-letter-routing-key".into(), text(&queue));
    channel
        .queue_declare(old.as_str().into(), QueueDeclareOptions::durable(), args)
        .await
        .unwrap();
    let message = within(WAIT, "the published event in the group's queue", async {
        loop {
            if let Some(m) = channel
                .basic_get(queue.as_str().into(), BasicGetOptions::default())
                .await
                .unwrap()
            {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut headers = message.delivery.properties.headers().clone().unwrap_or_default();
    headers.insert("x-busline-attempt".into(), AMQPValue::LongUInt(2));
    let properties = message
        .delivery
        .properties
        .clone()
        .with_headers(headers)
        .with_expiration("300".into());
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
        .basic_publish(
            "".into(),
            old.as_str().into(),
            BasicPublishOptions::default(),
            &message.delivery.data,
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    message
        .delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .unwrap();

    let mut sub = bus
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .unwrap();
    let back = next(&mut sub, "the retry from the old retry queue").await;
    assert_eq!((id, back.attempt()), (self::id(&back), 2));
    back.ack().await.unwrap();
    drop(sub);
    let _ = channel
        .queue_delete(old.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = raw.close(200, "done".into()).await;
    bus.shutdown().await;
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}
