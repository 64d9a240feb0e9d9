//! The envelope on the wire: CloudEvents 1.0 binary content mode.
//!
//! The payload is the message body; every attribute travels as a broker
//! header under a per-broker prefix (a [`HeaderDialect`]). This module is the
//! one place that maps the envelope to headers and back, so every backend
//! writes and validates the same attributes.

use std::borrow::Cow;
use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

use smol_str::SmolStr;

use crate::{DomainEvent, EnvelopeError, EventId, Payload, RawEvent};

/// CloudEvents spec version written and accepted.
pub const SPEC_VERSION: &str = "1.0";

/// Attribute names (without prefix) of the envelope.
pub mod attr {
    /// CloudEvents spec version.
    pub const SPECVERSION: &str = "specversion";
    /// Event id.
    pub const ID: &str = "id";
    /// Event type.
    pub const TYPE: &str = "type";
    /// Publishing service.
    pub const SOURCE: &str = "source";
    /// Creation time, RFC 3339.
    pub const TIME: &str = "time";
    /// Content type of the data, where a dialect carries it as an attribute.
    pub const DATACONTENTTYPE: &str = "datacontenttype";
    /// Schema version of the data (busline extension).
    pub const DATAVERSION: &str = "dataversion";
    /// Correlation id (busline extension).
    pub const CORRELATIONID: &str = "correlationid";
    /// Causation id (busline extension).
    pub const CAUSATIONID: &str = "causationid";
    /// Ordering key (CloudEvents partitioning extension).
    pub const PARTITIONKEY: &str = "partitionkey";

    /// Names a user extension may not take: the envelope sets them itself.
    pub const RESERVED: [&str; 11] = [
        SPECVERSION,
        ID,
        TYPE,
        SOURCE,
        TIME,
        DATACONTENTTYPE,
        DATAVERSION,
        CORRELATIONID,
        CAUSATIONID,
        PARTITIONKEY,
        "data",
    ];
}

/// How one broker binding names and encodes the CloudEvents attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderDialect {
    /// Header name prefix of every attribute, e.g. `ce_`.
    pub prefix: &'static str,
    /// Whether header values are percent-encoded (NATS binding).
    pub percent_encode: bool,
    /// Header that carries the content type, or `None` where the broker has
    /// a native property for it (AMQP `content_type`).
    pub content_type_header: Option<&'static str>,
    /// Whether the key travels as the `partitionkey` attribute; `false` where
    /// the broker has a native key (the Kafka record key).
    pub key_in_headers: bool,
}

impl HeaderDialect {
    /// Kafka protocol binding: `ce_` headers, `content-type` header, the key is
    /// the record key.
    pub const KAFKA: HeaderDialect = HeaderDialect {
        prefix: "ce_",
        percent_encode: false,
        content_type_header: Some("content-type"),
        key_in_headers: false,
    };
    /// AMQP binding: `cloudEvents_` application properties; content type is
    /// the native `content_type` property.
    pub const AMQP: HeaderDialect = HeaderDialect {
        prefix: "cloudEvents_",
        percent_encode: false,
        content_type_header: None,
        key_in_headers: true,
    };
    /// NATS binding: `ce-` headers with percent-encoded values.
    pub const NATS: HeaderDialect = HeaderDialect {
        prefix: "ce-",
        percent_encode: true,
        content_type_header: Some("content-type"),
        key_in_headers: true,
    };
    /// The in-memory bus, for messages handed to it in wire form.
    pub const MEMORY: HeaderDialect = HeaderDialect {
        prefix: "ce-",
        percent_encode: false,
        content_type_header: Some("content-type"),
        key_in_headers: true,
    };

    /// The full header name of attribute `name`.
    pub fn header(&self, name: &str) -> String {
        let mut h = String::with_capacity(self.prefix.len() + name.len());
        h.push_str(self.prefix);
        h.push_str(name);
        h
    }

    /// A header value as this dialect writes it (percent-encoded on NATS).
    pub fn encode_value(&self, value: &str) -> String {
        if self.percent_encode {
            utf8_percent_encode(value, NATS_VALUE).to_string()
        } else {
            value.to_owned()
        }
    }

