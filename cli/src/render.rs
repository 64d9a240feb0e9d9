//! How events look on the terminal and as JSON lines.

use base64::Engine;
use busline_core::wire::HeaderDialect;
use busline_core::{EnvelopeError, RawEvent, ReceivedMessage};
use serde_json::{json, Map, Value};

/// The whole envelope as one JSON object; a JSON payload as JSON, any
/// other as base64 with its content type.
pub(crate) fn event_json(event: &RawEvent) -> Value {
    json!({
        "id": event.id.as_str(),
        "type": event.event_type.as_str(),
        "version": event.version,
        "source": event.source.as_str(),
        "time": event.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "correlation_id": event.correlation_id.as_str(),
        "causation_id": event.causation_id.as_ref().map(|c| c.as_str()),
        "key": event.key.as_deref(),
        "extensions": event.extensions.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<Map<_, _>>(),
        "content_type": event.content_type(),
        "data": data_json(event),
    })
}

fn data_json(event: &RawEvent) -> Value {
    let bytes = &event.data.bytes;
    if is_json(event.content_type()) {
        if let Ok(value) = serde_json::from_slice::<Value>(bytes) {
            return value;
        }
    }
    json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) })
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence == "application/json" || essence.ends_with("+json")
}

/// The payload on one line: JSON compact, other payloads by size.
pub(crate) fn data_line(event: &RawEvent) -> String {
    match data_json(event) {
        Value::Object(map)
            if map.len() == 1 && map.contains_key("base64") && !is_json(event.content_type()) =>
        {
            format!("<{} bytes of {}>", event.data.bytes.len(), event.content_type())
        }
        value => value.to_string(),
    }
}

/// Two lines per event for a person reading along.
pub(crate) fn event_pretty(topic: &str, event: &RawEvent) -> String {
    let mut head = format!(
        "{}  {topic}  {} v{}  id {}",
        event.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        event.event_type,
        event.version,
        event.id
    );
    if let Some(key) = &event.key {
        head.push_str(&format!("  key {key}"));
    }
    let mut meta = format!("  source {}  correlation {}", event.source, event.correlation_id);
    if let Some(cause) = &event.causation_id {
        meta.push_str(&format!("  caused by {cause}"));
    }
    for (name, value) in &event.extensions {
        meta.push_str(&format!("  {name}={}", cut(value, 80)));
    }
    format!("{head}\n{meta}\n  {}", data_line(event))
}

/// A message that is not a readable envelope, for both outputs, with the
/// message as received where the backend kept it.
pub(crate) fn unreadable_json(
    topic: &str,
    error: &EnvelopeError,
    received: Option<&ReceivedMessage>,
) -> Value {
    let mut out = json!({ "topic": topic, "unreadable": error.to_string() });
    if let Some(received) = received {
        out["received"] = received_json(received);
    }
    out
}

/// Bytes as text: UTF-8 where they are, `\xNN` for each byte that is not,
/// control characters escaped, so nothing a foreign producer wrote reaches
/// the terminal raw and nothing is lost.
pub(crate) fn bytes_text(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// A received message: its headers as `[name, value]` pairs in order (a
/// name may repeat), its body as UTF-8 text or base64.
pub(crate) fn received_json(received: &ReceivedMessage) -> Value {
    let headers: Vec<Value> = received
        .headers
        .iter()
        .map(|(name, value)| json!([bytes_text(name), bytes_text(value)]))
        .collect();
    let body = &received.body;
    let body = match std::str::from_utf8(body) {
        Ok(text) => json!({ "bytes": body.len(), "text": text }),
        Err(_) => {
            json!({ "bytes": body.len(), "base64": base64::engine::general_purpose::STANDARD.encode(body) })
        }
    };
    json!({ "headers": headers, "body": body })
}

/// A received message in two lines for a person: its headers, then its
/// body's size and start.
pub(crate) fn received_pretty(received: &ReceivedMessage) -> String {
    let headers: Vec<String> = received
        .headers
        .iter()
        .map(|(name, value)| format!("{}={}", bytes_text(name), cut(&bytes_text(value), 60)))
        .collect();
    format!(
        "  headers  {}\n  body     {} bytes  {}",
        if headers.is_empty() {
            "(none)".to_owned()
        } else {
            headers.join("  ")
        },
        received.body.len(),
        cut(&bytes_text(&received.body), 80)
    )
}

/// An envelope attribute's raw value in a message busline could not read,
/// under any dialect's header prefix: for naming the message to an
/// operator (its id), never for trusting it.
pub(crate) fn raw_attribute<'a>(received: &'a ReceivedMessage, attribute: &str) -> Option<&'a [u8]> {
    // The dialects' prefixes, and `cloudEvents:`, the AMQP binding's other
    // spelling (read like `cloudEvents_` by the RabbitMQ backend).
    [
        HeaderDialect::KAFKA,
        HeaderDialect::AMQP,
        HeaderDialect::NATS,
        HeaderDialect::MEMORY,
    ]
    .iter()
    .map(|d| d.prefix)
    .chain(["cloudEvents:"])
    .find_map(|prefix| received.header(&format!("{prefix}{attribute}")))
}

/// `text` cut to `max` characters, with an ellipsis when cut; newlines
/// become spaces so a table row stays one line.
pub(crate) fn cut(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        flat
    } else {
        let mut short: String = flat.chars().take(max.saturating_sub(1)).collect();
        short.push('…');
        short
    }
}

/// Rows under a header, each column as wide as its widest cell, two spaces
/// apart, no trailing blanks.
pub(crate) fn table<R: AsRef<[String]>>(header: &[&str], rows: &[R]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row.as_ref()) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let mut out = String::new();
    for row in std::iter::once(header.as_slice()).chain(rows.iter().map(|r| r.as_ref())) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use busline_core::Payload;

    #[test]
    fn json_payloads_stay_json_and_others_become_base64() {
        let event = RawEvent::of_type("t", 1, Payload::json(&b"{\"a\":1}"[..]));
        assert_eq!(event_json(&event)["data"], json!({"a": 1}));
        let binary = RawEvent::of_type("t", 1, Payload::new("application/octet-stream", &b"\xff\x00"[..]));
        assert_eq!(event_json(&binary)["data"], json!({"base64": "/wA="}));
        assert_eq!(data_line(&binary), "<2 bytes of application/octet-stream>");
    }

    #[test]
    fn foreign_bytes_are_escaped_not_lost() {
        assert_eq!(bytes_text(b"plain"), "plain");
        assert_eq!(bytes_text(b"a\xff\xfeb"), "a\\xff\\xfeb");
        assert_eq!(bytes_text("ü\u{1b}[2J".as_bytes()), "ü\\u{1b}[2J");
    }

    #[test]
    fn cut_keeps_rows_on_one_line() {
        assert_eq!(cut("a\nb", 10), "a b");
        assert_eq!(cut("abcdef", 4), "abc…");
    }
}
