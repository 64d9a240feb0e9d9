//! Scenario 18, hostile input: messages a foreign producer can write and
//! busline never would, written below busline by the fixture's raw writer
//! ([`BusFixture::publish_wire`]). Each poison travels between two valid
//! events; the valid ones are always handled, the poison is handled (where
//! it is valid CloudEvents), dead-lettered with its reason, or moved aside
//! by a broker-level mechanism, as the backend declares
//! ([`BusFixture::hostile_outcome`]). No poison is retried (no attempt is
//! burned on input that cannot improve), and shutdown returns within its
//! deadline.

use std::time::Duration;

use busline_core::dead_letter::attr as dl;
use busline_core::wire::{self, encode_headers, HeaderDialect};
use busline_core::{Context, DomainEvent, HandlerError, PublishErrorKind, RawEvent, Router};
use bytes::Bytes;

use super::DlqReader;
use crate::events::Ping;
use crate::support::{eventually, unique, within, Collector, WAIT};
use crate::{BusFixture, WireInput};

/// A message a foreign producer can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Poison {
    /// A header that is not part of the envelope, with a name of bytes
    /// `FF FE` (not UTF-8).
    ForeignNameNotUtf8,
    /// A header that is not part of the envelope, with a value of bytes that
    /// are not UTF-8.
    ForeignValueNotUtf8,
    /// An envelope attribute header whose name after the prefix is not UTF-8.
    AttributeNameNotUtf8,
    /// The `source` attribute's value is not UTF-8.
    AttributeValueNotUtf8,
    /// An attribute name with a non-ASCII letter (`tenänt`).
    AttributeNameNotAscii,
    /// No `id` attribute.
    MissingId,
    /// The `id` attribute twice, with different values.
    DuplicateId,
    /// `specversion` 0.3.
    WrongSpecVersion,
    /// A content type no codec reads.
    UnknownContentType,
    /// A content type that is not a media type at all.
    MalformedContentType,
    /// A `time` that reads but cannot be written back (year 10000 in UTC).
    TimeOutOfRange,
    /// An extension attribute with a 32 KiB value.
    LargeHeader,
    /// A valid structured-mode event (`application/cloudevents+json`).
    StructuredValid,
    /// A structured-mode event without `specversion`.
    StructuredMalformed,
    /// A JSON payload nested 100,000 levels deep.
    DeepNesting,
    /// A valid event with a 2 MiB body: above librdkafka's default producer
    /// limit (`message.max.bytes` 1,000,000) and NATS's default
    /// `max_payload` (1 MiB), below what consumers fetch.
    LargeBody,
    /// A 2 MiB body that does not decode: its dead letter is as large as the
    /// poison, so a backend whose producer cannot write it must write a
    /// letter that fits instead of retrying.
    LargeUndecodableBody,
}

impl Poison {
    /// Every poison, in the order the suite runs them.
    pub const ALL: [Poison; 17] = [
        Poison::ForeignNameNotUtf8,
        Poison::ForeignValueNotUtf8,
        Poison::AttributeNameNotUtf8,
        Poison::AttributeValueNotUtf8,
        Poison::AttributeNameNotAscii,
        Poison::MissingId,
        Poison::DuplicateId,
        Poison::WrongSpecVersion,
        Poison::UnknownContentType,
        Poison::MalformedContentType,
        Poison::TimeOutOfRange,
        Poison::LargeHeader,
        Poison::StructuredValid,
        Poison::StructuredMalformed,
        Poison::DeepNesting,
        Poison::LargeBody,
        Poison::LargeUndecodableBody,
    ];

    /// Whether the poison is in the envelope's own attributes, so that its
    /// dead letter (the same headers, byte for byte) cannot be read as an
    /// envelope either.
    pub fn spoils_envelope(self) -> bool {
        matches!(
            self,
            Poison::AttributeNameNotUtf8
                | Poison::AttributeValueNotUtf8
                | Poison::AttributeNameNotAscii
                | Poison::MissingId
                | Poison::DuplicateId
                | Poison::WrongSpecVersion
                | Poison::TimeOutOfRange
                | Poison::StructuredMalformed
        )
    }

    /// What DESIGN.md asks for when the client library reads every byte:
    /// valid CloudEvents are handled, anything else is dead-lettered with
    /// the reason that names it.
    pub fn ideal(self) -> HostileOutcome {
        use HostileOutcome::*;
        match self {
            Poison::ForeignNameNotUtf8 | Poison::ForeignValueNotUtf8 => Handled,
            Poison::LargeHeader | Poison::StructuredValid | Poison::LargeBody => Handled,
            Poison::UnknownContentType | Poison::MalformedContentType => DeadLettered("unknown_content_type"),
            Poison::DeepNesting | Poison::LargeUndecodableBody => DeadLettered("undecodable_payload"),
            _ => DeadLettered("malformed_envelope"),
        }
    }
}

