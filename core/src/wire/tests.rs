//! Unit tests of the CloudEvents binary-mode header mapping.

use super::*;

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};

use crate::{DomainEvent, EnvelopeError, Payload, RawEvent};

/// The three broker dialects plus the in-memory one, with a label for messages.
const DIALECTS: [(&str, HeaderDialect); 4] = [
    ("kafka", HeaderDialect::KAFKA),
    ("amqp", HeaderDialect::AMQP),
    ("nats", HeaderDialect::NATS),
    ("memory", HeaderDialect::MEMORY),
];

const AWKWARD: &str = "a value with spaces, \"quotes\", 100% \n newline and café ✓";

// ---------------------------------------------------------------- helpers

fn nanos_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 6, 7, 8, 9).unwrap() + chrono::Duration::nanoseconds(123_456_789)
}

/// An envelope with every field set.
fn full_event() -> RawEvent {
    let mut extensions = BTreeMap::new();
    extensions.insert(
        "traceparent".to_owned(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
    );
    extensions.insert("note".to_owned(), AWKWARD.to_owned());
    extensions.insert("tenant".to_owned(), "acme".to_owned());
    DomainEvent {
        id: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
        event_type: "order.created".into(),
        version: 7,
        source: "billing-service".into(),
        time: nanos_time(),
        correlation_id: "req-42".into(),
        causation_id: Some("0190a1b2-0000-7000-8000-000000000001".into()),
        key: Some("order-17 ✓".into()),
        extensions,
        data: Payload {
            content_type: "application/json".into(),
            bytes: Bytes::from_static(b"{\"order_id\":\"o-1\",\"bin\":\"\xff\x00\"}"),
        },
    }
}

/// An envelope with only what is required.
fn minimal_event() -> RawEvent {
    DomainEvent {
        id: "e-1".into(),
        event_type: "ping".into(),
        version: 1,
        source: "svc".into(),
        time: Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap(),
        correlation_id: "e-1".into(),
        causation_id: None,
        key: None,
        extensions: BTreeMap::new(),
        data: Payload {
            content_type: "application/json".into(),
            bytes: Bytes::from_static(b"{}"),
        },
    }
}

/// What the broker would carry outside the headers for `event`: the Kafka
/// record key, the AMQP `content_type` property.
fn native_for<'a>(dialect: &HeaderDialect, event: &'a RawEvent) -> NativeAttributes<'a> {
    NativeAttributes {
        content_type: match dialect.content_type_header {
            None => Some(event.data.content_type.as_str()),
            Some(_) => None,
        },
        key: if dialect.key_in_headers {
            None
        } else {
            event.key.as_deref().map(str::as_bytes)
        },
    }
}

fn decode_strs(
    dialect: &HeaderDialect,
    headers: &[(String, String)],
    native: NativeAttributes<'_>,
    body: Bytes,
) -> Result<RawEvent, EnvelopeError> {
    decode_headers(
        dialect,
        headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
        native,
        body,
    )
}

fn decode_bytes(
    dialect: &HeaderDialect,
    headers: &[(String, Vec<u8>)],
    native: NativeAttributes<'_>,
) -> Result<RawEvent, EnvelopeError> {
    decode_headers(
        dialect,
        headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
        native,
        Bytes::from_static(b"body"),
    )
}

/// Encodes then decodes `event` through `dialect` with the natives a broker
/// would carry, checking the body is passed through untouched.
fn round_trip(dialect: &HeaderDialect, event: &RawEvent) -> RawEvent {
    let headers = encode_headers(event, dialect).expect("encode");
    let body = event.data.bytes.clone();
    let decoded = decode_strs(dialect, &headers, native_for(dialect, event), body).expect("decode");
    assert_eq!(decoded.data.bytes, event.data.bytes);
    decoded
}

/// The encoded headers of the minimal event, as byte values, ready to mutate.
fn wire_of(dialect: &HeaderDialect, event: &RawEvent) -> Vec<(String, Vec<u8>)> {
    encode_headers(event, dialect)
        .expect("encode")
        .into_iter()
        .map(|(n, v)| (n, v.into_bytes()))
        .collect()
}

fn remove_header(headers: &mut Vec<(String, Vec<u8>)>, name: &str) {
    let before = headers.len();
    headers.retain(|(n, _)| n != name);
    assert_eq!(
        headers.len() + 1,
        before,
        "header {name} should have been present once"
    );
}

fn set_header(headers: &mut [(String, Vec<u8>)], name: &str, value: &[u8]) {
    let slot = headers
        .iter_mut()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("header {name} present"));
    slot.1 = value.to_vec();
}

fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// Decodes `headers` of the minimal event in `dialect` with its natives.
fn decode_minimal(dialect: &HeaderDialect, headers: &[(String, Vec<u8>)]) -> Result<RawEvent, EnvelopeError> {
    let event = minimal_event();
    decode_bytes(dialect, headers, native_for(dialect, &event))
}

fn invalid_attribute(result: &Result<RawEvent, EnvelopeError>) -> Option<&str> {
    match result {
        Err(EnvelopeError::Invalid { attribute, .. }) => Some(attribute.as_str()),
        _ => None,
    }
}

// ---------------------------------------------------------------- names, time

#[test]
fn attribute_names_are_lowercase_alphanumerics_up_to_64() {
    for ok in ["a", "id", "traceparent", "x1", "0", "abc123", &"a".repeat(64)] {
        assert!(is_valid_attribute_name(ok), "{ok:?} should be valid");
    }
    for bad in [
        "",
        "Trace-Parent",
        "traceParent",
        "trace-parent",
        "trace_parent",
        "trace.parent",
        "with space",
        "café",
        "ID",
        &"a".repeat(65),
    ] {
        assert!(!is_valid_attribute_name(bad), "{bad:?} should be invalid");
    }
}

#[test]
fn reserved_names_are_all_valid_attribute_names() {
    for name in attr::RESERVED {
        assert!(is_valid_attribute_name(name), "{name}");
    }
}

#[test]
fn dialect_header_prefixes_names() {
    assert_eq!(HeaderDialect::KAFKA.header("id"), "ce_id");
    assert_eq!(HeaderDialect::AMQP.header("id"), "cloudEvents_id");
    assert_eq!(HeaderDialect::NATS.header("id"), "ce-id");
    assert_eq!(HeaderDialect::MEMORY.header("traceparent"), "ce-traceparent");
}

