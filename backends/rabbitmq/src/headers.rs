//! The envelope as AMQP properties and header table, and back.
//!
//! The attribute mapping itself is `busline_core::wire` (AMQP dialect);
//! this module only converts between its string pairs and AMQP field
//! values, sets the native properties, and rewrites properties for retries
//! and dead letters without touching the envelope.

use std::borrow::Cow;
use std::collections::BTreeMap;

use busline_core::wire::{self, HeaderDialect, NativeAttributes};
use busline_core::{DeadLetter, EnvelopeError, RawEvent};
use bytes::Bytes;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

/// Delivery attempt of a republished retry. Not part of the envelope (no
/// `cloudEvents_` prefix), so CloudEvents readers ignore it.
pub(crate) const ATTEMPT_HEADER: &str = "x-busline-attempt";

/// How many times in a row the dead letter of an event parked in a retry
/// queue failed: its next backoff grows with it.
pub(crate) const COPY_FAILURES_HEADER: &str = "x-busline-copy-failures";

/// Persistent delivery mode.
const PERSISTENT: u8 = 2;

/// Headers the broker adds when it dead-letters (here: when a retry's TTL
/// expires). They are bookkeeping of the retry queue, not of the event, and
/// would otherwise grow on every retry.
fn is_broker_bookkeeping(name: &str) -> bool {
    name == ATTEMPT_HEADER
        || name == COPY_FAILURES_HEADER
        || name == "x-death"
        || name.starts_with("x-first-death-")
        || name.starts_with("x-last-death-")
}

fn short(attribute: &str, value: &str) -> Result<ShortString, EnvelopeError> {
    ShortString::try_new(value).map_err(|_| EnvelopeError::Invalid {
        attribute: attribute.into(),
        reason: "longer than the 255 bytes AMQP allows".into(),
    })
}

/// The properties an event is published with: the `cloudEvents_` header
/// table plus the native properties plain AMQP tools show.
pub(crate) fn encode(event: &RawEvent) -> Result<BasicProperties, EnvelopeError> {
    let mut table = BTreeMap::new();
    let mut too_long = None;
    wire::for_each_header(event, &HeaderDialect::AMQP, |name, value| {
        match short(name, name) {
            Ok(name) => {
                table.insert(name, AMQPValue::LongString(value.into()));
            }
            Err(e) => too_long = Some(e),
        }
    })?;
    if let Some(e) = too_long {
        return Err(e);
    }
    let mut props = BasicProperties::default()
        .with_headers(FieldTable::from(table))
        .with_delivery_mode(PERSISTENT)
        .with_content_type(short(wire::attr::DATACONTENTTYPE, &event.data.content_type)?)
        .with_timestamp(u64::try_from(event.time.timestamp()).unwrap_or(0));
    // The native copies are conveniences; where a value does not fit a short
    // string, the header carries it alone.
    if let Ok(id) = ShortString::try_new(event.id.as_str()) {
        props = props.with_message_id(id);
    }
    if let Ok(c) = ShortString::try_new(event.correlation_id.as_str()) {
        props = props.with_correlation_id(c);
    }
    if let Ok(t) = ShortString::try_new(event.event_type.as_str()) {
        props = props.with_type(t);
    }
    if let Ok(s) = ShortString::try_new(event.source.as_str()) {
        props = props.with_app_id(s);
    }
    Ok(props)
}

/// A header value as the bytes `wire::decode_headers` reads; `None` for
/// values that cannot be an attribute (tables, arrays, void).
fn value_bytes(value: &AMQPValue) -> Option<Cow<'_, [u8]>> {
    Some(match value {
        AMQPValue::LongString(s) => Cow::Borrowed(s.as_bytes()),
        AMQPValue::ShortString(s) => Cow::Borrowed(s.as_str().as_bytes()),
        AMQPValue::ByteArray(b) => Cow::Borrowed(b.as_slice()),
        AMQPValue::Boolean(v) => Cow::Owned(v.to_string().into_bytes()),
        AMQPValue::ShortShortInt(v) => Cow::Owned(v.to_string().into_bytes()),
        AMQPValue::ShortShortUInt(v) => Cow::Owned(v.to_string().into_bytes()),
        AMQPValue::ShortInt(v) => Cow::Owned(v.to_string().into_bytes()),
        AMQPValue::ShortUInt(v) => Cow::Owned(v.to_string().into_bytes()),
        AMQPValue::LongInt(v) => Cow::Owned(v.to_string().into_bytes()),
        AMQPValue::LongUInt(v) => Cow::Owned(v.to_string().into_bytes()),
        AMQPValue::LongLongInt(v) => Cow::Owned(v.to_string().into_bytes()),
        AMQPValue::Timestamp(v) => Cow::Owned(v.to_string().into_bytes()),
        AMQPValue::Float(v) => Cow::Owned(v.to_string().into_bytes()),
        AMQPValue::Double(v) => Cow::Owned(v.to_string().into_bytes()),
        AMQPValue::DecimalValue(_)
        | AMQPValue::FieldArray(_)
        | AMQPValue::FieldTable(_)
        | AMQPValue::Void => return None,
    })
}

