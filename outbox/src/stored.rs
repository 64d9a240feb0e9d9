//! An envelope as an outbox row holds it: CloudEvents headers in the
//! memory bus's dialect (`ce-` names, values as they are) and the payload
//! bytes, read back by the decoder every backend shares.

use busline_core::wire::{decode_headers, encode_headers, HeaderDialect, NativeAttributes};
use busline_core::{EnvelopeError, RawEvent};
use bytes::Bytes;
use serde_json::Value;

const DIALECT: HeaderDialect = HeaderDialect::MEMORY;

/// The headers of `event` as a JSON array of `[name, value]` pairs.
pub(crate) fn headers_of(event: &RawEvent) -> Result<Value, EnvelopeError> {
    let headers = encode_headers(event, &DIALECT)?;
    Ok(Value::Array(
        headers
            .into_iter()
            .map(|(n, v)| Value::Array(vec![Value::String(n), Value::String(v)]))
            .collect(),
    ))
}

/// The envelope of a row; an error names what is wrong with a row that
/// something other than [`Outbox`](crate::Outbox) wrote.
pub(crate) fn event_of(headers: &Value, body: Vec<u8>) -> Result<RawEvent, String> {
    let Value::Array(pairs) = headers else {
        return Err("the headers column is not a JSON array".into());
    };
    let mut list: Vec<(&str, &str)> = Vec::with_capacity(pairs.len());
    for pair in pairs {
        match pair.as_array().map(Vec::as_slice) {
            Some([Value::String(n), Value::String(v)]) => list.push((n, v)),
            _ => return Err(format!("a header is not a [name, value] pair of strings: {pair}")),
        }
    }
    decode_headers(
        &DIALECT,
        list.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
        NativeAttributes::default(),
        Bytes::from(body),
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use busline_core::{DomainEvent, Event, Payload};

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Stored;
    impl Event for Stored {
        const TYPE: &'static str = "test.stored";
        const VERSION: u32 = 3;
    }

    #[test]
    fn an_envelope_comes_back_as_it_went_in() {
        let event = DomainEvent::new(Stored)
            .with_source("orders")
            .with_key("k-1")
            .with_causation_id("c-1")
            .with_extension("tenant", "a b\"c%")
            .map_data(|_| Payload::json(Bytes::from_static(b"{\"x\":[1,2]}\xff")));
        let headers = headers_of(&event).unwrap();
        let back = event_of(&headers, event.data.bytes.to_vec()).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn rows_written_by_others_are_typed_errors() {
        for headers in [
            serde_json::json!({"ce-id": "1"}),
            serde_json::json!([["ce-id"]]),
            serde_json::json!([["ce-id", 1]]),
            serde_json::json!([["ce-id", "1"]]),
        ] {
            assert!(event_of(&headers, Vec::new()).is_err(), "{headers}");
        }
    }
}