#[test]
fn format_time_is_rfc3339_utc_with_needed_fraction_digits() {
    let base = Utc.with_ymd_and_hms(2024, 5, 6, 7, 8, 9).unwrap();
    assert_eq!(format_time(&base), "2024-05-06T07:08:09Z");
    assert_eq!(
        format_time(&(base + chrono::Duration::milliseconds(120))),
        "2024-05-06T07:08:09.120Z"
    );
    assert_eq!(
        format_time(&(base + chrono::Duration::microseconds(123_456))),
        "2024-05-06T07:08:09.123456Z"
    );
    assert_eq!(
        format_time(&(base + chrono::Duration::nanoseconds(123_456_789))),
        "2024-05-06T07:08:09.123456789Z"
    );
    assert_eq!(
        format_time(&(base + chrono::Duration::nanoseconds(1))),
        "2024-05-06T07:08:09.000000001Z"
    );
}

#[test]
fn format_time_reads_back_equal() {
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..500 {
        let t = random_time(&mut rng);
        let text = format_time(&t);
        let back = DateTime::parse_from_rfc3339(&text).unwrap().with_timezone(&Utc);
        assert_eq!(back, t, "{text}");
    }
}

#[test]
fn a_dialect_with_a_long_prefix_still_names_every_header() {
    let prefix: &'static str = Box::leak("x".repeat(200).into_boxed_str());
    let dialect = HeaderDialect {
        prefix,
        ..HeaderDialect::MEMORY
    };
    let headers = encode_headers(&full_event(), &dialect).unwrap();
    assert!(headers.iter().any(|(name, _)| *name == format!("{prefix}id")));
}

#[test]
fn format_time_writes_what_chrono_writes() {
    let chrono_text = |t: &DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    let mut rng = fastrand::Rng::with_seed(11);
    let mut times: Vec<DateTime<Utc>> = (0..2_000).map(|_| random_time(&mut rng)).collect();
    let edges = [
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999999Z",
        "1970-01-01T00:00:00.001Z",
        "2024-02-29T12:00:00.000001Z",
        "2016-12-31T23:59:60.5Z", // a leap second: chrono's own path
    ];
    for edge in edges {
        times.push(DateTime::parse_from_rfc3339(edge).unwrap().with_timezone(&Utc));
    }
    // Outside 0000-9999 the fast path steps aside too.
    times.push(Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap());
    times.push(Utc.with_ymd_and_hms(-1, 1, 1, 0, 0, 0).unwrap());
    for t in &times {
        assert_eq!(format_time(t), chrono_text(t), "{t:?}");
    }
}

// ---------------------------------------------------------------- round trips

#[test]
fn full_envelope_round_trips_in_every_dialect() {
    let event = full_event();
    for (label, dialect) in DIALECTS {
        let decoded = round_trip(&dialect, &event);
        assert_eq!(decoded, event, "{label}");
        assert_eq!(decoded.time.timestamp_subsec_nanos(), 123_456_789, "{label}");
        assert_eq!(decoded.extensions["note"], AWKWARD, "{label}");
    }
}

#[test]
fn body_is_passed_through_without_copy() {
    let event = full_event();
    for (label, dialect) in DIALECTS {
        let headers = encode_headers(&event, &dialect).unwrap();
        let body = Bytes::from(vec![0u8, 159, 146, 150, 255, b'\n']);
        let ptr = body.as_ptr();
        let decoded = decode_strs(&dialect, &headers, native_for(&dialect, &event), body).unwrap();
        assert_eq!(
            &decoded.data.bytes[..],
            &[0u8, 159, 146, 150, 255, b'\n'],
            "{label}"
        );
        assert_eq!(
            decoded.data.bytes.as_ptr(),
            ptr,
            "{label}: body should not be copied"
        );
    }
}

#[test]
fn minimal_envelope_round_trips_in_every_dialect() {
    let event = minimal_event();
    for (label, dialect) in DIALECTS {
        assert_eq!(round_trip(&dialect, &event), event, "{label}");
    }
}

#[test]
fn empty_body_round_trips() {
    let mut event = full_event();
    event.data.bytes = Bytes::new();
    for (label, dialect) in DIALECTS {
        assert_eq!(round_trip(&dialect, &event), event, "{label}");
    }
}

#[test]
fn empty_key_round_trips() {
    let mut event = minimal_event();
    event.key = Some("".into());
    for (label, dialect) in DIALECTS {
        assert_eq!(round_trip(&dialect, &event).key.as_deref(), Some(""), "{label}");
    }
}

#[test]
fn empty_extension_value_round_trips() {
    let mut event = minimal_event();
    event.extensions.insert("empty".into(), String::new());
    for (label, dialect) in DIALECTS {
        assert_eq!(round_trip(&dialect, &event), event, "{label}");
    }
}

#[test]
fn content_type_with_parameters_round_trips() {
    let mut event = minimal_event();
    event.data.content_type = "application/json; charset=utf-8".into();
    for (label, dialect) in DIALECTS {
        assert_eq!(round_trip(&dialect, &event), event, "{label}");
    }
}

// ---------------------------------------------------------------- wire shape

#[test]
fn kafka_headers_are_ce_underscore_with_content_type_and_no_partitionkey() {
    let event = full_event();
    let headers = encode_headers(&event, &HeaderDialect::KAFKA).unwrap();
    let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    for (name, _) in &headers {
        assert!(name.starts_with("ce_") || name == "content-type", "{name}");
    }
    assert!(
        !names.contains(&"ce_partitionkey"),
        "the key is the record key: {names:?}"
    );
    assert!(
        !headers.iter().any(|(_, v)| v.contains("order-17")),
        "key leaked into headers"
    );
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        [
            "ce_causationid",
            "ce_correlationid",
            "ce_dataversion",
            "ce_id",
            "ce_note",
            "ce_source",
            "ce_specversion",
            "ce_tenant",
            "ce_time",
            "ce_traceparent",
            "ce_type",
            "content-type",
        ]
    );
    assert_eq!(header_value(&headers, "ce_specversion"), Some("1.0"));
    assert_eq!(header_value(&headers, "ce_id"), Some(event.id.as_str()));
    assert_eq!(header_value(&headers, "ce_type"), Some("order.created"));
    assert_eq!(header_value(&headers, "ce_source"), Some("billing-service"));
    assert_eq!(
        header_value(&headers, "ce_time"),
        Some("2024-05-06T07:08:09.123456789Z")
    );
    assert_eq!(header_value(&headers, "ce_dataversion"), Some("7"));
    assert_eq!(header_value(&headers, "ce_correlationid"), Some("req-42"));
    assert_eq!(header_value(&headers, "content-type"), Some("application/json"));
    // Kafka header values are bytes: no percent-encoding.
    assert_eq!(header_value(&headers, "ce_note"), Some(AWKWARD));
}

