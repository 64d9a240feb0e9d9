//! Picking a codec by content type.

use std::sync::Arc;

use crate::{Codec, CodecError};

/// One codec the registry knows. The built-in ones are matched here so that
/// encoding and decoding them is monomorphized (no type erasure on the hot
/// path).
#[derive(Clone)]
enum Entry {
    #[cfg(feature = "json")]
    Json,
    #[cfg(feature = "msgpack")]
    MessagePack,
    Custom(Arc<dyn Codec>),
}

impl Entry {
    fn content_type(&self) -> &str {
        match self {
            #[cfg(feature = "json")]
            Entry::Json => crate::JSON_CONTENT_TYPE,
            #[cfg(feature = "msgpack")]
            Entry::MessagePack => crate::MSGPACK_CONTENT_TYPE,
            Entry::Custom(c) => c.content_type(),
        }
    }

    /// Alternative spellings seen in the wild for the same format.
    fn also_reads(&self, media: &str) -> bool {
        match self {
            #[cfg(feature = "json")]
            Entry::Json => media.eq_ignore_ascii_case("text/json") || media.ends_with("+json"),
            #[cfg(feature = "msgpack")]
            Entry::MessagePack => {
                media.eq_ignore_ascii_case("application/x-msgpack")
                    || media.eq_ignore_ascii_case("application/vnd.msgpack")
            }
            Entry::Custom(_) => false,
        }
    }
}

/// The codecs a bus writes with and reads with.
///
/// One codec encodes what this service publishes; every registered codec
/// decodes, chosen by the content type on the incoming message.
#[derive(Clone)]
pub struct CodecRegistry {
    encoder: Entry,
    decoders: Vec<Entry>,
}

impl std::fmt::Debug for CodecRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodecRegistry")
            .field("encodes", &self.encoder.content_type())
            .field(
                "decodes",
                &self.decoders.iter().map(Entry::content_type).collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[cfg(feature = "json")]
#[cfg_attr(docsrs, doc(cfg(feature = "json")))]
impl Default for CodecRegistry {
    fn default() -> Self {
        Self::json()
    }
}

impl CodecRegistry {
    /// Encodes with JSON; decodes JSON and every other built-in codec
    /// compiled in.
    #[cfg(feature = "json")]
    #[cfg_attr(docsrs, doc(cfg(feature = "json")))]
    pub fn json() -> Self {
        Self {
            encoder: Entry::Json,
            decoders: Self::builtin(),
        }
    }

    /// Encodes with MessagePack; decodes it and every other built-in codec
    /// compiled in.
    #[cfg(feature = "msgpack")]
    #[cfg_attr(docsrs, doc(cfg(feature = "msgpack")))]
    pub fn msgpack() -> Self {
        Self {
            encoder: Entry::MessagePack,
            decoders: Self::builtin(),
        }
    }

    /// The registry that encodes with the codec named `name` (`json` or
    /// `msgpack`, or the content type of either). `None` for a name that is
    /// not compiled in.
    pub fn by_name(name: &str) -> Option<Self> {
        let encoder = Self::builtin().into_iter().find(|e| {
            let ct = e.content_type();
            name.eq_ignore_ascii_case(ct)
                || ct
                    .rsplit('/')
                    .next()
                    .is_some_and(|short| short.eq_ignore_ascii_case(name))
        })?;
        Some(Self {
            encoder,
            decoders: Self::builtin(),
        })
    }

    fn builtin() -> Vec<Entry> {
        vec![
            #[cfg(feature = "json")]
            Entry::Json,
            #[cfg(feature = "msgpack")]
            Entry::MessagePack,
        ]
    }

    /// Adds a custom codec for decoding (and replaces a registered codec of
    /// the same content type).
    pub fn with_codec(mut self, codec: Arc<dyn Codec>) -> Self {
        let ct = codec.content_type().to_owned();
        self.decoders
            .retain(|e| !e.content_type().eq_ignore_ascii_case(&ct));
        self.decoders.push(Entry::Custom(codec));
        self
    }

    /// Encodes with a custom codec (it is registered for decoding too).
    pub fn encode_with(self, codec: Arc<dyn Codec>) -> Self {
        let mut me = self.with_codec(codec.clone());
        me.encoder = Entry::Custom(codec);
        me
    }

    /// The content type of what [`encode`](Self::encode) writes.
    pub fn content_type(&self) -> &str {
        self.encoder.content_type()
    }

    /// Encodes a value with the publishing codec.
    pub fn encode<T: serde::Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        match &self.encoder {
            #[cfg(feature = "json")]
            Entry::Json => crate::Json::encode_typed(value),
            #[cfg(feature = "msgpack")]
            Entry::MessagePack => crate::MessagePack::encode_typed(value),
            Entry::Custom(c) => c.encode(&value as &dyn erased_serde::Serialize),
        }
    }

    /// Decodes `bytes` with the codec registered for `content_type`
    /// (parameters such as `; charset=utf-8` are ignored).
    pub fn decode<T: serde::de::DeserializeOwned>(
        &self,
        content_type: &str,
        bytes: &[u8],
    ) -> Result<T, CodecError> {
        match self.find(content_type)? {
            #[cfg(feature = "json")]
            Entry::Json => crate::Json::decode_typed(bytes),
            #[cfg(feature = "msgpack")]
            Entry::MessagePack => crate::MessagePack::decode_typed(bytes),
            Entry::Custom(c) => crate::decode_with(c.as_ref(), bytes),
        }
    }

    /// Whether some registered codec reads `content_type`.
    pub fn reads(&self, content_type: &str) -> bool {
        self.find(content_type).is_ok()
    }

    fn find(&self, content_type: &str) -> Result<&Entry, CodecError> {
        let media = media_type(content_type);
        // The encoder is checked first: it is what this service's own events use.
        std::iter::once(&self.encoder)
            .chain(self.decoders.iter())
            .find(|e| e.content_type().eq_ignore_ascii_case(media) || e.also_reads(media))
            .ok_or_else(|| CodecError::UnknownContentType(content_type.to_owned()))
    }
}

