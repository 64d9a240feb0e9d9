//! The envelope as NATS headers, through the core's one header mapping
//! ([`HeaderDialect::NATS`]: `ce-` prefix, percent-encoded values), plus the
//! JetStream headers busline sets itself, and what the CloudEvents NATS
//! binding (1.0.3 draft) asks beyond the core's mapping: the content type
//! as `ce-datacontenttype` (in binary mode not as `content-type`), and
//! values in double quotes unescaped (RFC 7230 § 3.2.6) before they are
//! percent-decoded.

use async_nats::header::{HeaderName, IntoHeaderName, NATS_MESSAGE_ID};
use async_nats::HeaderMap;
use busline_core::wire::{self, attr, HeaderDialect, NativeAttributes};
use busline_core::{DeadLetter, EnvelopeError, RawEvent, REPLAY_COUNT};
use bytes::Bytes;
use std::borrow::Cow;

/// JetStream's de-duplication header.
pub(crate) const MSG_ID: &str = "Nats-Msg-Id";
/// The content type as the binding's `ce-` attribute header.
pub(crate) const DATACONTENTTYPE: &str = "ce-datacontenttype";
/// The header a structured-mode message carries its content type in.
const CONTENT_TYPE: &str = "content-type";

/// The headers of `event`, its `Nats-Msg-Id` included.
///
/// In binary mode the binding maps every attribute to a `ce-` header,
/// `datacontenttype` to `ce-datacontenttype`, and no `Content-Type`
/// header (that one marks structured mode): the content type travels once.
/// The `dataversion` and `correlationid` extensions are left out where they
/// hold what a reader assumes without them (version 1; the event's own id,
/// which starts a chain), as the core's mapping reads an event from a
/// producer that does not know them. Every header is a cost on both sides
/// of the server (async-nats allocates its name, value and value list into
/// a hash map per header, per message): busline wrote ten before
/// 2026-12-02, and still reads that form.
pub(crate) fn encode(event: &RawEvent) -> Result<HeaderMap, EnvelopeError> {
    let mut map = HeaderMap::new();
    let binary = !wire::is_structured(&event.data.content_type);
    let nats = HeaderDialect::NATS;
    wire::for_each_header(event, &nats, |name, value| {
        if binary && name == CONTENT_TYPE {
            map.insert(CE_DATACONTENTTYPE, nats.encode_value(value));
            return;
        }
        if binary && is_default(event, name) {
            return;
        }
        map.insert(static_name(name), value);
    })?;
    if !binary {
        // Structured mode, as before: the attributes are in the body.
        map.insert(CE_DATACONTENTTYPE, nats.encode_value(&event.data.content_type));
    }
    map.insert(NATS_MESSAGE_ID, msg_id(event));
    Ok(map)
}

/// Whether header `name` of `event` holds what a reader assumes when it is
/// absent (`busline_core::wire` reads a missing `dataversion` as 1 and a
/// missing `correlationid` as the event's id).
fn is_default(event: &RawEvent, name: &str) -> bool {
    match name.strip_prefix(ATTRIBUTE_PREFIX) {
        Some(attr::DATAVERSION) => event.version == 1,
        Some(attr::CORRELATIONID) => event.correlation_id == event.id,
        _ => false,
    }
}

const CE_DATACONTENTTYPE: HeaderName = HeaderName::from_static(DATACONTENTTYPE);

/// The name of a header, without an allocation for the ones every event
/// has.
fn static_name(name: &str) -> HeaderName {
    const SPECVERSION: HeaderName = HeaderName::from_static("ce-specversion");
    const ID: HeaderName = HeaderName::from_static("ce-id");
    const TYPE: HeaderName = HeaderName::from_static("ce-type");
    const SOURCE: HeaderName = HeaderName::from_static("ce-source");
    const TIME: HeaderName = HeaderName::from_static("ce-time");
    const DATAVERSION: HeaderName = HeaderName::from_static("ce-dataversion");
    const CORRELATIONID: HeaderName = HeaderName::from_static("ce-correlationid");
    match name {
        "ce-specversion" => SPECVERSION,
        "ce-id" => ID,
        "ce-type" => TYPE,
        "ce-source" => SOURCE,
        "ce-time" => TIME,
        "ce-dataversion" => DATAVERSION,
        "ce-correlationid" => CORRELATIONID,
        _ => name.into_header_name(),
    }
}

