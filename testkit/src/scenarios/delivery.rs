//! Scenarios 1–4 and 17: events arrive intact, in every group, nowhere else.

use std::collections::{BTreeSet, HashSet};

use busline_core::{DomainEvent, Router, SubscribeOptions};
use futures::StreamExt;

use super::{next_delivery, record_seqs};
use crate::events::Ping;
use crate::support::{unique, within, Collector, WAIT};
use crate::BusFixture;

/// Scenario 1: Publish then subscribe: every event arrives with its envelope intact
/// (id, type, version, source, time, correlation, causation, key, extensions)
/// and its payload decodes to what was sent.
pub async fn envelope_round_trip(fixture: &dyn BusFixture) {
    let bus = fixture.connect().await;
    let (topic, group) = (unique("envelope"), unique("g"));
    let mut sub = bus
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .unwrap();

    let sent = DomainEvent::new(Ping {
        seq: 1,
        note: "héllo \"world\" 100%\nnext line".into(),
    })
    .with_key("order-17")
    .with_correlation_id("request-42")
    .with_causation_id("cause-7")
    .with_extension(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    .with_extension("tenant", "acme corp");
    let plain = DomainEvent::new(Ping::new(2));
    bus.publish_event(&topic, sent.clone()).await.unwrap();
    bus.publish_event(&topic, plain.clone()).await.unwrap();

    let mut got = Vec::new();
    for _ in 0..2 {
        let d = next_delivery(&mut sub, "the published events").await;
        assert_eq!(d.attempt(), 1, "first delivery is attempt 1");
        assert_eq!((d.topic(), d.group()), (topic.as_str(), group.as_str()));
        got.push(d.event().expect("a readable envelope").clone());
        d.ack().await.unwrap();
    }
    got.sort_by_key(|e| e.id != sent.id);
    for (raw, want) in got.iter().zip([&sent, &plain]) {
        assert_eq!(raw.id, want.id);
        assert_eq!(raw.event_type, "test.ping");
        assert_eq!(raw.version, 1);
        assert_eq!(raw.source, "busline-test", "source is the publishing service");
        assert_eq!(raw.time, want.time, "time survives to the nanosecond");
        assert_eq!(raw.correlation_id, want.correlation_id);
        assert_eq!(raw.causation_id, want.causation_id);
        assert_eq!(raw.key, want.key);
        assert_eq!(raw.extensions, want.extensions);
        assert_eq!(raw.content_type(), bus.codecs().content_type());
        let data: Ping = bus.codecs().decode(raw.content_type(), &raw.data.bytes).unwrap();
        assert_eq!(data, want.data);
    }
    assert_eq!(
        got[1].correlation_id, plain.id,
        "a new event starts its own chain"
    );
    bus.shutdown().await;
}

/// Scenario 2: Concurrent publishers and consumers: thousands of events, none lost.
pub async fn concurrent_publishers_and_consumers(fixture: &dyn BusFixture) {
    const PUBLISHERS: u64 = 4;
    const EACH: u64 = 500;
    let (topic, group) = (unique("concurrent"), unique("g"));
    let seen = Collector::<u64>::new();
    let mut members = Vec::new();
    for _ in 0..2 {
        let bus = fixture.connect().await;
        let router = Router::new(bus.clone(), &group)
            .with_max_in_flight(32)
            .on(&topic, record_seqs(&seen))
            .start()
            .await
            .unwrap();
        members.push((bus, router));
    }
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let bus = fixture.connect().await;
        let topic = topic.clone();
        publishers.push(tokio::spawn(async move {
            for i in 0..EACH {
                let seq = p * EACH + i;
                if i % 2 == 0 {
                    bus.publish(&topic, Ping::new(seq)).await.unwrap();
                } else {
                    bus.publish_batch(&topic, vec![DomainEvent::new(Ping::new(seq))])
                        .await
                        .unwrap();
                }
            }
            bus.shutdown().await;
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    let total = (PUBLISHERS * EACH) as usize;
    seen.wait_until(WAIT, "every published event to be handled", |s| {
        s.iter().collect::<HashSet<_>>().len() >= total
    })
    .await;
    let distinct: BTreeSet<u64> = seen.snapshot().into_iter().collect();
    assert_eq!(distinct, (0..PUBLISHERS * EACH).collect::<BTreeSet<_>>());
    for (bus, router) in members {
        router.shutdown().await.unwrap();
        bus.shutdown().await;
    }
}

/// Scenario 3: Many topics at once, names sharing a prefix (`orders`, `orders.eu`,
/// `orders.billing.dlq`): nothing crosses between topics.
pub async fn topics_are_isolated(fixture: &dyn BusFixture) {
    let bus = fixture.connect().await;
    let base = unique("iso");
    let topics = [
        format!("{base}.orders"),
        format!("{base}.orders.eu"),
        format!("{base}.orders.billing.dlq"),
        format!("{base}.orders-eu"),
    ];
    let group = unique("g");
    let mut subs = Vec::new();
    for t in &topics {
        subs.push(
            bus.subscribe(t, &group, SubscribeOptions::default())
                .await
                .unwrap(),
        );
    }
    const PER_TOPIC: u64 = 20;
    for round in 0..PER_TOPIC {
        for (i, t) in topics.iter().enumerate() {
            let seq = i as u64 * 1000 + round;
            bus.publish(t, Ping { seq, note: t.clone() }).await.unwrap();
        }
    }
    for (i, (t, sub)) in topics.iter().zip(subs.iter_mut()).enumerate() {
        let mut got = BTreeSet::new();
        while got.len() < PER_TOPIC as usize {
            let d = next_delivery(sub, &format!("events of topic {t}")).await;
            let raw = d.event().unwrap().clone();
            let ping: Ping = bus.codecs().decode(raw.content_type(), &raw.data.bytes).unwrap();
            assert_eq!(&ping.note, t, "an event of {} reached {t}", ping.note);
            assert_eq!(ping.seq / 1000, i as u64);
            got.insert(ping.seq);
            d.ack().await.unwrap();
        }
    }
    // One more round trip per topic: anything that crossed over would be
    // delivered before it.
    for t in &topics {
        bus.publish(
            t,
            Ping {
                seq: 999_999,
                note: t.clone(),
            },
        )
        .await
        .unwrap();
    }
    for (t, sub) in topics.iter().zip(subs.iter_mut()) {
        let d = next_delivery(sub, &format!("the last event of topic {t}")).await;
        let raw = d.event().unwrap().clone();
        let ping: Ping = bus.codecs().decode(raw.content_type(), &raw.data.bytes).unwrap();
        assert_eq!(
            (&ping.note, ping.seq),
            (t, 999_999),
            "unexpected event on {t}: {ping:?}"
        );
        d.ack().await.unwrap();
    }
    bus.shutdown().await;
}

/// Scenario 4: Groups: two groups each get every event; members of one group share
/// the events, each event going to one of them.
pub async fn groups_fan_out_and_members_share(fixture: &dyn BusFixture) {
    const N: u64 = 40;
    const HOLD: usize = 4;
    let bus = fixture.connect().await;
    let topic = unique("groups");
    let (shared_group, other_group) = (unique("shared"), unique("other"));
    let opts = SubscribeOptions::default().max_in_flight(HOLD);
    let mut first = bus.subscribe(&topic, &shared_group, opts).await.unwrap();
    let mut second = bus.subscribe(&topic, &shared_group, opts).await.unwrap();
    let mut other = bus
        .subscribe(&topic, &other_group, SubscribeOptions::default())
        .await
        .unwrap();
    for seq in 0..N {
        bus.publish(&topic, Ping::new(seq)).await.unwrap();
    }

    let seq_of = |d: &busline_core::Delivery| -> u64 {
        let raw = d.event().unwrap();
        bus.codecs()
            .decode::<Ping>(raw.content_type(), &raw.data.bytes)
            .unwrap()
            .seq
    };
    // The other group gets everything.
    let mut all = BTreeSet::new();
    while all.len() < N as usize {
        let d = next_delivery(&mut other, "every event in the second group").await;
        all.insert(seq_of(&d));
        d.ack().await.unwrap();
    }

    // The first member holds its in-flight bound undecided; the second
    // member must still receive events meanwhile.
    let mut held = Vec::new();
    while held.len() < HOLD {
        held.push(next_delivery(&mut first, "the first member's deliveries").await);
    }
    let mut by_second = Vec::new();
    let d = next_delivery(
        &mut second,
        "an event for the second member while the first is at its bound",
    )
    .await;
    by_second.push(seq_of(&d));
    d.ack().await.unwrap();
    let mut by_first: Vec<u64> = held.iter().map(seq_of).collect();
    for d in held {
        d.ack().await.unwrap();
    }
    // Both members drain the rest together.
    let mut union: HashSet<u64> = by_first.iter().chain(&by_second).copied().collect();
    while union.len() < N as usize {
        let d = within(WAIT, "the rest of the events in the shared group", async {
            tokio::select! {
                Some(Ok(d)) = first.next() => (1, d),
                Some(Ok(d)) = second.next() => (2, d),
            }
        })
        .await;
        let seq = seq_of(&d.1);
        if d.0 == 1 {
            by_first.push(seq)
        } else {
            by_second.push(seq)
        }
        union.insert(seq);
        d.1.ack().await.unwrap();
    }
    assert_eq!(union.len(), N as usize);
    assert_eq!(
        by_first.len() + by_second.len(),
        N as usize,
        "each event goes to one member of a group (first {by_first:?}, second {by_second:?})"
    );
    bus.shutdown().await;
}

/// Scenario 17: Provisioned group: events published after `provision` and before the
/// first subscriber starts are all delivered to it.
pub async fn provisioned_group_keeps_events(fixture: &dyn BusFixture) {
    let bus = fixture.connect().await;
    let (topic, group) = (unique("provisioned"), unique("g"));
    bus.provision(&topic, &group).await.unwrap();
    bus.provision(&topic, &group)
        .await
        .expect("provision is idempotent");
    for seq in 0..10 {
        bus.publish(&topic, Ping::new(seq)).await.unwrap();
    }
    let consumer = fixture.connect().await;
    let mut sub = consumer
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .unwrap();
    let mut got = BTreeSet::new();
    while got.len() < 10 {
        let d = next_delivery(&mut sub, "events published before the first subscriber").await;
        let raw = d.event().unwrap();
        got.insert(
            bus.codecs()
                .decode::<Ping>(raw.content_type(), &raw.data.bytes)
                .unwrap()
                .seq,
        );
        d.ack().await.unwrap();
    }
    assert_eq!(got, (0..10).collect());
    consumer.shutdown().await;
    bus.shutdown().await;
}

/// Structured content mode: events published by a bus configured for it
/// (the whole event as JSON in the body, `application/cloudevents+json`)
/// reach a typed handler with the envelope intact, payloads of other codecs
/// included (they travel as `data_base64`).
pub async fn structured_mode_round_trip(fixture: &dyn BusFixture) {
    use busline_core::{BusSettings, ContentMode};
    let plain = fixture.connect().await;
    let settings: BusSettings = plain
        .settings()
        .clone()
        .with_content_mode(ContentMode::Structured);
    let bus = busline_core::Bus::from_arc(plain.transport().clone(), settings);
    let (topic, group) = (unique("structured"), unique("g"));
    let got = Collector::<DomainEvent<Ping>>::new();
    let router = Router::new(bus.clone(), &group)
        .on(&topic, crate::support::recorder(&got))
        .start()
        .await
        .unwrap();
    let sent = DomainEvent::new(Ping {
        seq: 1,
        note: "structured ✓".into(),
    })
    .with_key("k-1")
    .with_extension("tenant", "acme")
    .with_correlation_id("req-9");
    bus.publish_event(&topic, sent.clone()).await.unwrap();
    let msgpack = busline_core::Bus::from_arc(
        plain.transport().clone(),
        bus.settings()
            .clone()
            .with_codecs(busline_core::CodecRegistry::msgpack()),
    );
    msgpack.publish(&topic, Ping::new(2)).await.unwrap();
    let mut events = got.wait_len(2, WAIT, "both structured events").await;
    events.sort_by_key(|e| e.data.seq);
    let first = &events[0];
    assert_eq!(
        (
            &first.id,
            &first.data,
            first.key.as_deref(),
            first.correlation_id.as_str()
        ),
        (&sent.id, &sent.data, Some("k-1"), "req-9")
    );
    assert_eq!(first.extensions["tenant"], "acme");
    assert_eq!(first.source, bus.settings().service);
    assert_eq!(events[1].data.seq, 2);
    router.shutdown().await.unwrap();
    plain.shutdown().await;
}
