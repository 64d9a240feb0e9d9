//! What the memory broker stores: envelopes as they are, or messages handed
//! to it in wire form (headers and body), which are read like a real broker's
//! on delivery, so poison input behaves as it does on the wire.

use busline_core::wire::{self, HeaderDialect, NativeAttributes};
use busline_core::{DeadLetter, EnvelopeError, RawEvent};
use bytes::Bytes;

/// A message in wire form: CloudEvents headers in the memory dialect
/// ([`HeaderDialect::MEMORY`]: `ce-` prefix, `content-type` header) and the
/// body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WireMessage {
    /// Header names and values, as bytes: what a foreign producer writes
    /// need not be UTF-8.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// The body.
    pub body: Bytes,
}

impl WireMessage {
    /// The wire form of an envelope.
    pub fn from_event(event: &RawEvent) -> Result<Self, EnvelopeError> {
        let headers = wire::encode_headers(event, &HeaderDialect::MEMORY)?
            .into_iter()
            .map(|(k, v)| (k.into_bytes(), v.into_bytes()))
            .collect();
        Ok(Self {
            headers,
            body: event.data.bytes.clone(),
        })
    }

    /// Reads the envelope back, as a backend reads a broker message.
    pub fn decode(&self) -> Result<RawEvent, EnvelopeError> {
        wire::decode_headers(
            &HeaderDialect::MEMORY,
            self.headers.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
            NativeAttributes::default(),
            self.body.clone(),
        )
    }

    /// The message's key header, if readable; used for ordering.
    fn key(&self) -> Option<&str> {
        key_of(self.headers.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
    }
}

/// The value of the key header among `headers`, if readable.
fn key_of<'a>(mut headers: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Option<&'a str> {
    let (prefix, name) = (
        HeaderDialect::MEMORY.prefix.as_bytes(),
        wire::attr::PARTITIONKEY.as_bytes(),
    );
    headers
        .find(|(k, _)| {
            k.len() == prefix.len() + name.len()
                && k[..prefix.len()].eq_ignore_ascii_case(prefix)
                && k[prefix.len()..].eq_ignore_ascii_case(name)
        })
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

/// The wire form of an envelope busline published itself: the same headers
/// as a [`WireMessage`], read by the same decoder, but every name and value
/// in one buffer. A list of separately allocated names and values costs two
/// allocations per header, each freed on another thread than it was made.
#[derive(Debug, Clone)]
pub(crate) struct PackedWire {
    /// Names and values, one after the other. (Kept as the `Vec` it was
    /// written in: shrinking it to a boxed slice would cost a reallocation.)
    text: Vec<u8>,
    /// Per header: where its name starts, where its value starts, where the
    /// value ends, in `text`.
    spans: Vec<[u32; 3]>,
    body: Bytes,
}

impl PackedWire {
    pub(crate) fn from_event(event: &RawEvent) -> Result<Self, EnvelopeError> {
        let mut text = Vec::with_capacity(256);
        let mut spans = Vec::with_capacity(10 + event.extensions.len());
        wire::for_each_header(event, &HeaderDialect::MEMORY, |name, value| {
            let start = text.len();
            text.extend_from_slice(name.as_bytes());
            let mid = text.len();
            text.extend_from_slice(value.as_bytes());
            spans.push([start, mid, text.len()].map(|at| at as u32));
        })?;
        if text.len() > u32::MAX as usize {
            return Err(EnvelopeError::Invalid {
                attribute: "headers".into(),
                reason: "more than 4 GiB of headers".into(),
            });
        }
        Ok(Self {
            text,
            spans,
            body: event.data.bytes.clone(),
        })
    }

    fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.spans.iter().map(|&[start, mid, end]| {
            let (start, mid, end) = (start as usize, mid as usize, end as usize);
            (&self.text[start..mid], &self.text[mid..end])
        })
    }

    fn decode(&self) -> Result<RawEvent, EnvelopeError> {
        wire::decode_headers(
            &HeaderDialect::MEMORY,
            self.headers(),
            NativeAttributes::default(),
            self.body.clone(),
        )
    }

    fn unpacked(&self) -> WireMessage {
        WireMessage {
            headers: self.headers().map(|(k, v)| (k.to_vec(), v.to_vec())).collect(),
            body: self.body.clone(),
        }
    }
}

/// One stored message, shared by every group it was published to.
#[derive(Debug)]
pub(crate) enum Stored {
    /// Boxed: an envelope is several times the size of the other forms.
    Event(Box<RawEvent>),
    Wire(WireMessage),
    Packed(PackedWire),
}

impl Stored {
    pub(crate) fn key(&self) -> Option<&str> {
        match self {
            Stored::Event(e) => e.key.as_deref(),
            Stored::Wire(w) => w.key(),
            Stored::Packed(p) => key_of(p.headers()),
        }
    }