/// The de-duplication id of `event`: its id, so that a retried publish is
/// stored once; a replayed event keeps its id, so its replay count is
/// appended, or the duplicate window would drop the replay.
pub(crate) fn msg_id(event: &RawEvent) -> String {
    match event.extensions.get(REPLAY_COUNT) {
        Some(n) => format!("{}:replay:{n}", event.id),
        None => event.id.to_string(),
    }
}

/// Reads the envelope of a received message; a message without headers is
/// read as one with none (and so fails on the missing id).
/// The message as the server handed it over, for an operator: every
/// value of every header, in order.
pub(crate) fn received(headers: Option<&HeaderMap>, body: Bytes) -> busline_core::ReceivedMessage {
    let headers = headers
        .into_iter()
        .flat_map(|h| h.iter())
        .flat_map(|(name, values)| {
            let name: &str = name.as_ref();
            values.iter().map(move |v| {
                (
                    Bytes::copy_from_slice(name.as_bytes()),
                    Bytes::copy_from_slice(v.as_str().as_bytes()),
                )
            })
        })
        .collect();
    busline_core::ReceivedMessage::new(headers, body)
}

pub(crate) fn decode(headers: Option<&HeaderMap>, body: Bytes) -> Result<RawEvent, EnvelopeError> {
    let pairs = || {
        headers
            .into_iter()
            .flat_map(|h| h.iter())
            .flat_map(|(name, values)| {
                let name: &str = name.as_ref();
                values.iter().map(move |v| (name, v.as_str()))
            })
    };
    let quoted = |name: &str, value: &str| is_attribute(name) && value.contains('"');
    if !pairs().any(|(n, v)| quoted(n, v)) {
        // busline's own values never hold a quote (it is percent-encoded).
        let pairs = pairs().map(|(n, v)| (n, v.as_bytes()));
        return wire::decode_headers(&HeaderDialect::NATS, pairs, NativeAttributes::default(), body);
    }
    let mut unquoted: Vec<(&str, Cow<'_, str>)> = Vec::new();
    for (name, value) in pairs() {
        let value = if quoted(name, value) {
            Cow::Owned(unquote(value).map_err(|reason| EnvelopeError::Invalid {
                attribute: name[ATTRIBUTE_PREFIX.len()..].to_ascii_lowercase(),
                reason: reason.into(),
            })?)
        } else {
            Cow::Borrowed(value)
        };
        unquoted.push((name, value));
    }
    let pairs = unquoted.iter().map(|(n, v)| (*n, v.as_bytes()));
    wire::decode_headers(&HeaderDialect::NATS, pairs, NativeAttributes::default(), body)
}

const ATTRIBUTE_PREFIX: &str = "ce-";

/// Whether `name` carries a CloudEvents attribute (`ce-`, any case).
fn is_attribute(name: &str) -> bool {
    name.as_bytes()
        .get(..ATTRIBUTE_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(ATTRIBUTE_PREFIX.as_bytes()))
}

/// A header value with its double-quoted strings unescaped (RFC 7230
/// § 3.2.6: the quotes go, `\x` becomes `x`), as the binding asks of a
/// receiver before percent-decoding; older producers quoted values with
/// spaces instead of encoding them.
fn unquote(value: &str) -> Result<String, &'static str> {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            out.push(c);
            continue;
        }
        loop {
            match chars.next() {
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some(escaped) => out.push(escaped),
                    None => return Err("quoted string ends in a backslash"),
                },
                Some(c) => out.push(c),
                None => return Err("quoted string without its closing quote"),
            }
        }
    }
    Ok(out)
}

/// The headers of the dead letter of a message: the original envelope
/// headers as they were (whatever they hold, even when unreadable), the
/// letter's attributes added as `ce-deadletter…` headers, server headers
/// dropped, and a `Nats-Msg-Id` that names the stored original, so that
/// dead-lettering the same stored message twice keeps one letter.
pub(crate) fn dead_letter(original: Option<&HeaderMap>, letter: &DeadLetter, msg_id: String) -> HeaderMap {
    let added = letter_headers(letter);
    let mut map = HeaderMap::new();
    if let Some(original) = original {
        for (name, values) in original.iter() {
            let name: &str = name.as_ref();
            let replaced = added.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
            if replaced || is_server_header(name.as_bytes()) {
                continue;
            }
            for v in values {
                map.append(name, v.as_str());
            }
        }
    }
    for (name, value) in added {
        map.insert(name.as_str(), value);
    }
    map.insert(MSG_ID, msg_id);
    map
}

