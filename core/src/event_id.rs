//! Event ids: cheap to copy around an event's life, whatever a producer
//! chose to write.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use smol_str::SmolStr;

/// An event's id (and the correlation and causation ids, which are event
/// ids too).
///
/// CloudEvents allows any non-empty string as an id, so this cannot be a
/// `Copy` integer; it is the next best thing: a UUID in its canonical text
/// (36 lower-case characters, what busline and most SDKs write) is held
/// inline, so making, cloning and reading one never allocates; any other
/// text is held in a [`SmolStr`] (inline up to 23 bytes, shared beyond), so
/// a clone never allocates either. It reads as a `&str` wherever one is
/// expected.
///
/// ```
/// use busline_core::EventId;
/// let id = EventId::new();
/// assert_eq!(id.len(), 36);
/// assert!(id.as_uuid().is_some());
/// let foreign = EventId::from("A234-1234-1234");
/// assert_eq!(foreign, "A234-1234-1234");
/// assert_eq!(foreign.as_uuid(), None);
/// ```
#[derive(Clone)]
pub struct EventId(Repr);

#[derive(Clone)]
enum Repr {
    /// Canonical hyphenated lower-case UUID text, only `0-9a-f` and `-`.
    Uuid([u8; 36]),
    Text(SmolStr),
}

impl EventId {
    /// A fresh time-ordered id: a UUID v7.
    // No `Default`: a derived `Default` of a struct holding an id would mint
    // a random one, and there is no id that means "none".
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self::from_uuid(uuid::Uuid::now_v7())
    }

    /// The id that is this UUID's canonical text.
    pub fn from_uuid(uuid: uuid::Uuid) -> Self {
        let mut text = [0u8; 36];
        uuid.hyphenated().encode_lower(&mut text);
        Self(Repr::Uuid(text))
    }

    /// The id as text, exactly as it travels.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // SAFETY: `Repr::Uuid` is only made from `encode_lower`'s output
            // or from bytes `is_canonical_uuid` accepted: ASCII hex digits
            // and hyphens, so valid UTF-8. (Checking it again on every read
            // was a fifth of the cost of an event's id on the memory bus.)
            Repr::Uuid(text) => unsafe { std::str::from_utf8_unchecked(text) },
            Repr::Text(text) => text,
        }
    }

    /// The UUID this id is the canonical text of, if it is one.
    pub fn as_uuid(&self) -> Option<uuid::Uuid> {
        match &self.0 {
            Repr::Uuid(_) => uuid::Uuid::try_parse(self.as_str()).ok(),
            Repr::Text(_) => None,
        }
    }

    fn parse(text: &str) -> Self {
        match canonical_uuid(text) {
            Some(bytes) => Self(Repr::Uuid(bytes)),
            None => Self(Repr::Text(SmolStr::new(text))),
        }
    }
}

/// `text`'s bytes if it is a canonical UUID, the only text held inline.
fn canonical_uuid(text: &str) -> Option<[u8; 36]> {
    <&[u8; 36]>::try_from(text.as_bytes())
        .ok()
        .filter(|bytes| is_canonical_uuid(bytes))
        .copied()
}

/// Whether `text` is a UUID as `Uuid::hyphenated().encode_lower` writes it;
/// only such text is held inline, so that every id reads back exactly as it
/// was written (an upper-case UUID keeps its case).
fn is_canonical_uuid(text: &[u8; 36]) -> bool {
    // Each byte's class against the class its place wants: one table
    // look-up a byte (a per-place `match` cost several hundred
    // instructions an id).
    const HEX: u8 = 1;
    const HYPHEN: u8 = 2;
    const CLASS: [u8; 256] = {
        let mut class = [0u8; 256];
        let mut b = 0;
        while b < 256 {
            class[b] = match b as u8 {
                b'0'..=b'9' | b'a'..=b'f' => HEX,
                b'-' => HYPHEN,
                _ => 0,
            };
            b += 1;
        }
        class
    };
    const WANT: [u8; 36] = {
        let mut want = [HEX; 36];
        want[8] = HYPHEN;
        want[13] = HYPHEN;
        want[18] = HYPHEN;
        want[23] = HYPHEN;
        want
    };
    text.iter().zip(WANT).all(|(b, want)| CLASS[*b as usize] == want)
}

