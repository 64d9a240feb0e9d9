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