/// The `time` attribute header as busline writes it.
const TIME_HEADER: &str = "cloudEvents_time";

/// A header name with the AMQP binding's other prefix, `cloudEvents:`,
/// spelled as busline's `cloudEvents_` (the binding lets producers use
/// either and asks consumers to read both).
fn binding_name(name: &str) -> Cow<'_, str> {
    match name.get(..12) {
        Some(prefix) if prefix.eq_ignore_ascii_case("cloudEvents:") => {
            Cow::Owned(format!("cloudEvents_{}", &name[12..]))
        }
        _ => Cow::Borrowed(name),
    }
}

/// `cloudEvents_time` written as a number, as the AMQP binding allows: an
/// AMQP timestamp (seconds, in 0-9-1) or an integer of milliseconds since
/// the epoch (what the CloudEvents SDK's AMQP binding writes through pika).
/// Read as RFC 3339 text, so the one time parser checks its range.
fn native_time(value: &AMQPValue) -> Option<Cow<'static, [u8]>> {
    let time = match value {
        AMQPValue::Timestamp(secs) => chrono::DateTime::from_timestamp(i64::try_from(*secs).ok()?, 0)?,
        AMQPValue::LongLongInt(ms) => chrono::DateTime::from_timestamp_millis(*ms)?,
        AMQPValue::LongInt(ms) => chrono::DateTime::from_timestamp_millis(i64::from(*ms))?,
        AMQPValue::LongUInt(ms) => chrono::DateTime::from_timestamp_millis(i64::from(*ms))?,
        _ => return None,
    };
    Some(Cow::Owned(wire::format_time(&time).into_bytes()))
}

/// The message as the broker handed it over, for an operator: its
/// headers (tables, arrays and decimals in their debug form), then its
/// content type and message id properties as `amqp.content_type` and
/// `amqp.message_id`.
pub(crate) fn received(props: &BasicProperties, body: Bytes) -> busline_core::ReceivedMessage {
    let mut headers: Vec<(Bytes, Bytes)> = props
        .headers()
        .iter()
        .flat_map(|t| t.inner().iter())
        .map(|(k, v)| {
            let value = match value_bytes(v) {
                Some(bytes) => Bytes::copy_from_slice(&bytes),
                None => Bytes::from(format!("{v:?}")),
            };
            (Bytes::copy_from_slice(k.as_str().as_bytes()), value)
        })
        .collect();
    for (name, property) in [
        ("amqp.content_type", props.content_type()),
        ("amqp.message_id", props.message_id()),
    ] {
        if let Some(value) = property {
            headers.push((
                Bytes::from_static(name.as_bytes()),
                Bytes::copy_from_slice(value.as_str().as_bytes()),
            ));
        }
    }
    busline_core::ReceivedMessage::new(headers, body)
}

/// Reads the envelope of a received message; a typed error for poison.
pub(crate) fn decode(props: &BasicProperties, body: Bytes) -> Result<RawEvent, EnvelopeError> {
    let empty = FieldTable::default();
    let table = props.headers().as_ref().unwrap_or(&empty);
    let pairs: Vec<(Cow<'_, str>, Cow<'_, [u8]>)> = table
        .inner()
        .iter()
        .filter_map(|(k, v)| {
            let name = binding_name(k.as_str());
            let bytes = if name.eq_ignore_ascii_case(TIME_HEADER) {
                native_time(v).or_else(|| value_bytes(v))?
            } else {
                value_bytes(v)?
            };
            Some((name, bytes))
        })
        .collect();
    wire::decode_headers(
        &HeaderDialect::AMQP,
        pairs.iter().map(|(k, v)| (k.as_bytes(), v.as_ref())),
        NativeAttributes {
            content_type: props.content_type().as_ref().map(ShortString::as_str),
            key: None,
        },
        body,
    )
}

