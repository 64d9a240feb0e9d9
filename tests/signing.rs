//! Signed envelopes end to end, on the memory bus and on NATS JetStream and
//! RabbitMQ over real connections: good HMAC and Ed25519 signatures reach
//! the handler; a changed payload, a changed attribute, another key under a
//! known id, an unknown or retired key, a key used outside its scope and an
//! unsigned event are each dead-lettered with their reason; keys roll while
//! the router runs; a signed dead letter replays and verifies again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use busline::layers::signing::{self, Keyring, SignedBus, SigningKey, VerifyingKey};
use busline::{
    Bus, Context, DeadLetter, DeadLetterReason, DomainEvent, HandlerError, Outcome, RawEvent, ReplayOptions,
    Router, RouterObserver, Settled, SubscribeOptions,
};
use busline_testkit::brokers::{find, Broker};
use busline_testkit::events::Ping;
use busline_testkit::support::{unique, within, Collector, WAIT};
use futures::StreamExt;

/// Records the dead-letter reasons of one router, in order.
struct Reasons(Arc<Collector<DeadLetterReason>>);

impl RouterObserver for Reasons {
    fn on_settled(&self, settled: &Settled<'_>) {
        if let Outcome::DeadLettered { reason } = settled.outcome {
            self.0.push(reason);
        }
    }
}

fn ping(seq: u64, note: &str) -> Ping {
    Ping {
        seq,
        note: note.into(),
    }
}

struct Keys {
    orders: SigningKey,
    orders_ed: SigningKey,
    payments: SigningKey,
    /// Claims the id of `orders` with another secret.
    impostor: SigningKey,
    unknown: SigningKey,
    rolled: SigningKey,
}

fn keys() -> Keys {
    Keys {
        orders: SigningKey::hmac_sha256("orders-1", [1u8; 32]).unwrap(),
        orders_ed: SigningKey::ed25519("orders-ed-1", [2u8; 32]).unwrap(),
        payments: SigningKey::ed25519("payments-1", [3u8; 32]).unwrap(),
        impostor: SigningKey::hmac_sha256("orders-1", [9u8; 32]).unwrap(),
        unknown: SigningKey::hmac_sha256("retired-0", [4u8; 32]).unwrap(),
        rolled: SigningKey::hmac_sha256("orders-2", [5u8; 32]).unwrap(),
    }
}

