//! The envelope as Kafka record headers (CloudEvents Kafka binding, binary
//! mode) through the one shared mapping of `busline_core::wire`, and the
//! headers a dead letter gains.

use busline_core::dead_letter::attr as dl;
use busline_core::wire::{decode_headers, for_each_header, HeaderDialect, NativeAttributes};
use busline_core::{DeadLetter, EnvelopeError, RawEvent};
use bytes::Bytes;
use std::ffi::{c_char, c_void, CStr};
use std::ptr;

use rdkafka::bindings as rdsys;
use rdkafka::bindings::rd_kafka_headers_t;
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Header, OwnedHeaders};
use rdkafka::types::RDKafkaRespErr;

/// The dialect of this backend: `ce_` headers, `content-type`, the key is
/// the record key.
pub(crate) const DIALECT: HeaderDialect = HeaderDialect::KAFKA;

/// The dialect records are written in: the CloudEvents Kafka binding's
/// `ce_partitionkey` too, for consumers that read the attribute rather than
/// the record key. On read the record key wins
/// (`busline_core::wire::decode_headers`).
const WRITE_DIALECT: HeaderDialect = HeaderDialect {
    key_in_headers: true,
    ..DIALECT
};

/// Record headers of `event`.
///
/// Written straight into librdkafka's list (which copies each name and
/// value once): no list of owned pairs in between, which cost two
/// allocations per header on every publish.
pub(crate) fn encode(event: &RawEvent) -> Result<OwnedHeaders, EnvelopeError> {
    // The attributes, the optional causation id and key, the content type.
    let headers = OwnedHeaders::new_with_capacity(10 + event.extensions.len());
    for_each_header(event, &WRITE_DIALECT, |name, value| {
        add_raw(&headers, name.as_bytes(), Some(value.as_bytes()));
    })?;
    Ok(headers)
}

/// A record's headers as received, kept byte for byte for dead letters:
/// names are bytes, since a foreign producer may write names that are not
/// UTF-8.
pub(crate) type RawHeaders = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Copies the headers of a received record.
///
/// Read through librdkafka's C API rather than rdkafka's `Headers`
/// iterator: rdkafka 0.39 unwraps the UTF-8 check of every header name
/// (`BorrowedHeaders::try_get`), so one foreign record with a name that is
/// not UTF-8 would panic the poller thread.
pub(crate) fn from_message(message: &BorrowedMessage<'_>) -> RawHeaders {
    let mut native: *mut rd_kafka_headers_t = ptr::null_mut();
    // SAFETY: the message pointer is valid while `message` is borrowed; the
    // headers it yields belong to the message and are only read below,
    // within that borrow.
    let err = unsafe { rdsys::rd_kafka_message_headers(message.ptr(), &mut native) };
    if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR || native.is_null() {
        // `__NOENT`: no headers. Anything else means librdkafka could not
        // parse them; without headers the record is not an envelope and is
        // dead-lettered as such.
        return Vec::new();
    }
    // SAFETY: `native` is the message's valid header list (see above).
    unsafe { read_native(native) }
}

/// Reads a native header list name by name.
///
/// # Safety
/// `native` points to a valid header list that outlives the call.
unsafe fn read_native(native: *const rd_kafka_headers_t) -> RawHeaders {
    let count = rdsys::rd_kafka_header_cnt(native);
    let mut out = Vec::with_capacity(count);
    for idx in 0..count {
        let mut name: *const c_char = ptr::null();
        let mut value: *const c_void = ptr::null();
        let mut size = 0usize;
        let err = rdsys::rd_kafka_header_get_all(native, idx, &mut name, &mut value, &mut size);
        if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            continue;
        }
        // librdkafka keeps each name NUL-terminated; it is copied as bytes,
        // never checked for UTF-8 here.
        let name = CStr::from_ptr(name).to_bytes().to_vec();
        let value = (!value.is_null()).then(|| std::slice::from_raw_parts(value.cast::<u8>(), size).to_vec());
        out.push((name, value));
    }
    out
}

/// Adds a header with a name of any bytes (rdkafka's `OwnedHeaders::insert`
/// takes `&str` names only).
fn add_raw(headers: &OwnedHeaders, name: &[u8], value: Option<&[u8]>) {
    // rdkafka 0.39 hands out the native list as `&BorrowedHeaders`, a
    // zero-sized type whose address is the native pointer
    // (`OwnedHeaders::as_borrowed`, message.rs); `native_pointer_round_trip`
    // below pins that.
    let native = native_ptr(headers);
    let (value_ptr, value_len) = match value {
        Some(v) => (v.as_ptr().cast::<c_void>(), v.len() as isize),
        None => (ptr::null(), 0),
    };
    // SAFETY: `native` is the writable list owned by `headers` (a list of
    // `OwnedHeaders` is never read-only); librdkafka copies name and value,
    // whose lengths are explicit.
    let err = unsafe {
        rdsys::rd_kafka_header_add(
            native,
            name.as_ptr().cast::<c_char>(),
            name.len() as isize,
            value_ptr.cast_mut(),
            value_len,
        )
    };
    debug_assert_eq!(err, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR);
}

