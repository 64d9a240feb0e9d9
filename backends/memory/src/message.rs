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
        let name = HeaderDialect::MEMORY.header(wire::attr::PARTITIONKEY);
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// One stored message, shared by every group it was published to.
#[derive(Debug)]
pub(crate) enum Stored {
    Event(RawEvent),
    Wire(WireMessage),
}

impl Stored {
    pub(crate) fn key(&self) -> Option<&str> {
        match self {
            Stored::Event(e) => e.key.as_deref(),
            Stored::Wire(w) => w.key(),
        }
    }

    pub(crate) fn read(&self) -> Result<RawEvent, EnvelopeError> {
        match self {
            // A structured-mode publish keeps its attributes beside the
            // body; the body is what a broker's consumer would read.
            Stored::Event(e) if wire::is_structured(&e.data.content_type) => {
                wire::decode_structured(&e.data.bytes, e.key.as_deref().map(str::as_bytes))
            }
            Stored::Event(e) => Ok(e.clone()),
            Stored::Wire(w) => w.decode(),
        }
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
