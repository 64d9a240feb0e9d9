//! CloudEvents 1.0 structured content mode, JSON event format: the whole
//! envelope in the body as one JSON object (`application/cloudevents+json`).
//!
//! busline writes binary mode by default; many producers (the CloudEvents
//! SDKs, HTTP bridges) write structured mode, so every backend reads it. The
//! rules follow the JSON event format 1.0: `data` holds JSON (or a string for
//! other content types), `data_base64` holds bytes, extension values are
//! strings, numbers or booleans, `null` means absent.

use std::collections::BTreeMap;

use base64::Engine;
use bytes::Bytes;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use smol_str::SmolStr;

use super::{attr, is_valid_attribute_name, read_attributes, SPEC_VERSION};
use crate::{EnvelopeError, Payload, RawEvent};

/// The media type of a structured-mode event in the JSON format.
pub const STRUCTURED_JSON: &str = "application/cloudevents+json";

/// Whether a content type announces a structured-mode JSON event
/// (`application/cloudevents+json`, parameters and case ignored).
pub fn is_structured(content_type: &str) -> bool {
    // Asked of every event published and received; most content types are
    // shorter than this one and need no split.
    if content_type.len() < STRUCTURED_JSON.len() {
        return false;
    }
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case(STRUCTURED_JSON)
}

/// Whether a media type's data is JSON and so travels as JSON in `data`.
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// The members of a JSON object in order, with duplicates kept so that they
/// can be refused (serde_json's own map keeps the last one silently).
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, &'a RawValue>()? {
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        deserializer.deserialize_map(V(std::marker::PhantomData))
    }
}

/// A scalar member as the string the envelope keeps; `None` for `null`.
fn scalar(name: &str, raw: &RawValue) -> Result<Option<String>, EnvelopeError> {
    let value: serde_json::Value = serde_json::from_str(raw.get())
        .map_err(|e| EnvelopeError::invalid(name, format!("unreadable JSON value: {e}")))?;
    match value {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => Ok(Some(s)),
        serde_json::Value::Bool(b) => Ok(Some(b.to_string())),
        serde_json::Value::Number(n) => Ok(Some(n.to_string())),
        _ => Err(EnvelopeError::invalid(
            name,
            "must be a string, number or boolean in the JSON event format",
        )),
    }
}

/// Reads a structured-mode JSON event from a message body. `native_key` is
/// the broker's own key (the Kafka record key), which wins over a
/// `partitionkey` member as in binary mode.
///
/// ```
/// use busline_core::wire::decode_structured;
/// let body = br#"{"specversion":"1.0","id":"e-1","type":"order.created","source":"/shop",
///     "time":"2024-05-06T07:08:09Z","tenant":"acme","data":{"order_id":"o-1"}}"#;
/// let event = decode_structured(body, None).unwrap();
/// assert_eq!(event.event_type, "order.created");
/// assert_eq!(event.extensions["tenant"], "acme");
/// assert_eq!(&event.data.bytes[..], br#"{"order_id":"o-1"}"#);
/// assert_eq!(event.data.content_type, "application/json");
/// ```
pub fn decode_structured(body: &[u8], native_key: Option<&[u8]>) -> Result<RawEvent, EnvelopeError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| EnvelopeError::invalid("data", "structured-mode body is not UTF-8 JSON"))?;
    let Members(members) = serde_json::from_str(text).map_err(|e| {
        EnvelopeError::invalid("data", format!("structured-mode body is not a JSON object: {e}"))
    })?;

    let mut attrs: BTreeMap<String, String> = BTreeMap::new();
    let mut data: Option<&RawValue> = None;
    let mut data_base64: Option<&RawValue> = None;
    let mut seen = std::collections::HashSet::with_capacity(members.len());
    for (name, raw) in members {
        if !seen.insert(name.clone()) {
            return Err(EnvelopeError::Duplicate { attribute: name });
        }
        match name.as_str() {
            "data" => data = Some(raw),
            "data_base64" => data_base64 = Some(raw),
            _ => {
                if !is_valid_attribute_name(&name) {
                    return Err(EnvelopeError::InvalidName { name });
                }
                if let Some(value) = scalar(&name, raw)? {
                    attrs.insert(name, value);
                }
            }
        }
    }
    let mut a = read_attributes(|name| attrs.remove(name), native_key)?;
    let declared = a.content_type.take();
    if let Some(name) = attrs.keys().find(|k| attr::RESERVED.contains(&k.as_str())) {
        return Err(EnvelopeError::Reserved { name: name.clone() });
    }

    let (content_type, bytes) = match (data, data_base64) {
        (Some(_), Some(_)) => {
            return Err(EnvelopeError::invalid(
                "data",
                "both `data` and `data_base64` are present",
            ));
        }
        (None, Some(b64)) => {
            let text = scalar("data_base64", b64)?.unwrap_or_default();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|e| EnvelopeError::invalid("data_base64", format!("not base64: {e}")))?;
            (
                declared.unwrap_or_else(|| SmolStr::new_static("application/octet-stream")),
                Bytes::from(bytes),
            )
        }
        (Some(raw), None) => {
            let content_type =
                declared.unwrap_or_else(|| SmolStr::new_static(busline_codecs::JSON_CONTENT_TYPE));
            if is_json(&content_type) {
                (content_type, Bytes::copy_from_slice(raw.get().as_bytes()))
            } else {
                // Other media types travel as a JSON string of their text.
                match serde_json::from_str::<String>(raw.get()) {
                    Ok(s) => (content_type, Bytes::from(s.into_bytes())),
                    Err(_) => {
                        return Err(EnvelopeError::invalid(
                            "data",
                            format!("`data` of non-JSON content type `{content_type}` must be a string"),
                        ));
                    }
                }
            }
        }
        (None, None) => (
            declared.unwrap_or_else(|| SmolStr::new_static(busline_codecs::JSON_CONTENT_TYPE)),
            Bytes::new(),
        ),
    };
    if content_type.is_empty() {
        return Err(EnvelopeError::Missing {
            attribute: attr::DATACONTENTTYPE.into(),
        });
    }
    Ok(a.into_event(attrs, Payload { content_type, bytes }))
}