/// The media type of a content type: what stands before any `;` parameter,
/// trimmed.
pub fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Order {
        id: String,
        cents: u64,
    }

    fn order() -> Order {
        Order {
            id: "o-1".into(),
            cents: 1250,
        }
    }

    #[test]
    fn json_round_trip_and_parameters_ignored() {
        let r = CodecRegistry::json();
        let bytes = r.encode(&order()).unwrap();
        assert_eq!(bytes, br#"{"id":"o-1","cents":1250}"#);
        let back: Order = r.decode("application/json; charset=utf-8", &bytes).unwrap();
        assert_eq!(back, order());
        let cloud: Order = r.decode("application/cloudevents+json", &bytes).unwrap();
        assert_eq!(cloud, order());
    }

    #[test]
    fn unknown_content_type_is_typed() {
        let err = CodecRegistry::json()
            .decode::<Order>("application/x-protobuf", b"..")
            .unwrap_err();
        assert_eq!(
            err,
            CodecError::UnknownContentType("application/x-protobuf".into())
        );
    }

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        let err = CodecRegistry::json()
            .decode::<Order>("application/json", b"{\"id\": 3")
            .unwrap_err();
        assert!(matches!(err, CodecError::Decode { .. }), "{err:?}");
        let trailing = CodecRegistry::json()
            .decode::<Order>("application/json", br#"{"id":"a","cents":1} x"#)
            .unwrap_err();
        assert!(matches!(trailing, CodecError::Decode { .. }));
    }

    #[cfg(feature = "msgpack")]
    #[test]
    fn msgpack_round_trip_and_cross_reading() {
        let mp = CodecRegistry::msgpack();
        let bytes = mp.encode(&order()).unwrap();
        assert_eq!(mp.content_type(), "application/msgpack");
        // A JSON-publishing service still reads MessagePack payloads.
        let back: Order = CodecRegistry::json()
            .decode("application/x-msgpack", &bytes)
            .unwrap();
        assert_eq!(back, order());
        assert!(CodecRegistry::json()
            .decode::<Order>("application/msgpack", b"\xc1")
            .is_err());
    }

    #[test]
    fn by_name_accepts_short_and_full_names() {
        assert_eq!(
            CodecRegistry::by_name("json").unwrap().content_type(),
            "application/json"
        );
        assert_eq!(
            CodecRegistry::by_name("application/json").unwrap().content_type(),
            "application/json"
        );
        assert!(CodecRegistry::by_name("yaml").is_none());
    }

    struct Upper;
    impl Codec for Upper {
        fn content_type(&self) -> &str {
            "application/x-upper-json"
        }
        fn encode(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>, CodecError> {
            let s = serde_json::to_string(value).unwrap();
            Ok(s.to_uppercase().into_bytes())
        }
        fn decode_erased(
            &self,
            bytes: &[u8],
            visit: &mut dyn FnMut(&mut dyn erased_serde::Deserializer<'_>) -> Result<(), erased_serde::Error>,
        ) -> Result<(), CodecError> {
            let lower = String::from_utf8_lossy(bytes).to_lowercase();
            let mut de = serde_json::Deserializer::from_str(&lower);
            visit(&mut <dyn erased_serde::Deserializer>::erase(&mut de)).map_err(|e| CodecError::Decode {
                content_type: self.content_type().into(),
                message: e.to_string(),
            })
        }
    }

    #[test]
    fn custom_codec_encodes_and_decodes() {
        let r = CodecRegistry::json().encode_with(Arc::new(Upper));
        let bytes = r.encode(&order()).unwrap();
        assert_eq!(bytes, br#"{"ID":"O-1","CENTS":1250}"#);
        #[derive(Deserialize, Debug, PartialEq)]
        struct Lower {
            id: String,
            cents: u64,
        }
        let back: Lower = r.decode("application/x-upper-json", &bytes).unwrap();
        assert_eq!(
            back,
            Lower {
                id: "o-1".into(),
                cents: 1250
            }
        );
    }
}
