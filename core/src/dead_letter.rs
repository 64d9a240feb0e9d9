//! Dead letters: where an event goes when it cannot be handled, and what it
//! carries there.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::wire::format_time;
use crate::RawEvent;

/// The dead-letter topic of `group` on `topic`: `<topic>.<group>.dlq`.
pub fn dead_letter_topic(topic: &str, group: &str) -> String {
    format!("{topic}.{group}.dlq")
}

/// Extension attributes a dead letter gains.
pub mod attr {
    /// Why it was dead-lettered ([`DeadLetterReason`](super::DeadLetterReason)).
    pub const REASON: &str = "deadletterreason";
    /// The error text.
    pub const ERROR: &str = "deadlettererror";
    /// The topic it came from.
    pub const TOPIC: &str = "deadlettertopic";
    /// The group that failed to handle it.
    pub const GROUP: &str = "deadlettergroup";
    /// Delivery attempts made.
    pub const ATTEMPTS: &str = "deadletterattempts";
    /// When it was dead-lettered, RFC 3339.
    pub const TIME: &str = "deadlettertime";
    /// All of them, to strip on replay.
    pub const ALL: [&str; 6] = [REASON, ERROR, TOPIC, GROUP, ATTEMPTS, TIME];
    /// On a letter with reason `too_large` only: the size in bytes of the
    /// body before it was cut to fit.
    pub const ORIGINAL_SIZE: &str = "deadletteroriginalsize";
}

/// Why an event was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeadLetterReason {
    /// Retryable failures (errors, panics, timeouts) used up the retry
    /// policy's attempts.
    MaxAttemptsExceeded,
    /// The handler returned a permanent error.
    PermanentError,
    /// The headers could not be read as an envelope.
    MalformedEnvelope,
    /// The payload could not be decoded into the handler's type.
    UndecodablePayload,
    /// No codec reads the payload's content type.
    UnknownContentType,
    /// The event's version is newer than the registered handler's, or older
    /// with no upcaster.
    UnsupportedVersion,
    /// No handler in the group takes this event type (when configured to
    /// dead-letter such events).
    UnknownEventType,
    /// Dead-lettered by the application itself.
    Manual,
    /// A dead letter that the broker would not take at full size (body or
    /// headers over its limit): the letter carries the headers, the reason
    /// and a cut body, so that the original never loops.
    TooLarge,
    /// The client library could not parse the message at all (bytes that are
    /// not UTF-8 where the protocol client insists on text); it was moved
    /// aside by a broker-level mechanism and written to the DLQ as bytes.
    UnparseableMessage,
    /// Decoding or upcasting the event panicked before any handler ran.
    Panic,
    /// The event carries no signature where the consumer requires one
    /// (busline-layers' `SignedBus`).
    Unsigned,
    /// The event's signature does not match its attributes and payload: it
    /// was altered after signing, or signed with another key of that id.
    BadSignature,
    /// The event names a signing key the consumer does not know (not yet
    /// rolled out, or retired).
    UnknownKey,
    /// The signing key is valid but may not sign this event's `source` or
    /// `type`.
    KeyNotAllowed,
}

impl DeadLetterReason {
    /// The stable name written on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::MaxAttemptsExceeded => "max_attempts_exceeded",
            Self::PermanentError => "permanent_error",
            Self::MalformedEnvelope => "malformed_envelope",
            Self::UndecodablePayload => "undecodable_payload",
            Self::UnknownContentType => "unknown_content_type",
            Self::UnsupportedVersion => "unsupported_version",
            Self::UnknownEventType => "unknown_event_type",
            Self::Manual => "manual",
            Self::TooLarge => "too_large",
            Self::UnparseableMessage => "unparseable_message",
            Self::Panic => "panic",
            Self::Unsigned => "unsigned",
            Self::BadSignature => "bad_signature",
            Self::UnknownKey => "unknown_key",
            Self::KeyNotAllowed => "key_not_allowed",
        }
    }

    const ALL: [DeadLetterReason; 15] = [
        Self::MaxAttemptsExceeded,
        Self::PermanentError,
        Self::MalformedEnvelope,
        Self::UndecodablePayload,
        Self::UnknownContentType,
        Self::UnsupportedVersion,
        Self::UnknownEventType,
        Self::Manual,
        Self::TooLarge,
        Self::UnparseableMessage,
        Self::Panic,
        Self::Unsigned,
        Self::BadSignature,
        Self::UnknownKey,
        Self::KeyNotAllowed,
    ];
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeadLetterReason {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown dead-letter reason `{s}`"))
    }
}