/// Writes `event` as a structured-mode JSON event (the body of a message
/// whose content type is [`STRUCTURED_JSON`]): JSON payloads inline as
/// `data`, anything else as `data_base64`. Validates the envelope first.
pub fn encode_structured(event: &RawEvent) -> Result<Bytes, EnvelopeError> {
    super::validate(event)?;
    let mut object = serde_json::Map::new();
    let mut put = |name: &str, value: serde_json::Value| {
        object.insert(name.to_owned(), value);
    };
    put(attr::SPECVERSION, SPEC_VERSION.into());
    put(attr::ID, event.id.as_str().into());
    put(attr::TYPE, event.event_type.as_str().into());
    put(attr::SOURCE, event.source.as_str().into());
    put(attr::TIME, super::format_time(&event.time).into());
    put(attr::DATAVERSION, event.version.to_string().into());
    put(attr::CORRELATIONID, event.correlation_id.as_str().into());
    if let Some(c) = &event.causation_id {
        put(attr::CAUSATIONID, c.as_str().into());
    }
    if let Some(k) = &event.key {
        put(attr::PARTITIONKEY, k.as_str().into());
    }
    for (name, value) in &event.extensions {
        put(name, value.clone().into());
    }
    put(attr::DATACONTENTTYPE, event.data.content_type.as_str().into());
    // JSON data goes in as written (its bytes are what the handler's codec
    // reads), so it is spliced in rather than re-serialized.
    let inline = is_json(&event.data.content_type)
        && serde_json::from_slice::<serde::de::IgnoredAny>(&event.data.bytes).is_ok();
    if !inline {
        put(
            "data_base64",
            base64::engine::general_purpose::STANDARD
                .encode(&event.data.bytes)
                .into(),
        );
    }
    let mut out = serde_json::to_vec(&object)
        .map_err(|e| EnvelopeError::invalid("data", format!("cannot write structured event: {e}")))?;
    if inline {
        out.pop(); // the closing brace
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(&event.data.bytes);
        out.push(b'}');
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode_headers, HeaderDialect, NativeAttributes};

    const EVENT: &str = r#"{"specversion":"1.0","id":"e-1","type":"order.created","source":"https://shop.example/orders",
        "time":"2024-05-06T07:08:09.5Z","dataversion":2,"partitionkey":"o-1","traceparent":"00-ab-cd-01",
        "vip":true,"subject":null,"datacontenttype":"application/json","data":{"order_id":"o-1","n":[1,2]}}"#;

    #[test]
    fn reads_every_attribute_and_keeps_json_data_as_written() {
        let e = decode_structured(EVENT.as_bytes(), None).unwrap();
        assert_eq!((e.id.as_str(), e.version), ("e-1", 2));
        assert_eq!(e.source, "https://shop.example/orders");
        assert_eq!(e.key.as_deref(), Some("o-1"));
        assert_eq!(e.correlation_id, "e-1", "a foreign event starts its own chain");
        assert_eq!(e.extensions["traceparent"], "00-ab-cd-01");
        assert_eq!(e.extensions["vip"], "true");
        assert!(!e.extensions.contains_key("subject"), "null means absent");
        assert_eq!(&e.data.bytes[..], br#"{"order_id":"o-1","n":[1,2]}"#);
    }

    #[test]
    fn the_native_key_wins_over_partitionkey() {
        let e = decode_structured(EVENT.as_bytes(), Some(b"k-9")).unwrap();
        assert_eq!(e.key.as_deref(), Some("k-9"));
    }

    #[test]
    fn decode_headers_reads_the_body_when_the_content_type_says_structured() {
        for dialect in [HeaderDialect::KAFKA, HeaderDialect::NATS, HeaderDialect::MEMORY] {
            let headers = [(
                "content-type",
                &b"application/cloudevents+json; charset=utf-8"[..],
            )];
            let e =
                decode_headers(&dialect, headers, NativeAttributes::default(), Bytes::from(EVENT)).unwrap();
            assert_eq!(e.event_type, "order.created");
        }
        let native = NativeAttributes {
            content_type: Some("Application/CloudEvents+JSON"),
            key: None,
        };
        let none: [(&str, &[u8]); 0] = [];
        let e = decode_headers(&HeaderDialect::AMQP, none, native, Bytes::from(EVENT)).unwrap();
        assert_eq!(e.id, "e-1");
    }

    #[test]
    fn base64_and_string_data() {
        let b64 = r#"{"specversion":"1.0","id":"b","type":"t","source":"s","time":"2024-01-01T00:00:00Z",
            "datacontenttype":"application/x-protobuf","data_base64":"CAM="}"#;
        let e = decode_structured(b64.as_bytes(), None).unwrap();
        assert_eq!(
            (&e.data.bytes[..], e.data.content_type.as_str()),
            (&[8u8, 3][..], "application/x-protobuf")
        );
        let text = r#"{"specversion":"1.0","id":"x","type":"t","source":"s","time":"2024-01-01T00:00:00Z",
            "datacontenttype":"text/plain","data":"hello"}"#;
        assert_eq!(
            &decode_structured(text.as_bytes(), None).unwrap().data.bytes[..],
            b"hello"
        );
    }

    #[test]
    fn malformed_structured_events_have_a_clear_reason() {
        let base = r#""specversion":"1.0","id":"e","type":"t","source":"s","time":"2024-01-01T00:00:00Z""#;
        let cases: [(&str, &str); 10] = [
            ("not json", "not a JSON object"),
            ("[1,2]", "not a JSON object"),
            (
                r#"{"id":"e","type":"t","source":"s","time":"2024-01-01T00:00:00Z"}"#,
                "`specversion` is missing",
            ),
            (&format!(r#"{{{base},"specversion":"1.0"}}"#), "more than once"),
            (
                r#"{"specversion":"0.3","id":"e","type":"t","source":"s","time":"2024-01-01T00:00:00Z"}"#,
                "0.3",
            ),
            (&format!(r#"{{{base},"data":1,"data_base64":"AA=="}}"#), "both"),
            (&format!(r#"{{{base},"data_base64":"%%%"}}"#), "not base64"),
            (&format!(r#"{{{base},"Bad-Name":"x"}}"#), "Bad-Name"),
            (
                &format!(r#"{{{base},"tenant":{{"nested":1}}}}"#),
                "string, number or boolean",
            ),
            (
                &format!(r#"{{{base},"datacontenttype":"text/plain","data":{{"a":1}}}}"#),
                "must be a string",
            ),
        ];
        for (body, want) in cases {
            let err = decode_structured(body.as_bytes(), None).unwrap_err().to_string();
            assert!(err.contains(want), "{body}: {err}");
        }
        let err = decode_structured(b"\xff\xfe{}", None).unwrap_err().to_string();
        assert!(err.contains("not UTF-8"), "{err}");
    }

    #[test]
    fn deep_nesting_reads_without_recursion() {
        // The envelope reader skips over `data` without recursing; the
        // handler's codec then meets the depth bound (see the codecs' tests).
        let depth = 100_000;
        let data = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let body = format!(
            r#"{{"specversion":"1.0","id":"e","type":"t","source":"s","time":"2024-01-01T00:00:00Z","data":{data}}}"#
        );
        let event = decode_structured(body.as_bytes(), None).unwrap();
        assert_eq!(event.data.bytes.len(), data.len());
    }

    #[test]
    fn a_structured_carrier_travels_with_only_its_content_type() {
        let e = decode_structured(EVENT.as_bytes(), None).unwrap();
        let carrier = e.clone().map_data(|_| Payload {
            content_type: STRUCTURED_JSON.into(),
            bytes: encode_structured(&e).unwrap(),
        });
        for dialect in [
            HeaderDialect::KAFKA,
            HeaderDialect::AMQP,
            HeaderDialect::NATS,
            HeaderDialect::MEMORY,
        ] {
            let headers = crate::wire::encode_headers(&carrier, &dialect).unwrap();
            let want: Vec<(String, String)> = dialect
                .content_type_header
                .map(|h| (h.to_owned(), STRUCTURED_JSON.to_owned()))
                .into_iter()
                .collect();
            assert_eq!(headers, want, "{dialect:?}");
            let native = NativeAttributes {
                content_type: dialect.content_type_header.is_none().then_some(STRUCTURED_JSON),
                key: None,
            };
            let back = decode_headers(
                &dialect,
                headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())),
                native,
                carrier.data.bytes.clone(),
            )
            .unwrap();
            assert_eq!(back, e);
        }
    }

    #[test]
    fn round_trips_through_encode_structured() {
        let e = decode_structured(EVENT.as_bytes(), None).unwrap();
        let back = decode_structured(&encode_structured(&e).unwrap(), None).unwrap();
        assert_eq!(back, e);
        let mut binary = e.clone();
        binary.data = Payload {
            content_type: "application/msgpack".into(),
            bytes: Bytes::from_static(b"\x81\xa1a\x01\xff"),
        };
        let back = decode_structured(&encode_structured(&binary).unwrap(), None).unwrap();
        assert_eq!(back, binary);
    }
}
