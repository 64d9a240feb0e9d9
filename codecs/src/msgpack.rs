use crate::{Codec, CodecError};

/// The media type of MessagePack payloads.
pub const MSGPACK_CONTENT_TYPE: &str = "application/msgpack";

/// How deeply nested a MessagePack payload may be: the same bound serde_json
/// puts on JSON (128). rmp-serde's own default (1024) lets a hostile payload
/// of nested arrays, one byte a level, overflow a 2 MiB thread stack in a
/// debug build before the bound is reached.
pub(crate) const MAX_DEPTH: usize = 128;

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
        let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
        de.set_max_depth(MAX_DEPTH);
        serde::Deserialize::deserialize(&mut de).map_err(decode_error)
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
        de.set_max_depth(MAX_DEPTH);
        visit(&mut <dyn erased_serde::Deserializer>::erase(&mut de)).map_err(decode_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes on a thread with a small stack, as a hostile payload would
    /// be decoded inside a consumer task.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(f)
            .unwrap()
            .join()
            .expect("decoding overflowed or panicked")
    }

    #[test]
    fn deeply_nested_payloads_are_an_error_not_a_stack_overflow() {
        let nested = [vec![0x91u8; 100_000], vec![0xc0]].concat(); // [[[...[nil]...]]]
        let err = on_small_stack(move || {
            MessagePack::decode_typed::<serde_json::Value>(&nested)
                .unwrap_err()
                .to_string()
        });
        assert!(err.contains("depth"), "{err}");
        let within = [vec![0x91u8; MAX_DEPTH - 1], vec![0xc0]].concat();
        on_small_stack(move || MessagePack::decode_typed::<serde_json::Value>(&within).unwrap());
    }
}