    pub(crate) fn read(&self) -> Result<RawEvent, EnvelopeError> {
        match self {
            // A structured-mode publish keeps its attributes beside the
            // body; the body is what a broker's consumer would read.
            Stored::Event(e) if wire::is_structured(&e.data.content_type) => {
                wire::decode_structured(&e.data.bytes, e.key.as_deref().map(str::as_bytes))
            }
            Stored::Event(e) => Ok(RawEvent::clone(e)),
            Stored::Wire(w) => w.decode(),
            Stored::Packed(p) => p.decode(),
        }
    }

    /// The message as stored, for an operator looking at one whose envelope
    /// cannot be read.
    pub(crate) fn received(&self) -> busline_core::ReceivedMessage {
        let (headers, body) = match self {
            Stored::Event(e) => (Vec::new(), e.data.bytes.clone()),
            Stored::Wire(w) => (
                w.headers
                    .iter()
                    .map(|(k, v)| (Bytes::copy_from_slice(k), Bytes::copy_from_slice(v)))
                    .collect(),
                w.body.clone(),
            ),
            Stored::Packed(p) => (
                p.headers()
                    .map(|(k, v)| (Bytes::copy_from_slice(k), Bytes::copy_from_slice(v)))
                    .collect(),
                p.body.clone(),
            ),
        };
        busline_core::ReceivedMessage::new(headers, body)
    }

    /// The dead letter of this message: byte for byte the same, plus the
    /// letter's attributes.
    pub(crate) fn dead_lettered(&self, letter: &DeadLetter) -> Stored {
        match self {
            Stored::Event(e) => {
                let mut e = e.clone();
                letter.stamp(&mut e);
                Stored::Event(e)
            }
            Stored::Packed(p) => Stored::Wire(p.unpacked()).dead_lettered(letter),
            Stored::Wire(w) => {
                let mut w = w.clone();
                for (name, value) in letter.attributes() {
                    let header = HeaderDialect::MEMORY.header(name).into_bytes();
                    w.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(&header));
                    w.headers.push((header, value.into_bytes()));
                }
                Stored::Wire(w)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use busline_core::{DeadLetterReason, DomainEvent, Payload};

    use super::*;

    fn event(key: Option<&str>) -> RawEvent {
        let mut e = DomainEvent::of_type("order.placed", 2, Payload::json(Bytes::from_static(b"{\"n\":1}")))
            .with_id("id-1")
            .with_source("/shop")
            .with_correlation_id("c-1")
            .with_causation_id("cause")
            .with_extension("tenant", "acme %20 ü")
            .with_extension("traceparent", "00-ab-cd-01");
        e.key = key.map(Into::into);
        e
    }

    #[test]
    fn the_packed_form_reads_as_the_header_list_does() {
        for key in [None, Some("order-7")] {
            let e = event(key);
            let packed = PackedWire::from_event(&e).unwrap();
            let listed = WireMessage::from_event(&e).unwrap();
            assert_eq!(packed.unpacked(), listed);
            assert_eq!(packed.decode().unwrap(), e);
            assert_eq!(Stored::Packed(packed).key(), key);
        }
    }

    #[test]
    fn the_key_header_is_found_in_any_case() {
        let message = WireMessage {
            headers: vec![
                (b"ce-partitionke".to_vec(), b"short".to_vec()),
                (b"CE-PartitionKey".to_vec(), b"k-1".to_vec()),
            ],
            body: Bytes::new(),
        };
        assert_eq!(message.key(), Some("k-1"));
        let not_utf8 = WireMessage {
            headers: vec![(b"ce-partitionkey".to_vec(), vec![0xff])],
            body: Bytes::new(),
        };
        assert_eq!(not_utf8.key(), None);
    }

    #[test]
    fn a_packed_dead_letter_keeps_every_header_and_gains_the_letters() {
        let e = event(Some("order-7"));
        let letter = DeadLetter {
            reason: DeadLetterReason::PermanentError,
            error: "boom".into(),
            topic: "orders".into(),
            group: "billing".into(),
            attempts: 3,
            failed_at: chrono::Utc::now(),
        };
        let packed = Stored::Packed(PackedWire::from_event(&e).unwrap()).dead_lettered(&letter);
        let listed = Stored::Wire(WireMessage::from_event(&e).unwrap()).dead_lettered(&letter);
        let (packed, listed) = (packed.read().unwrap(), listed.read().unwrap());
        assert_eq!(packed, listed);
        assert_eq!(packed.extensions["tenant"], "acme %20 ü");
    }
}