/// The bytes `headers` take on the wire (`NATS/1.0` line, `name: value`
/// lines, blank line): the server counts them in `max_payload`.
pub(crate) fn wire_size(headers: &HeaderMap) -> usize {
    let lines: usize = headers
        .iter()
        .map(|(name, values)| {
            let name: &str = name.as_ref();
            values
                .iter()
                .map(|v| name.len() + v.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum();
    "NATS/1.0\r\n\r\n".len() + lines
}

/// Whether `name` is one of the server's own `Nats-` headers. Compared as
/// bytes: a foreign name may have a multi-byte character where a `str`
/// slice at a fixed byte index would panic.
fn is_server_header(name: &[u8]) -> bool {
    name.get(..5).is_some_and(|p| p.eq_ignore_ascii_case(b"nats-"))
}

/// The letter's attributes in the NATS dialect: `ce-` names and
/// percent-encoded values, as the core's mapping writes every attribute.
fn letter_headers(letter: &DeadLetter) -> Vec<(String, String)> {
    let nats = HeaderDialect::NATS;
    letter
        .attributes()
        .iter()
        .map(|(name, value)| (nats.header(name), nats.encode_value(value)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use busline_core::{DeadLetterReason, Payload};

    fn event() -> RawEvent {
        RawEvent::of_type("test.ping", 2, Payload::json(Bytes::from_static(b"{}")))
            .with_source("svc")
            .with_correlation_id("req-1")
            .with_causation_id("c-1")
            .with_key("k 1")
            .with_extension("tenant", "acme corp")
    }

    #[test]
    fn round_trip() {
        let e = event();
        let h = encode(&e).unwrap();
        assert_eq!(h.get("ce-partitionkey").unwrap().as_str(), "k%201");
        assert_eq!(h.get(NATS_MESSAGE_ID).unwrap().as_str(), e.id);
        let back = decode(Some(&h), e.data.bytes.clone()).unwrap();
        assert_eq!(back, e);
    }

    /// Every header's name, as the wire carries it.
    fn names(h: &HeaderMap) -> std::collections::BTreeSet<String> {
        h.iter().map(|(n, _)| n.to_string()).collect()
    }

    #[test]
    fn the_content_type_travels_once_as_an_attribute_header() {
        let mut e = event();
        e.data.content_type = "application/json; charset=utf-8".into();
        let h = encode(&e).unwrap();
        assert!(h.get(CONTENT_TYPE).is_none(), "binary mode: no content-type");
        assert_eq!(
            h.get(DATACONTENTTYPE).unwrap().as_str(),
            "application/json;%20charset=utf-8"
        );
        assert_eq!(decode(Some(&h), e.data.bytes.clone()).unwrap(), e);
    }

    #[test]
    fn a_fresh_event_carries_seven_headers() {
        let mut e = event();
        (e.version, e.causation_id, e.key) = (1, None, None);
        e.correlation_id.clone_from(&e.id);
        e.extensions.clear();
        let h = encode(&e).unwrap();
        let want = [
            "ce-specversion",
            "ce-id",
            "ce-type",
            "ce-source",
            "ce-time",
            "ce-datacontenttype",
            "Nats-Msg-Id",
        ];
        assert_eq!(names(&h), want.iter().map(|n| n.to_string()).collect());
        assert_eq!(decode(Some(&h), e.data.bytes.clone()).unwrap(), e);
        // Values other than the defaults are written.
        let e = event();
        let h = encode(&e).unwrap();
        assert_eq!(h.get("ce-dataversion").unwrap().as_str(), "2");
        assert_eq!(h.get("ce-correlationid").unwrap().as_str(), "req-1");
    }

    /// Streams hold messages busline wrote before 2026-12-02: ten headers,
    /// the defaults and `content-type` among them.
    #[test]
    fn the_ten_header_form_still_reads() {
        let mut e = event();
        (e.version, e.causation_id, e.key) = (1, None, None);
        e.correlation_id.clone_from(&e.id);
        e.extensions.clear();
        let mut h = HeaderMap::new();
        let time = wire::format_time(&e.time);
        for (name, value) in [
            ("ce-specversion", "1.0"),
            ("ce-id", e.id.as_str()),
            ("ce-type", "test.ping"),
            ("ce-source", "svc"),
            ("ce-time", time.as_str()),
            ("ce-dataversion", "1"),
            ("ce-correlationid", e.id.as_str()),
            ("content-type", "application/json"),
            ("ce-datacontenttype", "application/json"),
            ("Nats-Msg-Id", e.id.as_str()),
        ] {
            h.insert(name, value);
        }
        assert_eq!(decode(Some(&h), e.data.bytes.clone()).unwrap(), e);
    }

    #[test]
    fn quoted_values_are_unescaped_before_percent_decoding() {
        assert_eq!(unquote(r#""acme corp""#).unwrap(), "acme corp");
        assert_eq!(
            unquote(r#""say \"hi\" \\ 100%25""#).unwrap(),
            r#"say "hi" \ 100%25"#
        );
        assert_eq!(unquote(r#"a "b c" d"#).unwrap(), "a b c d");
        assert!(unquote(r#""open"#).is_err());
        assert!(unquote("\"tail\\").is_err());

        let e = event();
        let mut h = encode(&e).unwrap();
        h.insert("ce-tenant", r#""acme corp""#);
        h.insert("CE-Note", r#""100%25 \"sure\"""#);
        let back = decode(Some(&h), e.data.bytes.clone()).unwrap();
        assert_eq!(back.extensions["tenant"], "acme corp");
        assert_eq!(back.extensions["note"], r#"100% "sure""#);
        // Not an attribute: left as it is.
        h.insert("x-other", r#""q""#);
        assert!(decode(Some(&h), e.data.bytes.clone()).is_ok());
        h.insert("ce-tenant", r#""open"#);
        let err = decode(Some(&h), e.data.bytes.clone()).unwrap_err();
        assert!(
            matches!(&err, EnvelopeError::Invalid { attribute, .. } if attribute == "tenant"),
            "{err:?}"
        );
    }

    #[test]
    fn replays_get_their_own_msg_id() {
        let mut e = event();
        e.extensions.insert(REPLAY_COUNT.into(), "2".into());
        assert_eq!(msg_id(&e), format!("{}:replay:2", e.id));
    }

    #[test]
    fn non_ascii_names_are_kept_and_server_headers_dropped() {
        let mut h = HeaderMap::new();
        // `š` spans bytes 4 and 5: a slice at 5 would split it.
        h.insert("natsš-x", "1");
        h.insert("Nats-Expected-Stream", "s");
        h.insert("näts", "2");
        let letter = DeadLetter {
            reason: DeadLetterReason::MalformedEnvelope,
            error: "`id` is missing".into(),
            topic: "orders".into(),
            group: "g".into(),
            attempts: 1,
            failed_at: chrono::Utc::now(),
        };
        let d = dead_letter(Some(&h), &letter, "dl:x:1".into());
        assert_eq!(d.get("natsš-x").unwrap().as_str(), "1");
        assert_eq!(d.get("näts").unwrap().as_str(), "2");
        assert!(d.get("Nats-Expected-Stream").is_none());
    }

    #[test]
    fn dead_letters_keep_the_original_headers() {
        let e = event();
        let mut h = HeaderMap::new();
        for (n, v) in wire::encode_headers(&e, &HeaderDialect::NATS).unwrap() {
            if n != "ce-id" {
                h.insert(n.as_str(), v);
            }
        }
        let letter = DeadLetter {
            reason: DeadLetterReason::MalformedEnvelope,
            error: "`id` is missing\nsecond line".into(),
            topic: "orders".into(),
            group: "g".into(),
            attempts: 1,
            failed_at: chrono::Utc::now(),
        };
        let d = dead_letter(Some(&h), &letter, "dl:x:1".into());
        assert_eq!(d.get(MSG_ID).unwrap().as_str(), "dl:x:1");
        assert_eq!(d.get("ce-tenant").unwrap().as_str(), "acme%20corp");
        assert!(d.get("ce-id").is_none());
        let err = d.get("ce-deadlettererror").unwrap().as_str();
        assert!(!err.contains('\n') && !err.contains(' '), "{err}");
        // A readable original reads back with the letter's attributes.
        let d = dead_letter(Some(&encode(&e).unwrap()), &letter, "dl:x:2".into());
        let back = decode(Some(&d), e.data.bytes.clone()).unwrap();
        assert_eq!(DeadLetter::read(&back).unwrap().error, letter.error);
        assert_eq!(back.id, e.id);
    }
}
