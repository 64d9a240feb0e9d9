//! Payload codecs for busline.
//!
//! An event's `data` travels as bytes in the message body, and its content
//! type travels beside it (`content-type` header or AMQP property). The
//! publishing side encodes with one codec; the receiving side picks the codec
//! from the content type it finds on the message, so a consumer reads events
//! from producers that use a different codec. An unknown content type is a
//! typed [`CodecError::UnknownContentType`], which busline treats as a poison
//! message (dead-lettered with that reason).
//!
//! ```
//! use busline_codecs::{CodecRegistry, JSON_CONTENT_TYPE};
//! # #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
//! # struct OrderCreated { order_id: String }
//! let codecs = CodecRegistry::json();
//! let bytes = codecs.encode(&OrderCreated { order_id: "o-1".into() }).unwrap();
//! let back: OrderCreated = codecs.decode(JSON_CONTENT_TYPE, &bytes).unwrap();
//! assert_eq!(back.order_id, "o-1");
//! ```

#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod codec;
mod error;
#[cfg(feature = "json")]
mod json;
#[cfg(feature = "msgpack")]
mod msgpack;
mod registry;

pub use codec::{decode_with, Codec};
pub use error::CodecError;
#[cfg(feature = "json")]
#[cfg_attr(docsrs, doc(cfg(feature = "json")))]
pub use json::{Json, JSON_CONTENT_TYPE};
#[cfg(feature = "msgpack")]
#[cfg_attr(docsrs, doc(cfg(feature = "msgpack")))]
pub use msgpack::{MessagePack, MSGPACK_CONTENT_TYPE};
pub use registry::{media_type, CodecRegistry};