impl Deref for EventId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for EventId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for EventId {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq for EventId {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for EventId {}

impl PartialOrd for EventId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for EventId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl std::hash::Hash for EventId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

macro_rules! eq_text {
    ($($t:ty),*) => {$(
        impl PartialEq<$t> for EventId {
            fn eq(&self, other: &$t) -> bool {
                self.as_str() == AsRef::<str>::as_ref(other)
            }
        }
        impl PartialEq<EventId> for $t {
            fn eq(&self, other: &EventId) -> bool {
                AsRef::<str>::as_ref(self) == other.as_str()
            }
        }
    )*};
}
eq_text!(str, &str, String, &String, SmolStr);

impl From<&str> for EventId {
    fn from(text: &str) -> Self {
        Self::parse(text)
    }
}

impl From<&String> for EventId {
    fn from(text: &String) -> Self {
        Self::parse(text)
    }
}

impl From<String> for EventId {
    fn from(text: String) -> Self {
        Self::parse(&text)
    }
}

impl From<&EventId> for EventId {
    fn from(id: &EventId) -> Self {
        id.clone()
    }
}

impl From<SmolStr> for EventId {
    fn from(text: SmolStr) -> Self {
        match canonical_uuid(&text) {
            Some(bytes) => Self(Repr::Uuid(bytes)),
            None => Self(Repr::Text(text)),
        }
    }
}

impl From<uuid::Uuid> for EventId {
    fn from(uuid: uuid::Uuid) -> Self {
        Self::from_uuid(uuid)
    }
}

impl From<EventId> for String {
    fn from(id: EventId) -> Self {
        id.as_str().to_owned()
    }
}

impl std::str::FromStr for EventId {
    type Err = std::convert::Infallible;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self::parse(text))
    }
}

impl serde::Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        SmolStr::deserialize(deserializer).map(Self::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_text_is_inline_and_reads_back() {
        let id = EventId::new();
        assert!(matches!(id.0, Repr::Uuid(_)));
        let again = EventId::from(id.to_string());
        assert!(matches!(again.0, Repr::Uuid(_)));
        assert_eq!(again, id);
        assert_eq!(id.as_uuid().unwrap().get_version_num(), 7);
    }

    #[test]
    fn other_text_keeps_every_byte() {
        for text in [
            "0190C1B2-7E1A-7000-8000-000000000000", // upper case: not canonical
            "0190c1b2-7e1a-7000-8000-00000000000",  // 35 characters
            "0190c1b2x7e1a-7000-8000-000000000000", // no hyphen where one belongs
            "order-17",
            "ünïcødé id that is longer than twenty-three bytes",
        ] {
            let id = EventId::from(text);
            assert!(matches!(id.0, Repr::Text(_)), "{text}");
            assert_eq!(id.as_str(), text);
            assert_eq!(id.as_uuid(), None);
        }
    }

    #[test]
    fn compares_hashes_and_serializes_as_its_text() {
        use std::collections::HashSet;
        let id = EventId::from("0190c1b2-7e1a-7000-8000-000000000000");
        assert_eq!(id, "0190c1b2-7e1a-7000-8000-000000000000");
        assert_eq!("0190c1b2-7e1a-7000-8000-000000000000".to_owned(), id);
        let set: HashSet<EventId> = [id.clone()].into();
        assert!(set.contains("0190c1b2-7e1a-7000-8000-000000000000"));
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"0190c1b2-7e1a-7000-8000-000000000000\"");
        assert_eq!(serde_json::from_str::<EventId>(&json).unwrap(), id);
        let (a, b) = (EventId::from("a"), EventId::from("b"));
        assert!(a < b);
    }
}