#[test]
fn amqp_headers_are_cloudevents_prefixed_without_content_type() {
    let event = full_event();
    let headers = encode_headers(&event, &HeaderDialect::AMQP).unwrap();
    for (name, _) in &headers {
        assert!(name.starts_with("cloudEvents_"), "{name}");
        assert!(!name.eq_ignore_ascii_case("content-type"), "{name}");
        assert_ne!(
            name, "cloudEvents_datacontenttype",
            "content type is the native property"
        );
    }
    assert!(
        !headers.iter().any(|(_, v)| v == "application/json"),
        "content type leaked"
    );
    assert_eq!(
        header_value(&headers, "cloudEvents_partitionkey"),
        Some("order-17 ✓")
    );
    assert_eq!(header_value(&headers, "cloudEvents_specversion"), Some("1.0"));
    assert_eq!(header_value(&headers, "cloudEvents_note"), Some(AWKWARD));
    assert_eq!(headers.len(), 12);
}

#[test]
fn nats_headers_are_ce_dash_with_percent_encoded_values() {
    let event = full_event();
    let headers = encode_headers(&event, &HeaderDialect::NATS).unwrap();
    for (name, value) in &headers {
        assert!(name.starts_with("ce-") || name == "content-type", "{name}");
        if name.starts_with("ce-") {
            assert!(
                value.bytes().all(|b| b.is_ascii_graphic() && b != b'"'),
                "{name}: raw space, quote, control or non-ASCII in {value:?}"
            );
        }
    }
    assert_eq!(header_value(&headers, "content-type"), Some("application/json"));
    let note = header_value(&headers, "ce-note").unwrap();
    for encoded in ["%20", "%22", "%25", "%0A", "caf%C3%A9", "%E2%9C%93"] {
        assert!(note.contains(encoded), "{encoded} missing from {note}");
    }
    assert_eq!(
        percent_encoding::percent_decode_str(note).decode_utf8().unwrap(),
        AWKWARD
    );
    assert_eq!(
        header_value(&headers, "ce-partitionkey"),
        Some("order-17%20%E2%9C%93")
    );
    // Plain values are left alone.
    assert_eq!(header_value(&headers, "ce-type"), Some("order.created"));
    assert_eq!(header_value(&headers, "ce-specversion"), Some("1.0"));
    assert_eq!(
        header_value(&headers, "ce-time"),
        Some("2024-05-06T07:08:09.123456789Z")
    );
    assert_eq!(headers.len(), 13);
}

#[test]
fn optional_attributes_are_omitted_when_absent() {
    let event = minimal_event();
    for (label, dialect) in DIALECTS {
        let headers = encode_headers(&event, &dialect).unwrap();
        for absent in [attr::CAUSATIONID, attr::PARTITIONKEY] {
            assert!(
                header_value(&headers, &dialect.header(absent)).is_none(),
                "{label}: {absent}"
            );
        }
        // dataversion and correlationid are always written.
        assert_eq!(
            header_value(&headers, &dialect.header(attr::DATAVERSION)),
            Some("1"),
            "{label}"
        );
        assert_eq!(
            header_value(&headers, &dialect.header(attr::CORRELATIONID)),
            Some("e-1"),
            "{label}"
        );
    }
}

// ---------------------------------------------------------------- tolerance

#[test]
fn foreign_headers_without_prefix_are_ignored() {
    let event = full_event();
    for (label, dialect) in DIALECTS {
        let mut headers = encode_headers(&event, &dialect).unwrap();
        for foreign in [
            "traceparent",
            "x-request-id",
            "Nats-Msg-Id",
            "c",
            "",
            "ce",
            "cloud",
            "cxé", // prefix length falls inside a multi-byte char
            "éé_id",
            "ce.id",
            "kafka_ce_id",
        ] {
            headers.push((foreign.to_owned(), "ignored value".to_owned()));
        }
        // The other dialects' prefixes are foreign too (NATS and memory share one).
        let other = if dialect.prefix == "ce_" { "ce-id" } else { "ce_id" };
        headers.push((other.to_owned(), "other".to_owned()));
        if dialect.prefix != "cloudEvents_" {
            headers.push(("cloudEvents_id".to_owned(), "other".to_owned()));
        }
        let decoded = decode_strs(
            &dialect,
            &headers,
            native_for(&dialect, &event),
            event.data.bytes.clone(),
        )
        .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(decoded, event, "{label}");
    }
}

#[test]
fn prefix_and_names_match_case_insensitively() {
    let event = full_event();
    for (label, dialect) in DIALECTS {
        let headers: Vec<(String, String)> = encode_headers(&event, &dialect)
            .unwrap()
            .into_iter()
            .enumerate()
            .map(|(i, (name, value))| {
                let name = match i % 3 {
                    0 => name.to_ascii_uppercase(),
                    1 => capitalize_words(&name),
                    _ => name,
                };
                (name, value)
            })
            .collect();
        assert!(headers.iter().any(|(n, _)| n != &n.to_ascii_lowercase()));
        let decoded = decode_strs(
            &dialect,
            &headers,
            native_for(&dialect, &event),
            event.data.bytes.clone(),
        )
        .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(decoded, event, "{label}");
    }
}

/// `ce-id` → `Ce-Id`, `content-type` → `Content-Type` (Go-style
/// canonicalization some clients apply).
fn capitalize_words(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper { c.to_ascii_uppercase() } else { c });
        upper = c == '-' || c == '_';
    }
    out
}