/// The attempt number of a delivery: the attempt a retry was republished
/// with (1 for a first publish), plus one when the broker redelivers it
/// after a consumer went away without settling it.
pub(crate) fn attempt(props: &BasicProperties, redelivered: bool) -> u32 {
    let stamped = number(props, ATTEMPT_HEADER).unwrap_or(1).max(1);
    stamped.saturating_add(u32::from(redelivered))
}

/// The failed dead letters in a row of a parked event (0 for any other).
pub(crate) fn copy_failures(props: &BasicProperties) -> u32 {
    number(props, COPY_FAILURES_HEADER).unwrap_or(0)
}

fn number(props: &BasicProperties, header: &str) -> Option<u32> {
    props
        .headers()
        .as_ref()
        .and_then(|t| t.inner().get(header))
        .and_then(value_bytes)
        .and_then(|b| std::str::from_utf8(&b).ok()?.parse::<u32>().ok())
}

/// A copy of `props` with `headers`, persistent. `user_id` is dropped: the
/// broker checks it against the republishing connection's user. So is
/// `expiration`: a copy waiting in a retry queue must expire with the
/// queue's TTL, and a dead letter must not expire at all.
fn rebuild(props: &BasicProperties, headers: FieldTable) -> BasicProperties {
    let mut out = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(PERSISTENT);
    macro_rules! copy {
        ($($get:ident => $set:ident),*) => {$(
            if let Some(v) = props.$get() {
                out = out.$set(v.clone());
            }
        )*};
    }
    copy!(
        content_type => with_content_type,
        content_encoding => with_content_encoding,
        priority => with_priority,
        correlation_id => with_correlation_id,
        reply_to => with_reply_to,
        message_id => with_message_id,
        timestamp => with_timestamp,
        kind => with_type,
        app_id => with_app_id,
        cluster_id => with_cluster_id
    );
    out
}

