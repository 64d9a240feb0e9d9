//! The bytes a signature covers.
//!
//! Version 1: the tag `busline-signature-v1`, then each covered field as
//! its name, a zero byte, the value's length as four big-endian bytes and
//! the value, in this order: `id`, `source`, `type`, `dataversion`, `time`
//! (RFC 3339 as it travels), `correlationid`, `causationid` and
//! `partitionkey` when present, `datacontenttype`, the signing key's id,
//! every extension except the [`UNSIGNED_EXTENSIONS`] by name, and last
//! `data`, the payload bytes. Names never hold a zero byte and every value
//! is length-prefixed, so two different events never give the same bytes.

use busline_core::dead_letter::attr as dead_letter_attr;
use busline_core::wire::{attr, format_time};
use busline_core::{RawEvent, REPLAY_COUNT, REPLAY_GROUP};

use super::{SIGNATURE, SIGNATURE_KEY};

/// Extensions a signature does not cover: the signature itself, what the
/// dead-letter and replay machinery adds and strips on the way (so a
/// replayed event still verifies), and trace context, which every hop may
/// rewrite.
pub const UNSIGNED_EXTENSIONS: [&str; 13] = [
    SIGNATURE,
    SIGNATURE_KEY,
    dead_letter_attr::REASON,
    dead_letter_attr::ERROR,
    dead_letter_attr::TOPIC,
    dead_letter_attr::GROUP,
    dead_letter_attr::ATTEMPTS,
    dead_letter_attr::TIME,
    dead_letter_attr::ORIGINAL_SIZE,
    REPLAY_COUNT,
    REPLAY_GROUP,
    "traceparent",
    "tracestate",
];

const TAG: &[u8] = b"busline-signature-v1";

/// The signed bytes of `event` under the key `key_id`.
pub(crate) fn canonical(event: &RawEvent, key_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + event.data.bytes.len());
    out.extend_from_slice(TAG);
    let mut field = |name: &str, value: &[u8]| {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        // Envelope fields come from one message, far below 4 GiB.
        out.extend_from_slice(&u32::try_from(value.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(value);
    };
    field(attr::ID, event.id.as_bytes());
    field(attr::SOURCE, event.source.as_bytes());
    field(attr::TYPE, event.event_type.as_bytes());
    field(attr::DATAVERSION, event.version.to_string().as_bytes());
    field(attr::TIME, format_time(&event.time).as_bytes());
    field(attr::CORRELATIONID, event.correlation_id.as_bytes());
    if let Some(causation) = &event.causation_id {
        field(attr::CAUSATIONID, causation.as_bytes());
    }
    if let Some(key) = &event.key {
        field(attr::PARTITIONKEY, key.as_bytes());
    }
    field(attr::DATACONTENTTYPE, event.data.content_type.as_bytes());
    field(SIGNATURE_KEY, key_id.as_bytes());
    for (name, value) in &event.extensions {
        if !UNSIGNED_EXTENSIONS.contains(&name.as_str()) {
            field(name, value.as_bytes());
        }
    }
    field("data", &event.data.bytes);
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use busline_core::{DomainEvent, Payload};

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Signed;
    impl busline_core::Event for Signed {
        const TYPE: &'static str = "test.signed";
    }

    /// An envelope to sign, for this module's tests and the signing bus's.
    pub(in crate::signing) fn event() -> RawEvent {
        DomainEvent::new(Signed)
            .with_source("orders")
            .with_extension("tenant", "t1")
            .map_data(|_| Payload::json(br#"{"a":1}"#.to_vec()))
    }

    #[test]
    fn every_covered_field_changes_the_bytes() {
        let base = event();
        let before = canonical(&base, "k1");
        let mut changed: Vec<RawEvent> = Vec::new();
        let mut e = base.clone();
        e.id = format!("{}x", e.id).into();
        changed.push(e);
        let mut e = base.clone();
        e.source = format!("{}x", e.source).into();
        changed.push(e);
        let mut e = base.clone();
        e.event_type = format!("{}x", e.event_type).into();
        changed.push(e);
        let mut e = base.clone();
        e.version += 1;
        changed.push(e);
        let mut e = base.clone();
        e.time += chrono::Duration::milliseconds(1);
        changed.push(e);
        let mut e = base.clone();
        e.correlation_id = format!("{}x", e.correlation_id).into();
        changed.push(e);
        let mut e = base.clone();
        e.causation_id = Some("c".into());
        changed.push(e);
        let mut e = base.clone();
        e.key = Some("k".into());
        changed.push(e);
        let mut e = base.clone();
        e.data.content_type = "application/msgpack".into();
        changed.push(e);
        let mut e = base.clone();
        e.extensions.insert("tenant".into(), "t2".into());
        changed.push(e);
        let mut e = base.clone();
        e.extensions.remove("tenant");
        changed.push(e);
        let mut e = base.clone();
        e.data.bytes = br#"{"a":2}"#.to_vec().into();
        changed.push(e);
        for (i, e) in changed.iter().enumerate() {
            assert_ne!(canonical(e, "k1"), before, "change {i} is not covered");
        }
        assert_ne!(canonical(&base, "k2"), before, "the key id is not covered");
    }

    #[test]
    fn machinery_extensions_are_not_covered() {
        let base = event();
        let before = canonical(&base, "k1");
        let mut e = base.clone();
        for name in UNSIGNED_EXTENSIONS {
            e.extensions.insert(name.into(), "anything".into());
        }
        assert_eq!(canonical(&e, "k1"), before);
    }

    #[test]
    fn length_prefixes_keep_neighbouring_fields_apart() {
        // `tenant=ab, zone=c` and `tenant=a, zone=bc` must not collide.
        let mut a = event();
        a.extensions.insert("tenant".into(), "ab".into());
        a.extensions.insert("zone".into(), "c".into());
        let mut b = event();
        b.extensions.insert("tenant".into(), "a".into());
        b.extensions.insert("zone".into(), "bc".into());
        assert_ne!(canonical(&a, "k1"), canonical(&b, "k1"));
    }
}