#[test]
fn canonicalized_nats_names_decode() {
    let headers = [
        ("Ce-Specversion", "1.0"),
        ("Ce-Id", "e-9"),
        ("CE-TYPE", "ping"),
        ("ce-Source", "svc"),
        ("Ce-Time", "2024-01-02T03:04:05Z"),
        ("Ce-Traceparent", "00-abc-def-01"),
        ("Content-Type", "text/plain"),
    ];
    let decoded = decode_headers(
        &HeaderDialect::NATS,
        headers.iter().map(|(n, v)| (*n, v.as_bytes())),
        NativeAttributes::default(),
        Bytes::new(),
    )
    .unwrap();
    assert_eq!(decoded.id, "e-9");
    assert_eq!(decoded.event_type, "ping");
    assert_eq!(decoded.data.content_type, "text/plain");
    assert_eq!(
        decoded.extensions.get("traceparent").map(String::as_str),
        Some("00-abc-def-01")
    );
}

#[test]
fn uppercase_extension_name_is_lowercased() {
    let event = minimal_event();
    let mut headers = wire_of(&HeaderDialect::KAFKA, &event);
    headers.push(("ce_BAD".into(), b"x".to_vec()));
    let decoded = decode_minimal(&HeaderDialect::KAFKA, &headers).unwrap();
    assert_eq!(decoded.extensions.get("bad").map(String::as_str), Some("x"));
    assert!(!decoded.extensions.contains_key("BAD"));
}

#[test]
fn time_with_offset_is_converted_to_utc() {
    for (label, dialect) in DIALECTS {
        let event = minimal_event();
        let mut headers = wire_of(&dialect, &event);
        let name = dialect.header(attr::TIME);
        let value = dialect.encode_value("2024-01-02T05:04:05.5+02:00");
        set_header(&mut headers, &name, value.as_bytes());
        let decoded = decode_minimal(&dialect, &headers).unwrap();
        assert_eq!(
            decoded.time,
            event.time + chrono::Duration::milliseconds(500),
            "{label}"
        );
    }
}

#[test]
fn kafka_native_key_wins_over_partitionkey_header() {
    let event = minimal_event();
    let mut headers = wire_of(&HeaderDialect::KAFKA, &event);
    headers.push(("ce_partitionkey".into(), b"from-header".to_vec()));
    let native = NativeAttributes {
        content_type: None,
        key: Some(b"native"),
    };
    let decoded = decode_bytes(&HeaderDialect::KAFKA, &headers, native).unwrap();
    assert_eq!(decoded.key.as_deref(), Some("native"));
    assert!(!decoded.extensions.contains_key("partitionkey"));

    // A foreign producer that only wrote the header still gives a key.
    let decoded = decode_bytes(&HeaderDialect::KAFKA, &headers, NativeAttributes::default()).unwrap();
    assert_eq!(decoded.key.as_deref(), Some("from-header"));
}

#[test]
fn kafka_without_record_key_has_no_key() {
    let event = full_event();
    let headers = encode_headers(&event, &HeaderDialect::KAFKA).unwrap();
    let decoded = decode_strs(
        &HeaderDialect::KAFKA,
        &headers,
        NativeAttributes::default(),
        Bytes::new(),
    )
    .unwrap();
    assert_eq!(decoded.key, None);
}

#[test]
fn amqp_native_content_type_wins_over_attribute() {
    let event = minimal_event();
    let mut headers = wire_of(&HeaderDialect::AMQP, &event);
    headers.push(("cloudEvents_datacontenttype".into(), b"text/plain".to_vec()));
    let native = NativeAttributes {
        content_type: Some("application/cbor"),
        key: None,
    };
    let decoded = decode_bytes(&HeaderDialect::AMQP, &headers, native).unwrap();
    assert_eq!(decoded.data.content_type, "application/cbor");
    assert!(decoded.extensions.is_empty(), "{:?}", decoded.extensions);

    // Without the native property the attribute is the fallback.
    let decoded = decode_bytes(&HeaderDialect::AMQP, &headers, NativeAttributes::default()).unwrap();
    assert_eq!(decoded.data.content_type, "text/plain");
}

#[test]
fn amqp_ignores_a_content_type_header() {
    // AMQP has no content-type header; one in the table is a foreign header.
    let event = minimal_event();
    let mut headers = wire_of(&HeaderDialect::AMQP, &event);
    headers.push(("content-type".into(), b"text/plain".to_vec()));
    let native = NativeAttributes {
        content_type: Some("application/json"),
        key: None,
    };
    let decoded = decode_bytes(&HeaderDialect::AMQP, &headers, native).unwrap();
    assert_eq!(decoded.data.content_type, "application/json");
    assert!(decoded.extensions.is_empty());
}

#[test]
fn native_content_type_wins_over_header() {
    for dialect in [HeaderDialect::KAFKA, HeaderDialect::NATS] {
        let headers = wire_of(&dialect, &minimal_event());
        let native = NativeAttributes {
            content_type: Some("application/x-msgpack"),
            key: None,
        };
        let decoded = decode_bytes(&dialect, &headers, native).unwrap();
        assert_eq!(decoded.data.content_type, "application/x-msgpack");
    }
}

// ---------------------------------------------------------------- defaults

#[test]
fn missing_dataversion_defaults_to_one() {
    let mut event = minimal_event();
    event.version = 5;
    for (label, dialect) in DIALECTS {
        let mut headers = wire_of(&dialect, &event);
        remove_header(&mut headers, &dialect.header(attr::DATAVERSION));
        let decoded = decode_bytes(&dialect, &headers, native_for(&dialect, &event)).unwrap();
        assert_eq!(decoded.version, 1, "{label}");
    }
}

#[test]
fn missing_correlationid_defaults_to_id() {
    let mut event = minimal_event();
    event.correlation_id = "some-chain".into();
    for (label, dialect) in DIALECTS {
        let mut headers = wire_of(&dialect, &event);
        remove_header(&mut headers, &dialect.header(attr::CORRELATIONID));
        let decoded = decode_bytes(&dialect, &headers, native_for(&dialect, &event)).unwrap();
        assert_eq!(decoded.correlation_id, decoded.id, "{label}");
        assert_eq!(decoded.correlation_id, "e-1", "{label}");

        // An empty correlation id is treated as absent.
        let mut headers = wire_of(&dialect, &event);
        set_header(&mut headers, &dialect.header(attr::CORRELATIONID), b"");
        let decoded = decode_bytes(&dialect, &headers, native_for(&dialect, &event)).unwrap();
        assert_eq!(decoded.correlation_id, "e-1", "{label}");
    }
}

