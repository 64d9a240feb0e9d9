//! Topic and group names as NATS stream names, subject tokens and durable
//! consumer names.
//!
//! NATS forbids `.`, `*`, `>` and whitespace in stream and consumer names and
//! rejects streams whose subjects overlap, while busline topics contain dots
//! (`orders`, `orders.eu`, `orders.billing.dlq`). Every name therefore goes
//! through one injective escaping: ASCII letters, digits and `-` stay as they
//! are, every other byte (of the UTF-8 form) becomes `_` and two upper-case hex
//! digits. `_` only ever starts an escape, so two different names never
//! escape to the same text, and an escaped name is a single subject token, so
//! the subject spaces `<token>.>` of two topics never overlap.

use std::fmt::Write;

/// The escaped form of `name`: a valid stream name, consumer name and
/// subject token; `None` for the empty name.
pub fn escape(name: &str) -> Option<String> {
    if name.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(name.len() + 8);
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b as char);
        } else {
            let _ = write!(out, "_{b:02X}");
        }
    }
    Some(out)
}

/// The name `escaped` is the escape of, if it is one: `None` for text
/// [`escape`] never makes (a stream another program named).
///
/// ```
/// let name = "orders.billing.dlq";
/// assert_eq!(busline_nats::unescape(&busline_nats::escape(name).unwrap()).as_deref(), Some(name));
/// assert_eq!(busline_nats::unescape("ORDERS_zz"), None);
/// ```
pub fn unescape(escaped: &str) -> Option<String> {
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b);
            i += 1;
        } else if b == b'_' {
            let hex = escaped.get(i + 1..i + 3)?;
            // Upper case only: escape writes `_2E`, so `_2e` is not its.
            if !hex
                .bytes()
                .all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(&h))
            {
                return None;
            }
            let byte = u8::from_str_radix(hex, 16).ok()?;
            if byte.is_ascii_alphanumeric() || byte == b'-' {
                return None;
            }
            out.push(byte);
            i += 3;
        } else {
            return None;
        }
    }
    let name = String::from_utf8(out).ok()?;
    (!name.is_empty()).then_some(name)
}

/// The names one topic maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicNames {
    /// The JetStream stream holding the topic.
    pub stream: String,
    /// The first subject token of every event of the topic.
    pub token: String,
}

impl TopicNames {
    /// The names of `topic`; `None` for the empty topic.
    pub fn of(topic: &str) -> Option<Self> {
        let token = escape(topic)?;
        Some(Self {
            stream: token.clone(),
            token,
        })
    }

    /// The subjects the stream captures: `<token>.>`.
    pub fn wildcard(&self) -> String {
        format!("{}.>", self.token)
    }

    /// The subject of an event of `event_type`: `<token>.<event_type>`, each
    /// dot-separated part of the type a valid subject token.
    pub fn subject(&self, event_type: &str) -> String {
        let mut out = String::with_capacity(self.token.len() + 1 + event_type.len());
        out.push_str(&self.token);
        for part in event_type.split('.') {
            out.push('.');
            if is_plain_token(part) {
                out.push_str(part);
            } else {
                // Only routing depends on the type's tokens (the envelope
                // carries the type itself), so a lossy but valid token is fine.
                out.push_str(&escape(part).unwrap_or_else(|| "_".into()));
            }
        }
        out
    }
}

fn is_plain_token(part: &str) -> bool {
    !part.is_empty()
        && part
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>' && b != b'.')
}

/// The durable consumer name of `group`; `None` for the empty group.
pub fn consumer_name(group: &str) -> Option<String> {
    escape(group)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn valid_name(n: &str) -> bool {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }

    #[test]
    fn escaping_is_injective_on_tricky_names() {
        let names = [
            "orders",
            "orders.eu",
            "orders.billing.dlq",
            "orders-eu",
            "orders_eu",
            "orders_2Eeu",
            "orders_2eeu",
            "Orders",
            "orders eu",
            "orders*",
            "orders>",
            "ordérs",
            "a.b",
            "a_2Eb",
            "_",
            "__",
            "_5F",
        ];
        let escaped: Vec<String> = names.iter().map(|n| escape(n).unwrap()).collect();
        let distinct: HashSet<&String> = escaped.iter().collect();
        assert_eq!(distinct.len(), names.len(), "{escaped:?}");
        for e in &escaped {
            assert!(valid_name(e), "{e}");
        }
    }

    #[test]
    fn escaping_is_injective_exhaustively_on_short_names() {
        let alphabet = ['a', '.', '_', '-', '2', 'E', 'F', '5', ' '];
        let mut seen = std::collections::HashMap::new();
        let mut names = vec![String::new()];
        for _ in 0..4 {
            names = names
                .iter()
                .flat_map(|n| alphabet.iter().map(move |c| format!("{n}{c}")))
                .collect();
            for n in &names {
                let e = escape(n).unwrap();
                if let Some(other) = seen.insert(e.clone(), n.clone()) {
                    assert_eq!(&other, n, "{other:?} and {n:?} both escape to {e}");
                }
            }
        }
    }

    #[test]
    fn unescape_inverts_escape_and_refuses_foreign_names() {
        for name in [
            "orders",
            "orders.eu",
            "a_b",
            "ü.x",
            "orders.billing.dlq",
            "-",
            "_2E",
        ] {
            assert_eq!(unescape(&escape(name).unwrap()).as_deref(), Some(name), "{name}");
        }
        // Names another program gave its streams.
        for foreign in ["", "_2e", "_41", "a_", "a_4", "x y", "_FF", "KV_x"] {
            assert_eq!(unescape(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn plain_names_stay_readable() {
        assert_eq!(escape("orders-eu").unwrap(), "orders-eu");
        assert_eq!(escape("orders.eu").unwrap(), "orders_2Eeu");
        assert_eq!(escape("a_b").unwrap(), "a_5Fb");
        assert_eq!(escape(""), None);
    }

    #[test]
    fn subjects_of_prefix_sharing_topics_do_not_overlap() {
        let a = TopicNames::of("orders").unwrap();
        let b = TopicNames::of("orders.billing.dlq").unwrap();
        assert_eq!(a.wildcard(), "orders.>");
        assert_eq!(b.wildcard(), "orders_2Ebilling_2Edlq.>");
        assert!(!b.subject("x").starts_with("orders."));
        assert_eq!(a.subject("test.ping"), "orders.test.ping");
        assert_eq!(a.subject("odd type.*"), "orders.odd_20type._2A");
        assert_eq!(a.subject("a..b"), "orders.a._.b");
    }
}
