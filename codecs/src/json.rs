use crate::{Codec, CodecError};

/// The media type of JSON payloads.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// JSON through serde_json; the default codec.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl Json {
    pub(crate) fn encode_typed<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(value).map_err(|e| CodecError::Encode {
            content_type: JSON_CONTENT_TYPE.into(),
            message: e.to_string(),
        })
    }

    pub(crate) fn decode_typed<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
        serde_json::from_slice(bytes).map_err(decode_error)
    }
}

fn decode_error(e: impl std::fmt::Display) -> CodecError {
    CodecError::Decode {
        content_type: JSON_CONTENT_TYPE.into(),
        message: e.to_string(),
    }
}

impl Codec for Json {
    fn content_type(&self) -> &str {
        JSON_CONTENT_TYPE
    }

    fn encode(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>, CodecError> {
        Self::encode_typed(value)
    }

    fn decode_erased(
        &self,
        bytes: &[u8],
        visit: &mut dyn FnMut(&mut dyn erased_serde::Deserializer<'_>) -> Result<(), erased_serde::Error>,
    ) -> Result<(), CodecError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        visit(&mut <dyn erased_serde::Deserializer>::erase(&mut de)).map_err(decode_error)?;
        de.end().map_err(decode_error)
    }
}

#[cfg(test)]
mod depth_tests {
    #[test]
    fn deeply_nested_json_is_an_error_not_a_stack_overflow() {
        // serde_json refuses nesting beyond 128 levels on its own; pinned
        // here because a hostile payload relies on it.
        let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let err = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || {
                crate::CodecRegistry::json()
                    .decode::<serde_json::Value>("application/json", nested.as_bytes())
                    .unwrap_err()
                    .to_string()
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(err.contains("recursion limit"), "{err}");
    }
}