    /// Reads a header value of attribute `name` as this dialect writes it.
    pub fn decode_value(&self, name: &str, raw: &[u8]) -> Result<String, EnvelopeError> {
        self.decode_value_borrowed(name, raw).map(Cow::into_owned)
    }

    /// [`decode_value`](Self::decode_value) without a copy where the value
    /// holds no escape.
    fn decode_value_borrowed<'v>(&self, name: &str, raw: &'v [u8]) -> Result<Cow<'v, str>, EnvelopeError> {
        let text = if raw.is_ascii() {
            // SAFETY: ASCII is UTF-8. Most values are ASCII, and the check
            // is a few instructions where `from_utf8`'s general path took
            // about ninety per header value.
            unsafe { std::str::from_utf8_unchecked(raw) }
        } else {
            std::str::from_utf8(raw).map_err(|_| EnvelopeError::invalid(name, "not UTF-8"))?
        };
        // Most values hold no escape: borrowed as they are, without the
        // decoder's byte-by-byte pass and second UTF-8 check (about half of
        // this function's instructions per value on a NATS consume).
        if self.percent_encode && raw.contains(&b'%') {
            percent_decode_str(text)
                .decode_utf8()
                .map(|v| Cow::Owned(v.into_owned()))
                .map_err(|_| EnvelopeError::invalid(name, "percent-decodes to invalid UTF-8"))
        } else {
            Ok(Cow::Borrowed(text))
        }
    }
}

/// Characters the NATS binding percent-encodes: controls, space, `"`, `%`
/// (and everything outside ASCII, which `utf8_percent_encode` always does).
const NATS_VALUE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// Whether `name` is a valid CloudEvents attribute name: `a-z0-9`, 1 to 64
/// characters.
pub fn is_valid_attribute_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Checks the envelope before it is published: required attributes present,
/// extension names valid and not reserved.
pub fn validate<T>(event: &DomainEvent<T>) -> Result<(), EnvelopeError> {
    for (name, value) in [
        (attr::ID, event.id.as_str()),
        (attr::TYPE, event.event_type.as_str()),
        (attr::SOURCE, event.source.as_str()),
    ] {
        if value.is_empty() {
            return Err(EnvelopeError::Missing {
                attribute: name.into(),
            });
        }
    }
    if event.correlation_id.is_empty() {
        return Err(EnvelopeError::Missing {
            attribute: attr::CORRELATIONID.into(),
        });
    }
    if event.causation_id.as_deref() == Some("") {
        return Err(EnvelopeError::invalid(attr::CAUSATIONID, "empty"));
    }
    check_source(&event.source)?;
    check_time(&event.time)?;
    for name in event.extensions.keys() {
        if !is_valid_attribute_name(name) {
            return Err(EnvelopeError::InvalidName { name: name.clone() });
        }
        if attr::RESERVED.contains(&name.as_str()) {
            return Err(EnvelopeError::Reserved { name: name.clone() });
        }
        if name.len() > RECOMMENDED_NAME_LEN {
            // CloudEvents 1.0 says names SHOULD NOT exceed 20 characters;
            // busline writes and reads them up to 64, so a foreign event with
            // a long name can still be dead-lettered and replayed, but says
            // so: some SDKs refuse such events.
            tracing::warn!(extension = %name, "extension name longer than the 20 characters CloudEvents recommends");
        }
    }
    Ok(())
}

/// The longest attribute name CloudEvents 1.0 recommends (§ Attribute Naming
/// Convention); longer names up to 64 characters are accepted with a warning.
pub const RECOMMENDED_NAME_LEN: usize = 20;

