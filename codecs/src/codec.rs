//! The object-safe codec trait, for codecs beyond the built-in ones.

use crate::CodecError;

/// A payload codec that can be registered at run time.
///
/// The built-in JSON and MessagePack codecs implement it too, but the
/// [`CodecRegistry`](crate::CodecRegistry) calls them directly, without the
/// type erasure this trait needs; a custom codec pays one virtual call per
/// serde token.
pub trait Codec: Send + Sync + 'static {
    /// The media type this codec writes and reads, e.g. `application/json`.
    fn content_type(&self) -> &str;

    /// Encodes a value.
    fn encode(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>, CodecError>;

    /// Hands a deserializer over `bytes` to `visit`, which deserializes the
    /// target type from it. See [`decode_with`] for the typed wrapper.
    fn decode_erased(
        &self,
        bytes: &[u8],
        visit: &mut dyn FnMut(&mut dyn erased_serde::Deserializer<'_>) -> Result<(), erased_serde::Error>,
    ) -> Result<(), CodecError>;
}

/// Decodes a `T` with any [`Codec`].
pub fn decode_with<T: serde::de::DeserializeOwned>(codec: &dyn Codec, bytes: &[u8]) -> Result<T, CodecError> {
    let mut out = None;
    codec.decode_erased(bytes, &mut |de| {
        out = Some(erased_serde::deserialize::<T>(de)?);
        Ok(())
    })?;
    out.ok_or_else(|| CodecError::Decode {
        content_type: codec.content_type().to_owned(),
        message: "codec produced no value".into(),
    })
}