fn native_ptr(headers: &OwnedHeaders) -> *mut rd_kafka_headers_t {
    std::ptr::from_ref::<BorrowedHeaders>(headers.as_borrowed())
        .cast::<rd_kafka_headers_t>()
        .cast_mut()
}

/// The headers of `headers` as bytes.
#[cfg(test)]
fn from_owned(headers: &OwnedHeaders) -> RawHeaders {
    // SAFETY: the list is owned by `headers`, borrowed for the call.
    unsafe { read_native(native_ptr(headers)) }
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
            .map(|(k, v)| (k.as_slice(), v.as_deref().unwrap_or_default())),
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
    let stale: Vec<String> = dl::ALL
        .iter()
        .chain([&dl::ORIGINAL_SIZE])
        .map(|name| DIALECT.header(name))
        .collect();
    let headers = OwnedHeaders::new_with_capacity(original.len() + dl::ALL.len());
    for (name, value) in original {
        if stale.iter().any(|s| s.as_bytes().eq_ignore_ascii_case(name)) {
            continue;
        }
        add_raw(&headers, name, value.as_deref());
    }
    let mut headers = headers;
    for (name, value) in letter.attributes() {
        headers = headers.insert(Header {
            key: &DIALECT.header(name),
            value: Some(DIALECT.encode_value(&value).as_bytes()),
        });
    }
    headers
}

/// The headers of a dead letter whose body was cut to fit (reason
/// `too_large`): those of [`dead_letter`] plus the original body size.
pub(crate) fn cut_dead_letter(original: &RawHeaders, letter: &DeadLetter, body_size: usize) -> OwnedHeaders {
    dead_letter(original, letter).insert(Header {
        key: &DIALECT.header(dl::ORIGINAL_SIZE),
        value: Some(body_size.to_string().as_bytes()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use busline_core::{DomainEvent, Payload};
    use rdkafka::message::Headers;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Unit;
    impl busline_core::Event for Unit {
        const TYPE: &'static str = "test.unit";
    }

    fn raw() -> RawEvent {
        DomainEvent::new(Unit)
            .with_key("k")
            .with_extension("tenant", "acme")
            .map_data(|_| Payload::json(Bytes::from_static(b"{}")))
    }

    fn as_raw(h: &OwnedHeaders) -> RawHeaders {
        from_owned(h)
    }

    #[test]
    fn native_pointer_round_trip() {
        let h = OwnedHeaders::new().insert(Header {
            key: "a",
            value: Some("1"),
        });
        add_raw(&h, b"\xff\xfe", Some(b"v"));
        add_raw(&h, b"n", None);
        assert_eq!(h.count(), 3, "rdkafka's own view of the list sees the raw adds");
        assert_eq!(
            as_raw(&h),
            vec![
                (b"a".to_vec(), Some(b"1".to_vec())),
                (b"\xff\xfe".to_vec(), Some(b"v".to_vec())),
                (b"n".to_vec(), None),
            ]
        );
    }

    #[test]
    fn round_trip_through_record_headers() {
        let mut e = raw();
        e.source = "svc".into();
        let h = as_raw(&encode(&e).unwrap());
        assert!(h
            .iter()
            .any(|(k, v)| k == b"ce_id" && v.as_deref() == Some(e.id.as_bytes())));
        assert!(h.iter().any(|(k, _)| k == b"content-type"));
        assert!(
            h.iter()
                .any(|(k, v)| k == b"ce_partitionkey" && v.as_deref() == Some(&b"k"[..])),
            "the key is the record key and the partitionkey attribute"
        );
        let back = decode(&h, Some(b"k"), e.data.bytes.clone()).unwrap();
        assert_eq!(back, e);
        let other = decode(&h, Some(b"record key"), e.data.bytes.clone()).unwrap();
        assert_eq!(other.key.as_deref(), Some("record key"), "the record key wins");
        let mut keyless = e.clone();
        keyless.key = None;
        let h = as_raw(&encode(&keyless).unwrap());
        assert!(
            !h.iter().any(|(k, _)| k == b"ce_partitionkey"),
            "no key, no attribute"
        );
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

    #[test]
    fn foreign_names_that_are_not_utf8_are_kept_or_refused() {
        let mut e = raw();
        e.source = "svc".into();
        let mut h = as_raw(&encode(&e).unwrap());
        h.push((b"\xff\xfe".to_vec(), Some(b"x".to_vec())));
        let read = decode(&h, Some(b"k"), e.data.bytes.clone()).unwrap();
        assert_eq!(read, e, "a foreign name outside the prefix is ignored");
        let letter = DeadLetter {
            reason: busline_core::DeadLetterReason::MalformedEnvelope,
            error: "x".into(),
            topic: "t".into(),
            group: "g".into(),
            attempts: 1,
            failed_at: chrono::Utc::now(),
        };
        let out = as_raw(&dead_letter(&h, &letter));
        assert_eq!(&out[..h.len()], &h[..], "copied byte for byte, in order");
        h.push((b"ce_\xff\xfe".to_vec(), Some(b"x".to_vec())));
        assert!(matches!(
            decode(&h, Some(b"k"), e.data.bytes.clone()),
            Err(EnvelopeError::InvalidName { .. })
        ));
    }
}