#[test]
fn missing_optional_attributes_are_none() {
    let event = full_event();
    for (label, dialect) in DIALECTS {
        let mut headers = wire_of(&dialect, &event);
        remove_header(&mut headers, &dialect.header(attr::CAUSATIONID));
        if dialect.key_in_headers {
            remove_header(&mut headers, &dialect.header(attr::PARTITIONKEY));
        }
        let native = NativeAttributes {
            key: None,
            ..native_for(&dialect, &event)
        };
        let decoded = decode_bytes(&dialect, &headers, native).unwrap();
        assert_eq!(decoded.causation_id, None, "{label}");
        assert_eq!(decoded.key, None, "{label}");
    }
}

// ---------------------------------------------------------------- decode errors

#[test]
fn each_missing_required_attribute_is_a_typed_error() {
    let event = minimal_event();
    for (label, dialect) in DIALECTS {
        for name in [attr::SPECVERSION, attr::ID, attr::TYPE, attr::SOURCE, attr::TIME] {
            let mut headers = wire_of(&dialect, &event);
            remove_header(&mut headers, &dialect.header(name));
            let result = decode_bytes(&dialect, &headers, native_for(&dialect, &event));
            assert_eq!(
                result,
                Err(EnvelopeError::Missing {
                    attribute: name.to_owned()
                }),
                "{label}: without {name}"
            );
        }
    }
}

#[test]
fn missing_content_type_is_a_typed_error() {
    let event = minimal_event();
    let missing = Err(EnvelopeError::Missing {
        attribute: "datacontenttype".to_owned(),
    });

    // Kafka and NATS: no content-type header.
    for dialect in [HeaderDialect::KAFKA, HeaderDialect::NATS, HeaderDialect::MEMORY] {
        let mut headers = wire_of(&dialect, &event);
        remove_header(&mut headers, "content-type");
        assert_eq!(
            decode_bytes(&dialect, &headers, NativeAttributes::default()),
            missing
        );

        // An empty header is no better.
        let mut headers = wire_of(&dialect, &event);
        set_header(&mut headers, "content-type", b"");
        assert_eq!(
            decode_bytes(&dialect, &headers, NativeAttributes::default()),
            missing
        );
    }

    // AMQP: no native content_type property.
    let headers = wire_of(&HeaderDialect::AMQP, &event);
    assert_eq!(
        decode_bytes(&HeaderDialect::AMQP, &headers, NativeAttributes::default()),
        missing
    );
    let native = NativeAttributes {
        content_type: Some(""),
        key: None,
    };
    assert_eq!(decode_bytes(&HeaderDialect::AMQP, &headers, native), missing);
}

#[test]
fn no_headers_at_all_is_missing_specversion() {
    for (label, dialect) in DIALECTS {
        let result = decode_headers(
            &dialect,
            std::iter::empty::<(&str, &[u8])>(),
            NativeAttributes::default(),
            Bytes::new(),
        );
        assert_eq!(
            result,
            Err(EnvelopeError::Missing {
                attribute: "specversion".into()
            }),
            "{label}"
        );
    }
}

#[test]
fn empty_required_attribute_is_invalid() {
    let event = minimal_event();
    for (label, dialect) in DIALECTS {
        for name in [attr::ID, attr::TYPE, attr::SOURCE, attr::TIME, attr::SPECVERSION] {
            let mut headers = wire_of(&dialect, &event);
            set_header(&mut headers, &dialect.header(name), b"");
            let result = decode_minimal(&dialect, &headers);
            assert!(
                matches!(&result, Err(EnvelopeError::Invalid { attribute, .. }) if attribute == name),
                "{label}: empty {name} gave {result:?}"
            );
        }
    }
}

#[test]
fn other_specversion_is_unsupported() {
    let event = minimal_event();
    for (label, dialect) in DIALECTS {
        for version in ["0.3", "1", "1.0.1", "2.0", " 1.0"] {
            let mut headers = wire_of(&dialect, &event);
            let value = dialect.encode_value(version);
            set_header(&mut headers, &dialect.header(attr::SPECVERSION), value.as_bytes());
            assert_eq!(
                decode_minimal(&dialect, &headers),
                Err(EnvelopeError::UnsupportedSpecVersion(version.to_owned())),
                "{label}: {version:?}"
            );
        }
    }
}

#[test]
fn bad_time_is_invalid_time() {
    let event = minimal_event();
    for (label, dialect) in DIALECTS {
        for bad in [
            "yesterday",
            "2024-01-02",
            "2024-01-02T03:04:05",          // no offset
            "2024-13-02T03:04:05Z",         // month 13
            "2024-01-02 03:04:05Z garbage", // trailing garbage
            "1704164645",                   // epoch seconds
        ] {
            let mut headers = wire_of(&dialect, &event);
            let value = dialect.encode_value(bad);
            set_header(&mut headers, &dialect.header(attr::TIME), value.as_bytes());
            let result = decode_minimal(&dialect, &headers);
            assert_eq!(
                invalid_attribute(&result),
                Some("time"),
                "{label}: {bad:?} gave {result:?}"
            );
        }
    }
}

#[test]
fn bad_dataversion_is_invalid() {
    let event = minimal_event();
    for (label, dialect) in DIALECTS {
        for bad in ["two", "-1", "", "1.5", "4294967296", "0x10", " 1"] {
            let mut headers = wire_of(&dialect, &event);
            let value = dialect.encode_value(bad);
            set_header(&mut headers, &dialect.header(attr::DATAVERSION), value.as_bytes());
            let result = decode_minimal(&dialect, &headers);
            assert_eq!(
                invalid_attribute(&result),
                Some("dataversion"),
                "{label}: {bad:?} gave {result:?}"
            );
        }
    }
}

#[test]
fn max_dataversion_decodes() {
    let mut event = minimal_event();
    event.version = u32::MAX;
    for (label, dialect) in DIALECTS {
        assert_eq!(round_trip(&dialect, &event).version, u32::MAX, "{label}");
    }
}

#[test]
fn duplicate_attribute_is_a_typed_error() {
    let event = minimal_event();
    for (label, dialect) in DIALECTS {
        // Exact duplicate.
        let mut headers = wire_of(&dialect, &event);
        headers.push((dialect.header("id"), b"e-2".to_vec()));
        assert_eq!(
            decode_minimal(&dialect, &headers),
            Err(EnvelopeError::Duplicate {
                attribute: "id".into()
            }),
            "{label}"
        );

        // Duplicate that differs only in case.
        let mut headers = wire_of(&dialect, &event);
        headers.push((dialect.header("TYPE").to_ascii_uppercase(), b"other".to_vec()));
        assert_eq!(
            decode_minimal(&dialect, &headers),
            Err(EnvelopeError::Duplicate {
                attribute: "type".into()
            }),
            "{label}"
        );

        // Duplicate extension.
        let mut headers = wire_of(&dialect, &event);
        headers.push((dialect.header("tenant"), b"a".to_vec()));
        headers.push((dialect.header("Tenant"), b"b".to_vec()));
        assert_eq!(
            decode_minimal(&dialect, &headers),
            Err(EnvelopeError::Duplicate {
                attribute: "tenant".into()
            }),
            "{label}"
        );
    }
}

