//! The memory bus stores events in wire form and reads them back through
//! core's header decoder by default, as a broker backend does; the switch
//! stores envelopes as they are.

use busline_core::{Bus, BusSettings, PublishErrorKind, SubscribeOptions};
use busline_memory::{MemoryBroker, MemoryConfig};
use busline_testkit::events::Ping;
use busline_testkit::support::{within, WAIT};
use futures::StreamExt;

/// An envelope the wire cannot carry: an extension name outside `a-z0-9`,
/// handed to the backend directly (the `Bus` would refuse it first).
fn unwritable(bus: &Bus) -> busline_core::RawEvent {
    let mut raw = bus
        .encode("t", busline_core::DomainEvent::new(Ping::new(1)))
        .unwrap();
    raw.extensions.insert("Not-Valid".into(), "x".into());
    raw
}

#[tokio::test]
async fn by_default_events_go_through_the_wire_mapping() {
    let broker = MemoryBroker::new();
    let bus = Bus::new(broker.connect(), BusSettings::default());
    bus.provision("t", "g").await.unwrap();
    let refused = bus.transport().publish("t", unwritable(&bus)).await.unwrap_err();
    assert_eq!(refused.kind(), PublishErrorKind::InvalidEnvelope);

    // What goes through comes back as the header decoder reads it.
    let mut sub = bus
        .subscribe("t", "g", SubscribeOptions::default())
        .await
        .unwrap();
    let sent = bus
        .encode("t", busline_core::DomainEvent::new(Ping::new(2)).with_key("k-1"))
        .unwrap();
    bus.transport().publish("t", sent.clone()).await.unwrap();
    let delivery = within(WAIT, "the delivery", sub.next()).await.unwrap().unwrap();
    let got = delivery.event().unwrap().clone();
    assert_eq!((got.id, got.key, got.data), (sent.id, sent.key, sent.data));
    assert!(delivery.received().is_none(), "a readable delivery keeps no copy");
}

#[tokio::test]
async fn without_the_wire_mapping_envelopes_are_stored_as_they_are() {
    let broker = MemoryBroker::with_config(MemoryConfig {
        wire_mapping: false,
        ..MemoryConfig::default()
    });
    let bus = Bus::new(broker.connect(), BusSettings::default());
    bus.provision("t", "g").await.unwrap();
    let mut sub = bus
        .subscribe("t", "g", SubscribeOptions::default())
        .await
        .unwrap();
    bus.transport().publish("t", unwritable(&bus)).await.unwrap();
    let delivery = within(WAIT, "the delivery", sub.next()).await.unwrap().unwrap();
    assert!(delivery.event().unwrap().extensions.contains_key("Not-Valid"));
}

/// A message that is no readable envelope reaches the consumer with what
/// was written, byte for byte, for an operator to look at.
#[tokio::test]
async fn an_unreadable_message_keeps_what_was_written() {
    let broker = MemoryBroker::new();
    let client = broker.connect();
    let bus = Bus::new(broker.connect(), BusSettings::default());
    let mut sub = bus
        .subscribe("t", "g", SubscribeOptions::default())
        .await
        .unwrap();
    let written = busline_memory::WireMessage {
        headers: vec![
            (b"ce-specversion".to_vec(), b"1.0".to_vec()),
            (b"ce-type".to_vec(), b"order.created".to_vec()),
            (b"x-trace".to_vec(), b"\xff\xfe".to_vec()),
        ],
        body: bytes::Bytes::from_static(b"\x00body"),
    };
    client.publish_wire("t", written.clone()).await.unwrap();
    let delivery = within(WAIT, "the delivery", sub.next()).await.unwrap().unwrap();
    assert!(delivery.event().is_err(), "no id, no source: unreadable");
    let received = delivery.received().expect("kept as written");
    let headers: Vec<(Vec<u8>, Vec<u8>)> = received
        .headers
        .iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    assert_eq!(headers, written.headers);
    assert_eq!(received.body, written.body);
    assert_eq!(received.header("X-TRACE"), Some(&b"\xff\xfe"[..]));
}