/// What a backend needs to dead-letter one delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Why.
    pub reason: DeadLetterReason,
    /// The error text (truncated to [`DeadLetterPolicy::max_error_len`] by the
    /// router).
    pub error: String,
    /// The topic the event came from.
    pub topic: String,
    /// The group that gave up on it.
    pub group: String,
    /// Delivery attempts made.
    pub attempts: u32,
    /// When it was given up.
    pub failed_at: DateTime<Utc>,
}

impl DeadLetter {
    /// Where it goes: `<topic>.<group>.dlq`.
    pub fn dead_letter_topic(&self) -> String {
        dead_letter_topic(&self.topic, &self.group)
    }

    /// The attributes the dead letter gains, as (name, value) extension
    /// pairs; backends that add them to raw headers prefix the names.
    pub fn attributes(&self) -> [(&'static str, String); 6] {
        [
            (attr::REASON, self.reason.as_str().to_owned()),
            (attr::ERROR, self.error.clone()),
            (attr::TOPIC, self.topic.clone()),
            (attr::GROUP, self.group.clone()),
            (attr::ATTEMPTS, self.attempts.to_string()),
            (attr::TIME, format_time(&self.failed_at)),
        ]
    }

    /// Adds the attributes to an envelope.
    pub fn stamp(&self, event: &mut RawEvent) {
        for (name, value) in self.attributes() {
            event.extensions.insert(name.to_owned(), value);
        }
    }

    /// Reads the dead-letter attributes of an event from a DLQ; `None` when
    /// it carries none (or they are unreadable).
    pub fn read(event: &RawEvent) -> Option<DeadLetter> {
        let get = |name: &str| event.extensions.get(name);
        Some(DeadLetter {
            reason: get(attr::REASON)?.parse().ok()?,
            error: get(attr::ERROR).cloned().unwrap_or_default(),
            topic: get(attr::TOPIC)?.clone(),
            group: get(attr::GROUP)?.clone(),
            attempts: get(attr::ATTEMPTS).and_then(|a| a.parse().ok()).unwrap_or(0),
            failed_at: get(attr::TIME)
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or(event.time),
        })
    }

    /// Removes the dead-letter attributes, so a replayed event looks as it
    /// did before it failed.
    pub fn strip(event: &mut RawEvent) {
        for name in attr::ALL {
            event.extensions.remove(name);
        }
    }
}

/// What the router does with an event type no handler in the group takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownEventAction {
    /// Acknowledge it and count it (the default: a topic often carries types
    /// a given group does not care about).
    #[default]
    Ack,
    /// Dead-letter it with [`DeadLetterReason::UnknownEventType`].
    DeadLetter,
}

/// How events are dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeadLetterPolicy {
    /// What to do with event types no handler takes.
    pub unknown_event: UnknownEventAction,
    /// Longest error text kept in a dead letter, in bytes; longer texts are
    /// cut at a character boundary (broker header sizes are limited).
    pub max_error_len: usize,
}

impl Default for DeadLetterPolicy {
    fn default() -> Self {
        Self {
            unknown_event: UnknownEventAction::Ack,
            max_error_len: 2048,
        }
    }
}

impl DeadLetterPolicy {
    /// Cuts `error` to at most `max_error_len` bytes, at a character boundary.
    pub fn truncate_error(&self, mut error: String) -> String {
        if error.len() > self.max_error_len {
            let mut cut = self.max_error_len;
            while !error.is_char_boundary(cut) {
                cut -= 1;
            }
            error.truncate(cut);
        }
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_by_name() {
        for r in DeadLetterReason::ALL {
            assert_eq!(r.as_str().parse::<DeadLetterReason>().unwrap(), r);
        }
        assert!("nope".parse::<DeadLetterReason>().is_err());
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        let p = DeadLetterPolicy {
            max_error_len: 5,
            ..Default::default()
        };
        assert_eq!(p.truncate_error("abcdéfg".into()), "abcd");
        assert_eq!(p.truncate_error("abc".into()), "abc");
    }

    #[test]
    fn attribute_names_are_valid_cloudevents_names() {
        for name in attr::ALL {
            assert!(crate::wire::is_valid_attribute_name(name), "{name}");
        }
    }
}