#[test]
fn non_utf8_header_value_is_invalid() {
    let event = full_event();
    for (label, dialect) in DIALECTS {
        for name in [attr::ID, attr::TYPE, attr::SOURCE, attr::TIME, "traceparent"] {
            let mut headers = wire_of(&dialect, &event);
            set_header(&mut headers, &dialect.header(name), b"ok\xff\xfe");
            let result = decode_bytes(&dialect, &headers, native_for(&dialect, &event));
            assert_eq!(
                invalid_attribute(&result),
                Some(name),
                "{label}: {name} gave {result:?}"
            );
        }
    }
}

#[test]
fn non_utf8_content_type_header_is_invalid() {
    for dialect in [HeaderDialect::KAFKA, HeaderDialect::NATS, HeaderDialect::MEMORY] {
        let mut headers = wire_of(&dialect, &minimal_event());
        set_header(&mut headers, "content-type", b"application/\xc3");
        let result = decode_bytes(&dialect, &headers, NativeAttributes::default());
        assert_eq!(invalid_attribute(&result), Some("datacontenttype"), "{result:?}");
    }
}

#[test]
fn nats_percent_encoding_to_bad_utf8_is_invalid() {
    let event = minimal_event();
    for bad in ["%FF", "ok%C3", "%C3%28", "%ED%A0%80"] {
        let mut headers = wire_of(&HeaderDialect::NATS, &event);
        set_header(&mut headers, "ce-type", bad.as_bytes());
        let result = decode_minimal(&HeaderDialect::NATS, &headers);
        assert_eq!(
            invalid_attribute(&result),
            Some("type"),
            "{bad:?} gave {result:?}"
        );
    }
}

#[test]
fn percent_sequences_are_literal_outside_nats() {
    // Kafka and AMQP do not percent-decode: `%FF` is just three characters.
    for dialect in [HeaderDialect::KAFKA, HeaderDialect::AMQP, HeaderDialect::MEMORY] {
        let mut headers = wire_of(&dialect, &minimal_event());
        headers.push((dialect.header("raw"), b"%FF%20".to_vec()));
        let decoded = decode_minimal(&dialect, &headers).unwrap();
        assert_eq!(decoded.extensions["raw"], "%FF%20");
    }
}

#[test]
fn nats_decodes_percent_encoded_values() {
    let mut headers = wire_of(&HeaderDialect::NATS, &minimal_event());
    set_header(&mut headers, "ce-source", b"my%20service%E2%9C%93");
    headers.push(("ce-note".into(), b"a%0Ab%25c%22".to_vec()));
    let decoded = decode_minimal(&HeaderDialect::NATS, &headers).unwrap();
    assert_eq!(decoded.source, "my service✓");
    assert_eq!(decoded.extensions["note"], "a\nb%c\"");
}

#[test]
fn invalid_attribute_name_after_prefix_is_a_typed_error() {
    let event = minimal_event();
    let cases: [(HeaderDialect, &[&str]); 4] = [
        (
            HeaderDialect::KAFKA,
            &["ce_bad_name", "ce_", "ce_trace-parent", "ce_café", "ce_a.b"],
        ),
        (
            HeaderDialect::AMQP,
            &["cloudEvents_bad_name", "cloudEvents_", "CLOUDEVENTS_x-y"],
        ),
        (
            HeaderDialect::NATS,
            &["ce-bad_name", "ce-bad-name", "ce-", "Ce-Trace-Parent"],
        ),
        (HeaderDialect::MEMORY, &["ce-bad_name", "ce- x"]),
    ];
    for (dialect, names) in cases {
        for name in names {
            let mut headers = wire_of(&dialect, &event);
            headers.push(((*name).to_owned(), b"x".to_vec()));
            assert_eq!(
                decode_minimal(&dialect, &headers),
                Err(EnvelopeError::InvalidName {
                    name: (*name).to_owned()
                }),
                "{name}"
            );
        }
    }
    // 65 characters is one too many.
    let long = format!("ce_{}", "a".repeat(65));
    let mut headers = wire_of(&HeaderDialect::KAFKA, &event);
    headers.push((long.clone(), b"x".to_vec()));
    assert_eq!(
        decode_minimal(&HeaderDialect::KAFKA, &headers),
        Err(EnvelopeError::InvalidName { name: long })
    );
}

#[test]
fn non_utf8_kafka_key_is_invalid() {
    let headers = wire_of(&HeaderDialect::KAFKA, &minimal_event());
    let native = NativeAttributes {
        content_type: None,
        key: Some(b"order-\xff"),
    };
    let result = decode_bytes(&HeaderDialect::KAFKA, &headers, native);
    assert_eq!(invalid_attribute(&result), Some("partitionkey"), "{result:?}");
}

#[test]
fn decode_never_panics_on_garbage() {
    let mut rng = fastrand::Rng::with_seed(0xB05);
    let names = [
        "ce_id",
        "ce-id",
        "cloudEvents_id",
        "ce_specversion",
        "ce-specversion",
        "cloudEvents_specversion",
        "ce_time",
        "ce-time",
        "cloudEvents_time",
        "ce_type",
        "ce-type",
        "cloudEvents_type",
        "ce_source",
        "ce-source",
        "cloudEvents_source",
        "ce_dataversion",
        "ce-dataversion",
        "content-type",
        "CE_X",
        "ce_",
        "ce-",
        "c",
        "é",
        "ceé",
        "cloudEvents_é",
        "x",
    ];
    for _ in 0..2000 {
        let n = rng.usize(0..8);
        let headers: Vec<(String, Vec<u8>)> = (0..n)
            .map(|_| {
                let name = names[rng.usize(..names.len())].to_owned();
                let value = match rng.u8(0..4) {
                    0 => b"1.0".to_vec(),
                    1 => random_string(&mut rng, 0..6).into_bytes(),
                    2 => (0..rng.usize(0..6)).map(|_| rng.u8(..)).collect(),
                    _ => b"%FF%".to_vec(),
                };
                (name, value)
            })
            .collect();
        let key: Vec<u8> = (0..rng.usize(0..4)).map(|_| rng.u8(..)).collect();
        for (_, dialect) in DIALECTS {
            let native = NativeAttributes {
                content_type: if rng.bool() {
                    Some("application/json")
                } else {
                    None
                },
                key: if rng.bool() { Some(key.as_slice()) } else { None },
            };
            // Only the absence of a panic matters here.
            let _ = decode_bytes(&dialect, &headers, native);
        }
    }
}