fn own_headers(props: &BasicProperties) -> BTreeMap<ShortString, AMQPValue> {
    props
        .headers()
        .as_ref()
        .map(|t| {
            t.inner()
                .iter()
                .filter(|(k, _)| !is_broker_bookkeeping(k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// The properties of a copy put back into the group's queues (a retry, a
/// released or parked event): the same message, stamped with the attempt
/// number it comes back with and, when its dead letter failed, how many
/// times in a row.
pub(crate) fn for_retry(props: &BasicProperties, attempt: u32, copy_failures: u32) -> BasicProperties {
    let mut headers = own_headers(props);
    headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongUInt(attempt));
    if copy_failures > 0 {
        headers.insert(COPY_FAILURES_HEADER.into(), AMQPValue::LongUInt(copy_failures));
    }
    rebuild(props, FieldTable::from(headers))
}

/// The properties of a dead letter: the message's own headers, byte for
/// byte, plus the letter's attributes as `cloudEvents_deadletter…` headers
/// (replacing those of an earlier dead-lettering). Works on raw headers, so
/// an unreadable envelope is dead-lettered as it is.
pub(crate) fn for_dead_letter(props: &BasicProperties, letter: &DeadLetter) -> BasicProperties {
    let mut headers = own_headers(props);
    for (name, value) in letter.attributes() {
        let header = HeaderDialect::AMQP.header(name);
        headers.retain(|k, _| !k.as_str().eq_ignore_ascii_case(&header));
        headers.insert(
            ShortString::from(header),
            AMQPValue::LongString(LongString::from(value.into_bytes())),
        );
    }
    rebuild(props, FieldTable::from(headers))
}

#[cfg(test)]
mod binding_tests {
    use super::*;

    fn props(headers: Vec<(&str, AMQPValue)>) -> BasicProperties {
        let table: BTreeMap<ShortString, AMQPValue> = headers
            .into_iter()
            .map(|(k, v)| (ShortString::from(k), v))
            .collect();
        BasicProperties::default()
            .with_headers(FieldTable::from(table))
            .with_content_type(ShortString::from("application/json"))
    }

    fn long(s: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
    }

    #[test]
    fn numeric_times_and_the_colon_prefix_are_read() {
        let base = |prefix: &str, time: AMQPValue| {
            props(vec![
                (&*format!("{prefix}specversion"), long("1.0")),
                (&*format!("{prefix}id"), long("e-1")),
                (&*format!("{prefix}type"), long("t")),
                (&*format!("{prefix}source"), long("s")),
                (&*format!("{prefix}time"), time),
            ])
        };
        let want = chrono::DateTime::from_timestamp_millis(1_796_157_137_117).unwrap();
        for (prefix, time, expect) in [
            ("cloudEvents_", AMQPValue::LongLongInt(1_796_157_137_117), want),
            ("cloudEvents:", AMQPValue::LongLongInt(1_796_157_137_117), want),
            (
                "cloudEvents_",
                AMQPValue::Timestamp(1_796_157_137),
                chrono::DateTime::from_timestamp(1_796_157_137, 0).unwrap(),
            ),
            (
                "cloudEvents:",
                long("2026-12-01T00:00:00Z"),
                "2026-12-01T00:00:00Z".parse().unwrap(),
            ),
        ] {
            let event = decode(&base(prefix, time), Bytes::from_static(b"{}")).unwrap();
            assert_eq!((event.id.as_str(), event.time), ("e-1", expect), "{prefix}");
        }
    }
}

#[cfg(test)]
mod tests {
    use busline_core::{DeadLetterReason, Payload};
    use chrono::Utc;

    use super::*;

    fn raw(event_type: &str) -> RawEvent {
        RawEvent::of_type(event_type, 2, Payload::json(Bytes::from_static(b"{\"a\":1}")))
            .with_source("svc")
            .with_causation_id("cause")
            .with_key("k-1")
            .with_extension("tenant", "acme")
    }

    #[test]
    fn round_trips_with_native_properties() {
        let event = raw("order.created");
        let props = encode(&event).unwrap();
        assert_eq!(props.message_id().as_ref().unwrap().as_str(), event.id);
        assert_eq!(props.kind().as_ref().unwrap().as_str(), "order.created");
        assert_eq!(props.app_id().as_ref().unwrap().as_str(), "svc");
        assert_eq!(*props.delivery_mode(), Some(2));
        let back = decode(&props, event.data.bytes.clone()).unwrap();
        assert_eq!(back, event);
        assert_eq!(attempt(&props, false), 1);
        assert_eq!(attempt(&props, true), 2);
    }

    #[test]
    fn short_string_headers_are_read_too() {
        let event = raw("t");
        let props = encode(&event).unwrap();
        let table: BTreeMap<ShortString, AMQPValue> = props
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .iter()
            .map(|(k, v)| match v {
                AMQPValue::LongString(s) => (k.clone(), AMQPValue::ShortString(s.to_string().into())),
                other => (k.clone(), other.clone()),
            })
            .collect();
        let props = props.with_headers(table.into());
        assert_eq!(decode(&props, event.data.bytes.clone()).unwrap(), event);
    }

    #[test]
    fn retries_stamp_the_attempt_and_drop_broker_bookkeeping() {
        let event = raw("t");
        let mut headers = own_headers(&encode(&event).unwrap());
        headers.insert("x-death".into(), AMQPValue::Void);
        let props = encode(&event)
            .unwrap()
            .with_headers(headers.into())
            .with_expiration("250".into());
        let retry = for_retry(&props, 3, 0);
        assert_eq!(attempt(&retry, false), 3);
        assert!(
            retry.expiration().is_none(),
            "a retry expires with its queue's TTL"
        );
        assert!(!retry.headers().as_ref().unwrap().contains_key("x-death"));
        assert_eq!(copy_failures(&retry), 0);
        assert_eq!(decode(&retry, event.data.bytes.clone()).unwrap(), event);

        let parked = for_retry(&retry, 3, 2);
        assert_eq!((attempt(&parked, false), copy_failures(&parked)), (3, 2));
        assert_eq!(decode(&parked, event.data.bytes.clone()).unwrap(), event);
        assert_eq!(copy_failures(&for_retry(&parked, 4, 0)), 0, "a retry starts over");
    }

    #[test]
    fn dead_letters_keep_the_envelope_and_gain_the_attributes() {
        let event = raw("t");
        let props = for_retry(&encode(&event).unwrap(), 3, 1);
        let letter = DeadLetter {
            reason: DeadLetterReason::MaxAttemptsExceeded,
            error: "boom".into(),
            topic: "orders".into(),
            group: "billing".into(),
            attempts: 3,
            failed_at: Utc::now(),
        };
        let dead = for_dead_letter(&props, &letter);
        assert!(dead.expiration().is_none());
        assert_eq!(attempt(&dead, false), 1, "a dead letter starts its own attempts");
        assert_eq!(copy_failures(&dead), 0);
        let back = decode(&dead, event.data.bytes.clone()).unwrap();
        assert_eq!(DeadLetter::read(&back).unwrap().reason, letter.reason);
        let mut stripped = back.clone();
        DeadLetter::strip(&mut stripped);
        assert_eq!(stripped, event);
    }
}