async fn scenario(url: &str) {
    let base = within(WAIT, "connecting", busline::connect_url(url))
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    let (topic, group) = (unique("signed"), unique("g"));
    let k = keys();
    // Only the public halves of the Ed25519 keys reach the consumer.
    let orders_ed_public = VerifyingKey::ed25519("orders-ed-1", k.orders_ed.public_key().unwrap()).unwrap();
    let payments_public = VerifyingKey::ed25519("payments-1", k.payments.public_key().unwrap()).unwrap();
    let keyring = Keyring::new()
        .with(VerifyingKey::of(&k.orders).allow_sources(["orders"]))
        .with(orders_ed_public.allow_sources(["orders"]))
        .with(
            payments_public
                .allow_sources(["payments"])
                .allow_types(["payment.*"]),
        );
    let consumer = SignedBus::wrap(&base, None, keyring.clone());
    let handled = Collector::<u64>::new();
    let reasons = Collector::<DeadLetterReason>::new();
    let failed_once = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (sink, failed) = (handled.clone(), failed_once.clone());
    let router = Router::new(consumer.clone(), group.clone())
        .observe(Reasons(reasons.clone()))
        .on(&topic, move |_c: Context, e: DomainEvent<Ping>| {
            let (sink, failed) = (sink.clone(), failed.clone());
            async move {
                if e.data.note == "fail-once" && !failed.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    return Err(HandlerError::permanent("the first attempt fails"));
                }
                sink.push(e.data.seq);
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();

    // The publishers: a signed bus of the orders service, and raw events
    // signed by hand and changed afterwards, as a forger on the wire would.
    let orders_bus = SignedBus::wrap(&base, Some(k.orders.clone()), Keyring::new());
    let from = |source: &str, p: Ping| DomainEvent::new(p).with_source(source);
    let raw = |source: &str, p: Ping| -> RawEvent { base.encode(&topic, from(source, p)).unwrap() };
    let send_raw = |event: RawEvent| {
        let (base, topic) = (base.clone(), topic.clone());
        async move { base.publish_raw(&topic, event).await.unwrap() }
    };
    let mut want_reasons: BTreeMap<u64, DeadLetterReason> = BTreeMap::new();
    let mut expect = |seq: u64, reason: DeadLetterReason| {
        want_reasons.insert(seq, reason);
        want_reasons.len()
    };

    orders_bus
        .publish_event(&topic, from("orders", ping(1, "hmac")))
        .await
        .unwrap();
    send_raw(signing::sign(&k.orders_ed, raw("orders", ping(2, "ed25519")))).await;
    handled.wait_len(2, WAIT, "the two well-signed events").await;

    let mut tampered = signing::sign(&k.orders, raw("orders", ping(3, "payload")));
    tampered.data.bytes = base.codecs().encode(&ping(3, "payload, changed")).unwrap().into();
    send_raw(tampered).await;
    let n = expect(3, DeadLetterReason::BadSignature);
    reasons.wait_len(n, WAIT, "the changed payload refused").await;

    let mut tampered = signing::sign(&k.orders_ed, raw("orders", ping(4, "attribute")));
    tampered.event_type = "test.ping".into();
    tampered.extensions.insert("tenant".into(), "added-later".into());
    send_raw(tampered).await;
    let n = expect(4, DeadLetterReason::BadSignature);
    reasons.wait_len(n, WAIT, "the changed attribute refused").await;

    send_raw(signing::sign(&k.impostor, raw("orders", ping(5, "impostor")))).await;
    let n = expect(5, DeadLetterReason::BadSignature);
    reasons
        .wait_len(n, WAIT, "another key under a known id refused")
        .await;

    send_raw(signing::sign(&k.unknown, raw("orders", ping(6, "unknown key")))).await;
    let n = expect(6, DeadLetterReason::UnknownKey);
    reasons.wait_len(n, WAIT, "the unknown key refused").await;

    // The orders key signing as the payment service, the payment key
    // signing a type outside `payment.*`.
    send_raw(signing::sign(&k.orders, raw("payments", ping(7, "wrong source")))).await;
    let n = expect(7, DeadLetterReason::KeyNotAllowed);
    reasons
        .wait_len(n, WAIT, "a source outside the key's scope refused")
        .await;
    send_raw(signing::sign(&k.payments, raw("payments", ping(8, "wrong type")))).await;
    let n = expect(8, DeadLetterReason::KeyNotAllowed);
    reasons
        .wait_len(n, WAIT, "a type outside the key's scope refused")
        .await;

    base.publish_event(&topic, from("orders", ping(9, "unsigned")))
        .await
        .unwrap();
    let n = expect(9, DeadLetterReason::Unsigned);
    reasons.wait_len(n, WAIT, "the unsigned event refused").await;

    // Rolling keys while the router runs: the new key is added, the
    // publisher moves to it, the old one is retired.
    keyring.insert(VerifyingKey::of(&k.rolled).allow_sources(["orders"]));
    SignedBus::wrap(&base, Some(k.rolled.clone()), Keyring::new())
        .publish_event(&topic, from("orders", ping(10, "rolled")))
        .await
        .unwrap();
    handled
        .wait_len(3, WAIT, "the event signed with the rolled key")
        .await;
    keyring.remove("orders-1");
    orders_bus
        .publish_event(&topic, from("orders", ping(11, "retired key")))
        .await
        .unwrap();
    let n = expect(11, DeadLetterReason::UnknownKey);
    reasons.wait_len(n, WAIT, "the retired key refused").await;

    // A signed event dead-lettered by its handler replays and verifies.
    send_raw(signing::sign(&k.rolled, raw("orders", ping(12, "fail-once")))).await;
    let n = expect(12, DeadLetterReason::PermanentError);
    reasons
        .wait_len(n, WAIT, "the failing handler's dead letter")
        .await;
    assert_eq!(
        reasons.snapshot(),
        want_reasons.values().copied().collect::<Vec<_>>()
    );
    let letters = want_reasons.len();
    let report = within(
        WAIT,
        "the replay",
        consumer.replay_dead_letters(
            &topic,
            &group,
            ReplayOptions {
                max: letters,
                idle_timeout: Duration::from_secs(10),
                unreadable_delay: Duration::from_millis(500),
            },
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        (report.moved, report.unreadable),
        (1, letters - 1),
        "the replay through the signed bus moves the signed letter and leaves the refused ones: {report:?}"
    );
    handled.wait_len(4, WAIT, "the replayed event").await;
    assert_eq!(handled.snapshot(), vec![1, 2, 10, 12]);
    router.shutdown().await.unwrap();

    // The refused letters, read as they are: the original message with its
    // signature, and the reason.
    let mut dlq = base
        .subscribe(
            &busline::dead_letter_topic(&topic, &group),
            &group,
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
    let mut got = BTreeMap::new();
    while got.len() < letters - 1 {
        let d = within(WAIT, "the refused dead letters", dlq.next())
            .await
            .expect("the DLQ stream ended")
            .unwrap();
        let event = d.event().expect("a dead letter reads as an envelope").clone();
        let letter = DeadLetter::read(&event).expect("dead-letter attributes");
        let p: Ping = base
            .codecs()
            .decode(event.content_type(), &event.data.bytes)
            .unwrap();
        assert_eq!(
            event.extensions.contains_key(signing::SIGNATURE),
            p.seq != 9,
            "letter {p:?} keeps its signature, and only the unsigned one has none"
        );
        assert!(
            !letter.error.is_empty() && letter.error.contains(event.id.as_str()),
            "the error names the event: {}",
            letter.error
        );
        got.insert(p.seq, letter.reason);
        d.ack().await.unwrap();
    }
    want_reasons.remove(&12);
    assert_eq!(got, want_reasons);
    base.shutdown().await;
}

#[tokio::test]
async fn signed_events_on_the_memory_bus() {
    scenario(&format!("memory://{}", unique("signing"))).await;
}

#[tokio::test]
async fn signed_events_on_nats() {
    let broker = find(Broker::Nats).await.unwrap_or_else(|e| panic!("{e}"));
    scenario(&broker.url).await;
}

#[tokio::test]
async fn signed_events_on_rabbitmq() {
    let broker = find(Broker::RabbitMq).await.unwrap_or_else(|e| panic!("{e}"));
    scenario(&broker.url).await;
}

#[tokio::test]
async fn a_structured_mode_event_is_signed_inside_its_body() {
    let url = format!("memory://{}", unique("signing"));
    let base = busline::connect_url(&url).await.unwrap();
    let settings = base
        .settings()
        .clone()
        .with_content_mode(busline::ContentMode::Structured);
    let structured = Bus::from_arc(base.transport().clone(), settings);
    let key = SigningKey::hmac_sha256("orders-1", [1u8; 32]).unwrap();
    let keyring = Keyring::new().with(VerifyingKey::of(&key));
    let publisher = SignedBus::wrap(&structured, Some(key), Keyring::new());
    let consumer = SignedBus::wrap(&base, None, keyring);
    let topic = unique("structured");
    let mut sub = consumer
        .subscribe(&topic, "g", SubscribeOptions::default())
        .await
        .unwrap();
    publisher.publish(&topic, ping(1, "structured")).await.unwrap();
    let d = within(WAIT, "the structured event", sub.next())
        .await
        .unwrap()
        .unwrap();
    let event = d.event().expect("the structured event verifies");
    assert!(event.extensions.contains_key(signing::SIGNATURE));
    d.ack().await.unwrap();
}