// ---------------------------------------------------------------- encode validation

#[test]
fn encode_rejects_missing_required_attributes() {
    for (label, dialect) in DIALECTS {
        let mut event = full_event();
        event.source = "".into();
        assert_eq!(
            encode_headers(&event, &dialect),
            Err(EnvelopeError::Missing {
                attribute: "source".into()
            }),
            "{label}"
        );

        let mut event = full_event();
        event.id = "".into();
        assert_eq!(
            encode_headers(&event, &dialect),
            Err(EnvelopeError::Missing {
                attribute: "id".into()
            }),
            "{label}"
        );

        let mut event = full_event();
        event.event_type = "".into();
        assert_eq!(
            encode_headers(&event, &dialect),
            Err(EnvelopeError::Missing {
                attribute: "type".into()
            }),
            "{label}"
        );
    }
}

#[test]
fn encode_rejects_invalid_extension_names() {
    for (label, dialect) in DIALECTS {
        for bad in [
            "Trace-Parent",
            "traceParent",
            "trace_parent",
            "",
            "café",
            &"a".repeat(65),
        ] {
            let event = full_event().with_extension(bad, "v");
            assert_eq!(
                encode_headers(&event, &dialect),
                Err(EnvelopeError::InvalidName { name: bad.to_owned() }),
                "{label}: {bad:?}"
            );
        }
    }
}

#[test]
fn encode_rejects_reserved_extension_names() {
    for (label, dialect) in DIALECTS {
        for name in ["id", "correlationid"].into_iter().chain(attr::RESERVED) {
            let event = minimal_event().with_extension(name, "v");
            assert_eq!(
                encode_headers(&event, &dialect),
                Err(EnvelopeError::Reserved {
                    name: name.to_owned()
                }),
                "{label}: {name}"
            );
        }
    }
}

#[test]
fn validate_matches_encode() {
    assert_eq!(validate(&full_event()), Ok(()));
    assert_eq!(validate(&minimal_event()), Ok(()));
    // validate is generic over the payload.
    let typed = full_event().map_data(|_| 5u8);
    assert_eq!(validate(&typed), Ok(()));
    assert_eq!(
        validate(&typed.with_extension("causationid", "x")),
        Err(EnvelopeError::Reserved {
            name: "causationid".into()
        })
    );
    assert_eq!(
        validate(&minimal_event().map_data(|_| ()).with_source("")),
        Err(EnvelopeError::Missing {
            attribute: "source".into()
        })
    );
}

// ---------------------------------------------------------------- property-style

fn random_char(rng: &mut fastrand::Rng) -> char {
    match rng.u8(0..10) {
        0 => rng.char('\u{0}'..='\u{1f}'),
        1 => rng
            .choice([' ', '"', '%', '\n', '\r', '\t', '+', '=', ';', ',', '\u{7f}'])
            .unwrap(),
        2 | 3 => rng.char('\u{20}'..='\u{7e}'),
        4 => rng.char('\u{80}'..='\u{7ff}'),
        5 => rng.char('\u{800}'..='\u{d7ff}'),
        6 => rng.char('\u{e000}'..='\u{fffd}'),
        7 => rng.char('\u{10000}'..='\u{10ffff}'),
        8 => rng
            .choice(['é', '✓', '😀', '\u{feff}', '\u{200b}', 'ß', '中'])
            .unwrap(),
        _ => rng.alphanumeric(),
    }
}

fn random_string(rng: &mut fastrand::Rng, len: std::ops::Range<usize>) -> String {
    let n = rng.usize(len);
    (0..n).map(|_| random_char(rng)).collect()
}

fn random_name(rng: &mut fastrand::Rng) -> String {
    loop {
        let n = rng.usize(1..=64);
        let name: String = (0..n)
            .map(|_| {
                if rng.u8(0..4) == 0 {
                    rng.digit(10)
                } else {
                    rng.lowercase()
                }
            })
            .collect();
        if !attr::RESERVED.contains(&name.as_str()) {
            return name;
        }
    }
}

fn random_time(rng: &mut fastrand::Rng) -> DateTime<Utc> {
    // 0001-01-01 ..= 9999-12-31, the range RFC 3339 can express.
    let secs = rng.i64(-62_135_596_800..=253_402_300_799);
    let nanos = match rng.u8(0..4) {
        0 => 0,
        1 => rng.u32(0..1000) * 1_000_000,
        2 => rng.u32(0..1_000_000) * 1000,
        _ => rng.u32(0..1_000_000_000),
    };
    DateTime::from_timestamp(secs, nanos).unwrap()
}

/// A source as the envelope allows it: a URI-reference, with escapes.
fn random_uri_reference(rng: &mut fastrand::Rng) -> String {
    const CHARS: &[u8] = b"abcXYZ019-._~:/?#[]@!$&'()*+,;=";
    (0..rng.usize(1..30))
        .map(|_| match rng.u8(0..8) {
            0 => format!("%{:02X}", rng.u8(..)),
            _ => (CHARS[rng.usize(..CHARS.len())] as char).to_string(),
        })
        .collect()
}

fn random_event(rng: &mut fastrand::Rng) -> RawEvent {
    let mut extensions = BTreeMap::new();
    for _ in 0..rng.usize(0..6) {
        extensions.insert(random_name(rng), random_string(rng, 0..40));
    }
    if rng.bool() {
        extensions.insert("traceparent".into(), random_string(rng, 0..60));
    }
    let id = random_string(rng, 1..40);
    DomainEvent {
        correlation_id: if rng.bool() {
            id.as_str().into()
        } else {
            random_string(rng, 1..40).into()
        },
        id: id.into(),
        event_type: random_string(rng, 1..30).into(),
        version: rng.u32(..),
        source: random_uri_reference(rng).into(),
        time: random_time(rng),
        causation_id: rng.bool().then(|| random_string(rng, 1..40).into()),
        key: rng.bool().then(|| random_string(rng, 0..40).into()),
        extensions,
        data: Payload {
            content_type: random_string(rng, 1..30).into(),
            bytes: (0..rng.usize(0..64))
                .map(|_| rng.u8(..))
                .collect::<Vec<u8>>()
                .into(),
        },
    }
}