/// Checks that `source` is a URI-reference (RFC 3986): ASCII, no spaces or
/// controls, only characters a URI may hold, every `%` followed by two hex
/// digits. `billing-service`, `/orders/eu` and `https://shop.example/orders`
/// pass; `my service` and `café` do not.
///
/// Checked where busline writes an event, not where it reads one: a foreign
/// producer's sloppy source still reaches the handler, and replaying such an
/// event needs a repair of its source (the publish is refused, the letter
/// stays in the DLQ).
pub fn check_source(source: &str) -> Result<(), EnvelopeError> {
    let bytes = source.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let ok = b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=".contains(&b);
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
            if !hex {
                return Err(EnvelopeError::invalid(
                    attr::SOURCE,
                    format!("`{source}` is not a URI-reference: `%` without two hex digits"),
                ));
            }
            i += 3;
            continue;
        }
        if !ok {
            return Err(EnvelopeError::invalid(
                attr::SOURCE,
                format!(
                    "`{source}` is not a URI-reference: it holds {:?}",
                    source[i..].chars().next().unwrap_or('?')
                ),
            ));
        }
        i += 1;
    }
    Ok(())
}

/// Checks that `time` can be written back as RFC 3339: a year from 0000 to
/// 9999. A time outside that range (such as `9999-12-31T23:59:59-01:00`,
/// which is year 10000 in UTC) would read but never write again, so a replay
/// would turn a good letter into poison: it is refused where it is read.
pub fn check_time(time: &DateTime<Utc>) -> Result<(), EnvelopeError> {
    use chrono::Datelike;
    if (0..=9999).contains(&time.year()) {
        Ok(())
    } else {
        Err(EnvelopeError::invalid(
            attr::TIME,
            format!("year {} is outside 0000-9999 in UTC", time.year()),
        ))
    }
}

/// Formats a time the way it travels: RFC 3339, UTC, with as many fraction
/// digits as needed so that it reads back equal.
pub fn format_time(time: &DateTime<Utc>) -> String {
    TimeText::of(time).as_str().to_owned()
}

/// A time as it travels, formatted on the stack: every publish writes one,
/// and chrono's general formatter took about 800 instructions and an
/// allocation for it. Years outside 0000-9999 and leap seconds, which the
/// fast path does not write, go through chrono.
pub(crate) struct TimeText {
    buf: [u8; 30],
    len: usize,
    slow: Option<String>,
}