/// What a backend does with one poison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostileOutcome {
    /// It is a valid event after all: the handler gets it, data intact.
    Handled,
    /// Dead-lettered at once, with this reason.
    DeadLettered(&'static str),
    /// The client library cannot parse it: a broker-level mechanism moves it
    /// aside (the backend's own tests check where to); here only that it
    /// never reaches a handler and never stalls the valid events.
    MovedAside,
    /// The raw writer (or the broker) refuses to write it, saying why; the
    /// valid events around it are still checked.
    Refused(&'static str),
}

/// The note the poison's ping carries, so a handled poison shows its data
/// arrived intact.
const POISON_NOTE: &str = "poison between 1 and 3";

/// The padding of the large-body poisons: 2 MiB.
const LARGE_BODY: usize = 2 * 1024 * 1024;

/// Scenario 18 for one poison.
pub async fn hostile_input(fixture: &dyn BusFixture, poison: Poison) {
    let outcome = fixture.hostile_outcome(poison);
    let bus = fixture.connect().await;
    let (topic, group) = (unique("hostile"), unique("g"));
    let handled = Collector::<(u64, String)>::new();
    let sink = handled.clone();
    let router = Router::new(bus.clone(), &group)
        .on(&topic, move |_ctx: Context, e: DomainEvent<Ping>| {
            let sink = sink.clone();
            async move {
                sink.push((e.data.seq, e.data.note));
                Ok::<_, HandlerError>(())
            }
        })
        .start()
        .await
        .unwrap();
    let dlq = DlqReader::start(&bus, &topic, &group).await;

    bus.publish(&topic, Ping::new(1)).await.unwrap();
    let event = bus
        .encode(
            &topic,
            DomainEvent::new(Ping {
                seq: 2,
                note: POISON_NOTE.into(),
            }),
        )
        .unwrap();
    let message = poison_message(poison, &fixture.dialect(), &event);
    let written = fixture.publish_wire(&topic, message).await;
    match (&written, outcome) {
        (Ok(()), HostileOutcome::Refused(why)) => {
            panic!(
                "{poison:?} on {}: declared refused ({why}) but was written",
                fixture.name()
            )
        }
        (Err(e), HostileOutcome::Refused(why)) => {
            eprintln!(
                "{poison:?} on {}: refused as declared ({why}): {e}",
                fixture.name()
            )
        }
        (Err(e), _) => panic!("{poison:?} on {}: the raw writer failed: {e}", fixture.name()),
        (Ok(()), _) => {}
    }
    // A client that cannot parse the poison may drop its connection, and
    // with it a publish in flight (async-nats): that publish fails with a
    // typed error and is sent again, with the same id, as a caller would.
    let after = DomainEvent::new(Ping::new(3));
    let mut tries = 0;
    loop {
        match bus.publish_event(&topic, after.clone()).await {
            Ok(_) => break,
            Err(e)
                if tries < 5
                    && matches!(e.kind(), PublishErrorKind::Timeout | PublishErrorKind::Connection) =>
            {
                tries += 1;
                eprintln!(
                    "{poison:?} on {}: publishing the event after the poison: {e}; again",
                    fixture.name()
                );
            }
            Err(e) => panic!(
                "{poison:?} on {}: publishing the event after the poison: {e}",
                fixture.name()
            ),
        }
    }

    let what = format!(
        "{poison:?} on {}: the valid events around the poison",
        fixture.name()
    );
    match outcome {
        HostileOutcome::Handled => {
            let got = handled.wait_len(3, WAIT, &what).await;
            let poison_seen: Vec<_> = got.iter().filter(|(seq, _)| *seq == 2).collect();
            assert_eq!(
                poison_seen,
                vec![&(2, POISON_NOTE.to_owned())],
                "{poison:?}: handled once, data intact"
            );
        }
        HostileOutcome::DeadLettered(reason) => {
            handled.wait_len(2, WAIT, &what).await;
            let letters = dlq
                .letters
                .wait_len(1, WAIT, &format!("the dead letter of {poison:?}"))
                .await;
            match &letters[0] {
                Ok(letter) => assert_eq!(
                    letter.extensions.get(dl::REASON).map(String::as_str),
                    Some(reason),
                    "{poison:?} on {}",
                    fixture.name()
                ),
                // A letter keeps the poison's headers byte for byte, so a
                // poison in the envelope itself stays unreadable in the
                // DLQ; only those may arrive so.
                Err(e) => {
                    assert!(
                        poison.spoils_envelope(),
                        "{poison:?} on {}: the letter is unreadable: {e}",
                        fixture.name()
                    );
                    // What an operator needs to find its producer.
                    let kept = dlq.received.snapshot();
                    assert!(
                        kept.first()
                            .and_then(Option::as_ref)
                            .is_some_and(|r| !r.headers.is_empty()),
                        "{poison:?} on {}: the unreadable letter keeps its headers as received: {kept:?}",
                        fixture.name()
                    );
                }
            }
        }
        HostileOutcome::MovedAside | HostileOutcome::Refused(_) => {
            handled.wait_len(2, WAIT, &what).await;
        }
    }
    assert!(
        handled.snapshot().iter().all(|(seq, _)| *seq != 2) || outcome == HostileOutcome::Handled,
        "{poison:?} reached the handler: {:?}",
        handled.snapshot()
    );
    if let HostileOutcome::DeadLettered(_) = outcome {
        eventually(WAIT, "the dead letter to be counted", || {
            router.stats().dead_lettered == 1
        })
        .await;
    }
    let health = router.health();
    assert!(health.is_alive(), "{poison:?}: {health:?}");
    let stats = within(
        Duration::from_secs(45),
        "the router to shut down within its deadline",
        router.shutdown(),
    )
    .await
    .unwrap();
    assert_eq!(stats.retried, 0, "{poison:?}: no attempt is burned on poison");
    within(Duration::from_secs(45), "the bus to shut down", bus.shutdown()).await;
}

/// The wire form of `event` spoiled as `poison` says, in `dialect`.
pub fn poison_message(poison: Poison, dialect: &HeaderDialect, event: &RawEvent) -> WireInput {
    let mut event = event.clone();
    let mut body = event.data.bytes.clone();
    match poison {
        Poison::UnknownContentType => event.data.content_type = "application/x-protobuf".into(),
        Poison::MalformedContentType => event.data.content_type = ";;; not a media type".into(),
        Poison::LargeHeader => {
            event.extensions.insert("blob".into(), "x".repeat(32 * 1024));
        }
        Poison::DeepNesting => {
            let depth = 100_000;
            body = Bytes::from(format!(
                "{{\"seq\":2,\"note\":{}{}}}",
                "[".repeat(depth),
                "]".repeat(depth)
            ));
        }
        Poison::LargeBody | Poison::LargeUndecodableBody => {
            // The padding is a field `Ping` ignores, so a handled poison
            // still shows its note intact; cut short, it is not JSON.
            let mut json = format!(
                "{{\"seq\":2,\"note\":\"{POISON_NOTE}\",\"padding\":\"{}",
                "x".repeat(LARGE_BODY)
            );
            if poison == Poison::LargeBody {
                json.push_str("\"}");
            }
            body = Bytes::from(json);
        }
        _ => {}
    }
    let structured = matches!(poison, Poison::StructuredValid | Poison::StructuredMalformed);
    let mut headers: Vec<(Vec<u8>, Vec<u8>)> = if structured {
        Vec::new()
    } else {
        encode_headers(&event, dialect)
            .expect("the base event encodes")
            .into_iter()
            .map(|(k, v)| (k.into_bytes(), v.into_bytes()))
            .collect()
    };
    let mut content_type = event.data.content_type.clone();
    let name = |attribute: &str| dialect.header(attribute).into_bytes();
    let set = |headers: &mut Vec<(Vec<u8>, Vec<u8>)>, attribute: &str, value: Vec<u8>| {
        let n = name(attribute);
        for (k, v) in headers.iter_mut() {
            if k.eq_ignore_ascii_case(&n) {
                *v = value.clone();
            }
        }
    };
    match poison {
        Poison::ForeignNameNotUtf8 => headers.push((vec![0xff, 0xfe], b"x".to_vec())),
        Poison::ForeignValueNotUtf8 => headers.push((b"x-trace".to_vec(), vec![0xff, 0x00, 0xfe])),
        Poison::AttributeNameNotUtf8 => {
            let mut n = dialect.prefix.as_bytes().to_vec();
            n.extend_from_slice(&[0xff, 0xfe]);
            headers.push((n, b"x".to_vec()));
        }
        Poison::AttributeValueNotUtf8 => set(&mut headers, wire::attr::SOURCE, vec![0xff, 0xfe]),
        Poison::AttributeNameNotAscii => headers.push((name("tenänt"), b"acme".to_vec())),
        Poison::MissingId => headers.retain(|(k, _)| !k.eq_ignore_ascii_case(&name(wire::attr::ID))),
        Poison::DuplicateId => headers.push((name(wire::attr::ID), b"another-id".to_vec())),
        Poison::WrongSpecVersion => set(&mut headers, wire::attr::SPECVERSION, b"0.3".to_vec()),
        Poison::TimeOutOfRange => set(
            &mut headers,
            wire::attr::TIME,
            b"9999-12-31T23:59:59-01:00".to_vec(),
        ),
        Poison::StructuredValid => {
            content_type = wire::STRUCTURED_JSON.into();
            body = wire::encode_structured(&event).expect("structured encoding");
        }
        Poison::StructuredMalformed => {
            content_type = wire::STRUCTURED_JSON.into();
            let full = wire::encode_structured(&event).expect("structured encoding");
            let mut object: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&full).expect("structured JSON");
            object.remove(wire::attr::SPECVERSION);
            body = Bytes::from(serde_json::to_vec(&object).unwrap());
        }
        _ => {}
    }
    if let Some(ct) = dialect.content_type_header {
        if structured {
            headers.push((ct.as_bytes().to_vec(), content_type.as_bytes().to_vec()));
        }
    }
    WireInput {
        event_type: event.event_type.to_string(),
        headers,
        content_type: dialect
            .content_type_header
            .is_none()
            .then(|| content_type.to_string()),
        key: event.key.as_ref().map(|k| k.to_string()),
        body,
    }
}