#[test]
fn random_events_round_trip_in_every_dialect() {
    let mut rng = fastrand::Rng::with_seed(0x05ee_db05);
    for i in 0..200 {
        let event = random_event(&mut rng);
        for (label, dialect) in DIALECTS {
            let headers = encode_headers(&event, &dialect)
                .unwrap_or_else(|e| panic!("#{i} {label}: encode failed: {e}\n{event:#?}"));
            if dialect.percent_encode {
                for (name, value) in &headers {
                    if name.starts_with(dialect.prefix) {
                        assert!(
                            value.bytes().all(|b| b.is_ascii_graphic() && b != b'"'),
                            "#{i} {label}: {name} = {value:?}"
                        );
                    }
                }
            }
            let decoded = decode_strs(
                &dialect,
                &headers,
                native_for(&dialect, &event),
                event.data.bytes.clone(),
            )
            .unwrap_or_else(|e| panic!("#{i} {label}: decode failed: {e}\n{event:#?}\n{headers:#?}"));
            assert_eq!(decoded, event, "#{i} {label}");
        }
    }
}

#[test]
fn the_constant_header_names_are_the_dialects_own() {
    // The written names are the decoder's known attributes in its order,
    // less the content type, which travels under its own header.
    for (label, dialect) in DIALECTS {
        let names = known_names(dialect.prefix).expect("a built-in dialect has constant names");
        for (name, attribute) in names.iter().zip(&KNOWN[..9]) {
            assert_eq!(*name, dialect.header(attribute), "{label}");
        }
    }
    // A dialect of someone else's builds its names, and writes the same
    // headers a built-in one with that prefix would.
    let custom = HeaderDialect {
        prefix: "x-ce-",
        ..HeaderDialect::KAFKA
    };
    assert!(known_names(custom.prefix).is_none());
    let headers = encode_headers(&full_event(), &custom).unwrap();
    assert!(headers
        .iter()
        .any(|(k, v)| k == "x-ce-id" && *v == full_event().id));
    assert!(headers.iter().any(|(k, _)| k == "x-ce-tenant"));
}

#[test]
fn every_known_attribute_has_its_own_slot() {
    for (i, name) in KNOWN.iter().enumerate() {
        assert_eq!(known_slot(name.as_bytes()), Some(i), "{name}");
    }
    assert_eq!(known_slot(b"tenant"), None);
    assert_eq!(known_slot(b"ID"), None, "names are lower-cased before the lookup");
}

#[test]
fn ids_read_back_exactly_as_a_producer_wrote_them() {
    // busline keeps a UUID's canonical text inline and any other id as text;
    // either way the id is the producer's bytes, and it travels on as them.
    for written in [
        "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", // canonical: held inline
        "0190A1B2-C3D4-7E5F-8A9B-0C1D2E3F4A5B", // upper case: held as text
        "{0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b}",
        "order-17/attempt 2",
    ] {
        for (label, dialect) in DIALECTS {
            let event = minimal_event()
                .with_id(written)
                .with_causation_id(written)
                .with_correlation_id(written);
            let read = round_trip(&dialect, &event);
            assert_eq!(read.id.as_str(), written, "{label}");
            assert_eq!(read.correlation_id, written, "{label}");
            assert_eq!(read.causation_id.as_deref(), Some(written), "{label}");
            assert_eq!(
                read.id.as_uuid().is_some(),
                written.starts_with("0190a1b2"),
                "{label}: only the canonical text is read as a UUID"
            );
        }
    }
}

#[test]
fn the_fast_time_reader_reads_what_chrono_reads() {
    let chrono_reads = |text: &str| {
        DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    };
    let mut rng = fastrand::Rng::with_seed(11);
    let mut texts: Vec<String> = (0..3_000)
        .map(|_| TimeText::of(&random_time(&mut rng)).as_str().to_owned())
        .collect();
    // The shape with any digits: impossible dates and times, every
    // fraction length, and near misses of the shape.
    for _ in 0..20_000 {
        let digits = |rng: &mut fastrand::Rng, n: usize| -> String {
            (0..n).map(|_| char::from(b'0' + rng.u8(0..10))).collect()
        };
        let fraction = match rng.u8(0..12) {
            0 => String::new(),
            n => format!(".{}", digits(&mut rng, n as usize)),
        };
        let mut text = format!(
            "{}-{}-{}T{}:{}:{}{fraction}Z",
            digits(&mut rng, 4),
            digits(&mut rng, 2),
            digits(&mut rng, 2),
            digits(&mut rng, 2),
            digits(&mut rng, 2),
            digits(&mut rng, 2),
        );
        if rng.u8(0..8) == 0 {
            let at = rng.usize(..text.len());
            let swap = [b'-', b':', b'T', b't', b'z', b' ', b'+', b'.', b'x', b'9'][rng.usize(..10)];
            // The text is ASCII: any index is a character boundary.
            text.replace_range(at..at + 1, std::str::from_utf8(&[swap]).unwrap());
        }
        texts.push(text);
    }
    for edge in [
        "2024-02-29T23:59:59.999999999Z",
        "2023-02-29T00:00:00Z",
        "2016-12-31T23:59:60Z",
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "2024-01-02T03:04:05z",
        "2024-01-02t03:04:05Z",
        "2024-01-02T03:04:05.Z",
        "2024-01-02T03:04:05.1234567891Z",
        "2024-01-02T24:00:00Z",
    ] {
        texts.push(edge.to_owned());
    }
    let mut fast = 0;
    for text in &texts {
        if let Some(time) = parse_utc_time(text) {
            fast += 1;
            assert_eq!(Some(time), chrono_reads(text), "{text}");
        }
        assert_eq!(
            parse_time(text).ok(),
            chrono_reads(text).filter(|t| check_time(t).is_ok()),
            "{text}"
        );
    }
    assert!(fast > 3_000, "the fast path read the canonical texts ({fast})");
}