impl TimeText {
    pub(crate) fn of(time: &DateTime<Utc>) -> Self {
        use chrono::{Datelike, Timelike};
        let (year, nanos) = (time.year(), time.nanosecond());
        if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
            return Self {
                buf: [0; 30],
                len: 0,
                slow: Some(time.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
            };
        }
        let mut buf = [0u8; 30];
        let mut put = |at: usize, value: u32, digits: usize| {
            let mut v = value;
            for i in (0..digits).rev() {
                buf[at + i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, year as u32, 4);
        put(5, time.month(), 2);
        put(8, time.day(), 2);
        put(11, time.hour(), 2);
        put(14, time.minute(), 2);
        put(17, time.second(), 2);
        // As chrono's `AutoSi`: no fraction, or 3, 6 or 9 digits, the
        // fewest that hold it exactly.
        let (fraction, digits) = match nanos {
            0 => (0, 0),
            n if n % 1_000_000 == 0 => (n / 1_000_000, 3),
            n if n % 1_000 == 0 => (n / 1_000, 6),
            n => (n, 9),
        };
        let mut len = 19;
        if digits > 0 {
            put(20, fraction, digits);
            len = 20 + digits;
        }
        for (at, sep) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')] {
            buf[at] = sep;
        }
        if digits > 0 {
            buf[19] = b'.';
        }
        buf[len] = b'Z';
        Self {
            buf,
            len: len + 1,
            slow: None,
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match &self.slow {
            Some(text) => text,
            // SAFETY: `of` wrote only ASCII digits and separators into
            // `buf[..len]`, so it is UTF-8; checking again cost about a
            // hundred instructions per publish.
            None => unsafe { std::str::from_utf8_unchecked(&self.buf[..self.len]) },
        }
    }
}

/// The headers of `event` in `dialect`: every attribute, prefixed, the
/// content type where the dialect carries it as a header, and the key where
/// the broker has no native one. Validates the envelope first.
pub fn encode_headers(
    event: &RawEvent,
    dialect: &HeaderDialect,
) -> Result<Vec<(String, String)>, EnvelopeError> {
    let mut out = Vec::with_capacity(10 + event.extensions.len());
    for_each_header(event, dialect, |name, value| {
        out.push((name.to_owned(), value.to_owned()))
    })?;
    Ok(out)
}

/// Hands every header of `event` in `dialect` to `put` as (name, value),
/// as [`encode_headers`] lists them, without building a list: names are
/// written into one reused buffer and values are borrowed unless the dialect
/// encodes them, so a backend can fill its own header map with no
/// intermediate allocations. Validates the envelope first.
pub fn for_each_header(
    event: &RawEvent,
    dialect: &HeaderDialect,
    mut put: impl FnMut(&str, &str),
) -> Result<(), EnvelopeError> {
    validate(event)?;
    if is_structured(&event.data.content_type) {
        // Structured mode: the attributes are in the body; the content type
        // is all a receiver needs to tell the modes apart.
        if let Some(h) = dialect.content_type_header {
            put(h, &event.data.content_type);
        }
        return Ok(());
    }
    // The envelope's own names are constants of the built-in dialects;
    // extension names are built on the stack (`validate` let through only
    // names of at most 64 characters, and the dialects' prefixes are short).
    // A dialect with a longer prefix takes the heap.
    let known = known_names(dialect.prefix);
    let mut name_buf = [0u8; 128];
    let mut long_name = String::new();
    // `slot` is the attribute's place in `known_names`, for the envelope's own.
    let mut emit = |name: &str, slot: Option<usize>, value: &str| {
        let len = dialect.prefix.len() + name.len();
        let full = match known.zip(slot) {
            Some((names, slot)) => names[slot],
            None if len <= name_buf.len() => {
                name_buf[..dialect.prefix.len()].copy_from_slice(dialect.prefix.as_bytes());
                name_buf[dialect.prefix.len()..len].copy_from_slice(name.as_bytes());
                // Two `str`s joined are UTF-8.
                std::str::from_utf8(&name_buf[..len]).expect("two strs joined")
            }
            None => {
                long_name.clear();
                long_name.push_str(dialect.prefix);
                long_name.push_str(name);
                &long_name
            }
        };
        if dialect.percent_encode {
            let encoded: std::borrow::Cow<'_, str> = utf8_percent_encode(value, NATS_VALUE).into();
            put(full, &encoded);
        } else {
            put(full, value);
        }
    };
    emit(attr::SPECVERSION, Some(0), SPEC_VERSION);
    emit(attr::ID, Some(1), &event.id);
    emit(attr::TYPE, Some(2), &event.event_type);
    emit(attr::SOURCE, Some(3), &event.source);
    emit(attr::TIME, Some(4), TimeText::of(&event.time).as_str());
    emit(
        attr::DATAVERSION,
        Some(5),
        itoa::Buffer::new().format(event.version),
    );
    emit(attr::CORRELATIONID, Some(6), &event.correlation_id);
    if let Some(c) = &event.causation_id {
        emit(attr::CAUSATIONID, Some(7), c);
    }
    if dialect.key_in_headers {
        if let Some(k) = &event.key {
            emit(attr::PARTITIONKEY, Some(8), k);
        }
    }
    for (name, value) in &event.extensions {
        emit(name, None, value);
    }
    if let Some(h) = dialect.content_type_header {
        put(h, &event.data.content_type);
    }
    Ok(())
}

/// The full header names of the envelope's own attributes under `prefix`
/// (those `for_each_header` writes), for the built-in dialects' prefixes.
fn known_names(prefix: &str) -> Option<&'static [&'static str; 9]> {
    macro_rules! names {
        ($prefix:literal) => {
            [
                concat!($prefix, "specversion"),
                concat!($prefix, "id"),
                concat!($prefix, "type"),
                concat!($prefix, "source"),
                concat!($prefix, "time"),
                concat!($prefix, "dataversion"),
                concat!($prefix, "correlationid"),
                concat!($prefix, "causationid"),
                concat!($prefix, "partitionkey"),
            ]
        };
    }
    const CE_UNDERSCORE: [&str; 9] = names!("ce_");
    const CE_DASH: [&str; 9] = names!("ce-");
    const CLOUD_EVENTS: [&str; 9] = names!("cloudEvents_");
    match prefix {
        "ce_" => Some(&CE_UNDERSCORE),
        "ce-" => Some(&CE_DASH),
        "cloudEvents_" => Some(&CLOUD_EVENTS),
        _ => None,
    }
}

/// The envelope attributes both content modes carry.
pub(crate) struct Attributes {
    pub(crate) id: EventId,
    pub(crate) event_type: SmolStr,
    pub(crate) version: u32,
    pub(crate) source: SmolStr,
    pub(crate) time: DateTime<Utc>,
    pub(crate) correlation_id: EventId,
    pub(crate) causation_id: Option<EventId>,
    pub(crate) key: Option<SmolStr>,
    /// The `datacontenttype` attribute, if present and not empty.
    pub(crate) content_type: Option<SmolStr>,
}

impl Attributes {
    /// The event these attributes describe, with its extensions and payload.
    pub(crate) fn into_event(self, extensions: BTreeMap<String, String>, data: Payload) -> RawEvent {
        DomainEvent {
            id: self.id,
            event_type: self.event_type,
            version: self.version,
            source: self.source,
            time: self.time,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            key: self.key,
            extensions,
            data,
        }
    }
}

/// Reads the envelope's attributes through `take` (which hands each named
/// attribute over once, borrowed where it can be), the same way for headers
/// and for a structured body: required ones present and not empty,
/// specversion 1.0, a time that can be written back; events from producers
/// that do not know busline's extensions are version 1 and start their own
/// correlation chain; the broker's native key wins over `partitionkey`.
pub(crate) fn read_attributes<V: AsRef<str>>(
    mut take: impl FnMut(&str) -> Option<V>,
    native_key: Option<&[u8]>,
) -> Result<Attributes, EnvelopeError> {
    let mut required = |name: &str| match take(name) {
        Some(v) if !v.as_ref().is_empty() => Ok(v),
        Some(_) => Err(EnvelopeError::invalid(name, "empty")),
        None => Err(EnvelopeError::Missing {
            attribute: name.into(),
        }),
    };
    let spec = required(attr::SPECVERSION)?;
    if spec.as_ref() != SPEC_VERSION {
        return Err(EnvelopeError::UnsupportedSpecVersion(spec.as_ref().to_owned()));
    }
    let id = EventId::from(required(attr::ID)?.as_ref());
    let event_type = SmolStr::new(required(attr::TYPE)?);
    let source = SmolStr::new(required(attr::SOURCE)?);
    let time = parse_time(required(attr::TIME)?.as_ref())?;
    let version = match take(attr::DATAVERSION) {
        None => 1,
        Some(v) => v.as_ref().parse::<u32>().map_err(|_| {
            EnvelopeError::invalid(
                attr::DATAVERSION,
                format!("`{}` is not an unsigned integer", v.as_ref()),
            )
        })?,
    };
    let non_empty = |v: V| (!v.as_ref().is_empty()).then(|| EventId::from(v.as_ref()));
    let correlation_id = take(attr::CORRELATIONID)
        .and_then(non_empty)
        .unwrap_or_else(|| id.clone());
    let causation_id = take(attr::CAUSATIONID).and_then(non_empty);
    let attribute_key = take(attr::PARTITIONKEY).map(SmolStr::new);
    let content_type = take(attr::DATACONTENTTYPE)
        .filter(|c| !c.as_ref().is_empty())
        .map(SmolStr::new);
    let key = match native_key {
        Some(k) => Some(SmolStr::new(std::str::from_utf8(k).map_err(|_| {
            EnvelopeError::invalid(attr::PARTITIONKEY, "key is not UTF-8")
        })?)),
        None => attribute_key,
    };
    Ok(Attributes {
        id,
        event_type,
        version,
        source,
        time,
        correlation_id,
        causation_id,
        key,
        content_type,
    })
}

/// Reads an RFC 3339 time, refusing one that could not be written back
/// ([`check_time`]).
pub(crate) fn parse_time(text: &str) -> Result<DateTime<Utc>, EnvelopeError> {
    let time = match parse_utc_time(text) {
        Some(time) => time,
        None => DateTime::parse_from_rfc3339(text)
            .map_err(|e| EnvelopeError::invalid(attr::TIME, format!("`{text}` is not RFC 3339: {e}")))?
            .with_timezone(&Utc),
    };
    check_time(&time)?;
    Ok(time)
}

/// Reads the form busline and most producers write,
/// `YYYY-MM-DDTHH:MM:SS[.f]Z` with one to nine fraction digits, without
/// chrono's general parser (530 instructions per event received; this
/// path takes 390 with the date checks, callgrind on the memory bench);
/// `None` for anything else (offsets, lower-case letters, leap seconds, an
/// impossible date), which chrono then reads or refuses. Where it reads a
/// time, it reads the one chrono would (a test compares the two).
fn parse_utc_time(text: &str) -> Option<DateTime<Utc>> {
    let b = text.as_bytes();
    if b.len() < 20 || b[b.len() - 1] != b'Z' {
        return None;
    }
    for (at, sep) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')] {
        if b[at] != sep {
            return None;
        }
    }
    let number = |digits: &[u8]| {
        digits.iter().try_fold(0u32, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    let (year, month, day) = (number(&b[0..4])?, number(&b[5..7])?, number(&b[8..10])?);
    let (hour, minute, second) = (number(&b[11..13])?, number(&b[14..16])?, number(&b[17..19])?);
    let nanos = match &b[19..b.len() - 1] {
        [] => 0,
        [b'.', fraction @ ..] if (1..=9).contains(&fraction.len()) => {
            number(fraction)? * 10u32.pow(9 - fraction.len() as u32)
        }
        _ => return None,
    };
    if second > 59 {
        return None;
    }
    let date = chrono::NaiveDate::from_ymd_opt(year as i32, month, day)?;
    let time = chrono::NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)?;
    Some(chrono::NaiveDateTime::new(date, time).and_utc())
}

/// What a broker carries outside its header table.
#[derive(Debug, Clone, Copy, Default)]
pub struct NativeAttributes<'a> {
    /// A native content type property (AMQP `content_type`); it wins over a
    /// content-type header.
    pub content_type: Option<&'a str>,
    /// A native key (the Kafka record key).
    pub key: Option<&'a [u8]>,
}

