//! The envelope as Kafka record headers (CloudEvents Kafka binding, binary
//! mode) through the one shared mapping of `busline_core::wire`, and the
//! headers a dead letter gains.

use busline_core::dead_letter::attr as dl;
use busline_core::wire::{decode_headers, encode_headers, HeaderDialect, NativeAttributes};
use busline_core::{DeadLetter, EnvelopeError, RawEvent};
use bytes::Bytes;
use rdkafka::message::{Header, Headers, OwnedHeaders};

/// The dialect of this backend: `ce_` headers, `content-type`, the key is
/// the record key.
pub(crate) const DIALECT: HeaderDialect = HeaderDialect::KAFKA;

/// Record headers of `event`.
pub(crate) fn encode(event: &RawEvent) -> Result<OwnedHeaders, EnvelopeError> {
    let pairs = encode_headers(event, &DIALECT)?;
    let mut headers = OwnedHeaders::new_with_capacity(pairs.len());
    for (name, value) in &pairs {
        headers = headers.insert(Header {
            key: name,
            value: Some(value.as_bytes()),
        });
    }
    Ok(headers)
}

/// A record's headers as received, kept byte for byte for dead letters.
pub(crate) type RawHeaders = Vec<(String, Option<Vec<u8>>)>;

/// Copies the headers of a received record.
pub(crate) fn copy(headers: Option<&impl Headers>) -> RawHeaders {
    let Some(headers) = headers else {
        return Vec::new();
    };
    headers
        .iter()
        .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
        .collect()
}

/// Reads the envelope of a record; an error makes it a poison record.
pub(crate) fn decode(
    headers: &RawHeaders,
    key: Option<&[u8]>,
    payload: Bytes,
) -> Result<RawEvent, EnvelopeError> {
    decode_headers(
        &DIALECT,
        headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref().unwrap_or_default())),
        NativeAttributes {
            content_type: None,
            key,
        },
        payload,
    )
}

/// The headers of the dead letter of a record: its own headers byte for
/// byte (minus dead-letter headers of an earlier failure), plus the letter's
/// attributes as `ce_` headers.
pub(crate) fn dead_letter(original: &RawHeaders, letter: &DeadLetter) -> OwnedHeaders {
    let stale: Vec<String> = dl::ALL.iter().map(|name| DIALECT.header(name)).collect();
    let mut headers = OwnedHeaders::new_with_capacity(original.len() + dl::ALL.len());
    for (name, value) in original {
        if stale.iter().any(|s| s.eq_ignore_ascii_case(name)) {
            continue;
        }
        headers = headers.insert(Header {
            key: name.as_str(),
            value: value.as_deref(),
        });
    }
    for (name, value) in letter.attributes() {
        headers = headers.insert(Header {
            key: &DIALECT.header(name),
            value: Some(DIALECT.encode_value(&value).as_bytes()),
        });
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use busline_core::{DomainEvent, Payload};
    use rdkafka::message::BorrowedHeaders;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Unit;
    impl busline_core::Event for Unit {
        const TYPE: &'static str = "test.unit";
    }

    fn raw() -> RawEvent {
        DomainEvent::new(Unit)
            .with_key("k")
            .with_extension("tenant", "acme")
            .map_data(|_| Payload {
                content_type: "application/json".into(),
                bytes: Bytes::from_static(b"{}"),
            })
    }

    fn as_raw(h: &OwnedHeaders) -> RawHeaders {
        copy(Some(h.as_borrowed() as &BorrowedHeaders))
    }

    #[test]
    fn round_trip_through_record_headers() {
        let mut e = raw();
        e.source = "svc".into();
        let h = as_raw(&encode(&e).unwrap());
        assert!(h
            .iter()
            .any(|(k, v)| k == "ce_id" && v.as_deref() == Some(e.id.as_bytes())));
        assert!(h.iter().any(|(k, _)| k == "content-type"));
        assert!(
            !h.iter().any(|(k, _)| k == "ce_partitionkey"),
            "the key is the record key"
        );
        let back = decode(&h, Some(b"k"), e.data.bytes.clone()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn dead_letters_keep_headers_and_gain_attributes() {
        let mut e = raw();
        e.source = "svc".into();
        let h = as_raw(&encode(&e).unwrap());
        let letter = DeadLetter {
            reason: busline_core::DeadLetterReason::Manual,
            error: "x".into(),
            topic: "t".into(),
            group: "g".into(),
            attempts: 2,
            failed_at: chrono::Utc::now(),
        };
        let once = as_raw(&dead_letter(&h, &letter));
        let twice = as_raw(&dead_letter(&once, &letter));
        assert_eq!(once, twice, "earlier dead-letter headers are replaced");
        assert!(h.iter().all(|pair| once.contains(pair)));
        let read = decode(&once, Some(b"k"), e.data.bytes.clone()).unwrap();
        assert_eq!(DeadLetter::read(&read).unwrap().attempts, 2);
    }
}
