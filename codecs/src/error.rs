use thiserror::Error;

/// What went wrong while encoding or decoding a payload.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    /// The value could not be encoded.
    #[error("cannot encode payload as {content_type}: {message}")]
    Encode {
        /// Content type of the codec that failed.
        content_type: String,
        /// The serializer's message.
        message: String,
    },
    /// The bytes are not a valid encoding of the expected type.
    #[error("cannot decode {content_type} payload: {message}")]
    Decode {
        /// Content type of the codec that failed.
        content_type: String,
        /// The deserializer's message.
        message: String,
    },
    /// No registered codec reads this content type.
    #[error("no codec for content type `{0}`")]
    UnknownContentType(String),
}
