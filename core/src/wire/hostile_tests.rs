//! What a foreign producer writes that busline never would: header names
//! that are not UTF-8, times that cannot be written back, sources that are
//! not URI-references.

use bytes::Bytes;
use chrono::{TimeZone, Utc};

use super::*;

fn minimal_headers(dialect: &HeaderDialect, time: &str, source: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let h = |n: &str, v: &str| (dialect.header(n).into_bytes(), v.as_bytes().to_vec());
    let mut out = vec![
        h("specversion", "1.0"),
        h("id", "e-1"),
        h("type", "ping"),
        h("source", source),
        h("time", time),
    ];
    if let Some(ct) = dialect.content_type_header {
        out.push((ct.as_bytes().to_vec(), b"application/json".to_vec()));
    }
    out
}

fn decode(dialect: &HeaderDialect, headers: &[(Vec<u8>, Vec<u8>)]) -> Result<RawEvent, EnvelopeError> {
    let native = NativeAttributes {
        content_type: dialect
            .content_type_header
            .is_none()
            .then_some("application/json"),
        key: None,
    };
    decode_headers(
        dialect,
        headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())),
        native,
        Bytes::from_static(b"{}"),
    )
}

const DIALECTS: [HeaderDialect; 4] = [
    HeaderDialect::KAFKA,
    HeaderDialect::AMQP,
    HeaderDialect::NATS,
    HeaderDialect::MEMORY,
];

#[test]
fn a_foreign_header_name_that_is_not_utf8_is_ignored() {
    for dialect in DIALECTS {
        let mut headers = minimal_headers(&dialect, "2024-01-01T00:00:00Z", "svc");
        headers.push((vec![0xff, 0xfe], b"x".to_vec()));
        headers.push(("x-trace".into(), vec![0xff, 0x00]));
        let event = decode(&dialect, &headers).unwrap();
        assert_eq!(event.id, "e-1");
        assert!(event.extensions.is_empty());
    }
}

#[test]
fn a_prefixed_name_that_is_not_utf8_or_not_ascii_is_malformed() {
    for dialect in DIALECTS {
        for tail in [&[0xff, 0xfe][..], "tenänt".as_bytes(), b"Bad-Name"] {
            let mut headers = minimal_headers(&dialect, "2024-01-01T00:00:00Z", "svc");
            let mut name = dialect.prefix.as_bytes().to_vec();
            name.extend_from_slice(tail);
            headers.push((name, b"x".to_vec()));
            let err = decode(&dialect, &headers).unwrap_err();
            assert!(matches!(err, EnvelopeError::InvalidName { .. }), "{err}");
        }
    }
}

#[test]
fn a_time_that_cannot_be_written_back_is_refused_at_decode() {
    for dialect in DIALECTS {
        for time in ["9999-12-31T23:59:59-01:00", "0000-01-01T00:00:00+01:00"] {
            let headers = minimal_headers(&dialect, time, "svc");
            let err = decode(&dialect, &headers).unwrap_err().to_string();
            assert!(err.contains("outside 0000-9999"), "{time}: {err}");
        }
        let ok = minimal_headers(&dialect, "9999-12-31T23:59:59Z", "svc");
        decode(&dialect, &ok).unwrap();
    }
}

#[test]
fn source_must_be_a_uri_reference_at_encode() {
    for ok in [
        "svc",
        "/orders/eu",
        "https://shop.example/o?x=1#f",
        "urn:uuid:1234",
        "a%20b",
    ] {
        check_source(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for bad in ["my service", "café", "a%2", "tab\there", "{x}"] {
        assert!(check_source(bad).is_err(), "{bad}");
    }
    let mut event = raw_event();
    event.source = "my service".into();
    assert!(validate(&event).is_err(), "refused at encode too");
}

#[test]
fn a_time_out_of_range_is_refused_at_encode() {
    let mut event = raw_event();
    event.time = Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap();
    let err = validate(&event).unwrap_err().to_string();
    assert!(err.contains("outside 0000-9999"), "{err}");
}

fn raw_event() -> RawEvent {
    let headers = minimal_headers(&HeaderDialect::MEMORY, "2024-01-01T00:00:00Z", "svc");
    decode(&HeaderDialect::MEMORY, &headers).unwrap()
}