/// The envelope's attributes as `decode_headers` reads them, each into its
/// slot.
const KNOWN: [&str; 10] = [
    attr::SPECVERSION,
    attr::ID,
    attr::TYPE,
    attr::SOURCE,
    attr::TIME,
    attr::DATAVERSION,
    attr::CORRELATIONID,
    attr::CAUSATIONID,
    attr::PARTITIONKEY,
    attr::DATACONTENTTYPE,
];

/// The slot of an attribute in [`KNOWN`].
fn known_slot(name: &[u8]) -> Option<usize> {
    Some(match name {
        b"specversion" => 0,
        b"id" => 1,
        b"type" => 2,
        b"source" => 3,
        b"time" => 4,
        b"dataversion" => 5,
        b"correlationid" => 6,
        b"causationid" => 7,
        b"partitionkey" => 8,
        b"datacontenttype" => 9,
        _ => return None,
    })
}

/// Reads an envelope back from broker headers.
///
/// Header names are bytes, as brokers carry them (`&str` works too): a
/// foreign producer may write names that are not UTF-8. Headers without the
/// dialect's prefix (other than the content-type header) are not part of
/// the envelope and are ignored, whatever their bytes; a prefixed name that
/// is not a valid attribute name is an error. The prefix and attribute
/// names are matched without regard to case, since some clients canonicalize
/// header names. A content type of `application/cloudevents+json` is a
/// structured-mode event: the envelope is read from the body instead (see
/// [`decode_structured`]). Anything missing or malformed is a typed
/// [`EnvelopeError`]; this function never panics on input.
pub fn decode_headers<'h, N, I>(
    dialect: &HeaderDialect,
    headers: I,
    native: NativeAttributes<'_>,
    body: Bytes,
) -> Result<RawEvent, EnvelopeError>
where
    N: AsRef<[u8]> + 'h,
    I: IntoIterator<Item = (N, &'h [u8])>,
{
    // Known attributes go to their slot; only extensions are kept by name.
    let mut known: [Option<Cow<'h, str>>; 10] = Default::default();
    let mut attrs: BTreeMap<String, String> = BTreeMap::new();
    let mut content_type_header = None;
    let prefix = dialect.prefix;
    for (name, raw) in headers {
        let name = name.as_ref();
        if let Some(ct) = dialect.content_type_header {
            if name.eq_ignore_ascii_case(ct.as_bytes()) {
                if content_type_header.is_some() {
                    return Err(EnvelopeError::Duplicate {
                        attribute: attr::DATACONTENTTYPE.into(),
                    });
                }
                content_type_header = Some(
                    std::str::from_utf8(raw)
                        .map_err(|_| EnvelopeError::invalid(attr::DATACONTENTTYPE, "not UTF-8"))?,
                );
                continue;
            }
        }
        let Some(head) = name.get(..prefix.len()) else {
            continue;
        };
        if !head.eq_ignore_ascii_case(prefix.as_bytes()) {
            continue;
        }
        // One pass checks the name (`a-z0-9`, which also makes it UTF-8)
        // and lower-cases it; the envelope's own names then map to their
        // constants, so only an extension's name is built.
        let raw_name = &name[prefix.len()..];
        let mut lowered = [0u8; 64];
        let valid = !raw_name.is_empty()
            && raw_name.len() <= lowered.len()
            && raw_name.iter().zip(lowered.iter_mut()).all(|(b, out)| {
                *out = b.to_ascii_lowercase();
                out.is_ascii_lowercase() || out.is_ascii_digit()
            });
        if !valid {
            return Err(EnvelopeError::InvalidName {
                name: String::from_utf8_lossy(name).into_owned(),
            });
        }
        let lowered = &lowered[..raw_name.len()];
        let slot = known_slot(lowered);
        let attribute = match slot {
            Some(i) => KNOWN[i],
            None => std::str::from_utf8(lowered).expect("a-z0-9 is UTF-8"),
        };
        let value = dialect.decode_value_borrowed(attribute, raw)?;
        let duplicate = match slot {
            Some(i) => known[i].replace(value).is_some(),
            None => attrs.insert(attribute.to_owned(), value.into_owned()).is_some(),
        };
        if duplicate {
            return Err(EnvelopeError::Duplicate {
                attribute: attribute.to_owned(),
            });
        }
    }

    let declared_type = native.content_type.or(content_type_header);
    if declared_type.is_some_and(structured::is_structured) {
        return structured::decode_structured(&body, native.key);
    }

    let take = |name: &str| known_slot(name.as_bytes()).and_then(|i| known[i].take());
    let mut a = read_attributes(take, native.key)?;
    if let Some(name) = attrs.keys().find(|k| attr::RESERVED.contains(&k.as_str())) {
        return Err(EnvelopeError::Reserved { name: name.clone() });
    }
    let content_type = native
        .content_type
        .or(content_type_header)
        .map(SmolStr::new)
        .or(a.content_type.take())
        .filter(|c| !c.is_empty())
        .ok_or_else(|| EnvelopeError::Missing {
            attribute: attr::DATACONTENTTYPE.into(),
        })?;

    Ok(a.into_event(
        attrs,
        Payload {
            content_type,
            bytes: body,
        },
    ))
}

mod structured;
pub use structured::{decode_structured, encode_structured, is_structured, STRUCTURED_JSON};

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;
