use crate::{Codec, CodecError};

/// The media type of MessagePack payloads.
pub const MSGPACK_CONTENT_TYPE: &str = "application/msgpack";

/// MessagePack through rmp-serde, structs written as maps (field names kept),
/// so that adding a field stays compatible, as it is with JSON.
#[derive(Debug, Clone, Copy, Default)]
pub struct MessagePack;

impl MessagePack {
    pub(crate) fn encode_typed<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
        rmp_serde::to_vec_named(value).map_err(|e| CodecError::Encode {
            content_type: MSGPACK_CONTENT_TYPE.into(),
            message: e.to_string(),
        })
    }

    pub(crate) fn decode_typed<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
        rmp_serde::from_slice(bytes).map_err(decode_error)
    }
}

fn decode_error(e: impl std::fmt::Display) -> CodecError {
    CodecError::Decode {
        content_type: MSGPACK_CONTENT_TYPE.into(),
        message: e.to_string(),
    }
}

impl Codec for MessagePack {
    fn content_type(&self) -> &str {
        MSGPACK_CONTENT_TYPE
    }

    fn encode(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>, CodecError> {
        Self::encode_typed(value)
    }

    fn decode_erased(
        &self,
        bytes: &[u8],
        visit: &mut dyn FnMut(&mut dyn erased_serde::Deserializer<'_>) -> Result<(), erased_serde::Error>,
    ) -> Result<(), CodecError> {
        let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
        visit(&mut <dyn erased_serde::Deserializer>::erase(&mut de)).map_err(decode_error)
    }
}
