//! Signed envelopes: service-to-service authentication of events.
//!
//! Anyone who can write to a topic can otherwise put any `source` on an
//! event. [`SignedBus`] signs what a service publishes and checks what it
//! consumes: the publisher signs a canonical form of the CloudEvents
//! attributes and the payload bytes ([`canonical`](self::canonical)) with its
//! [`SigningKey`] and sends the signature in the `signature` extension, the
//! key id in `signaturekey`; the consumer looks the id up in its
//! [`Keyring`], checks the signature and the key's [`KeyScope`] (which
//! `source` and `type` the key may sign) and refuses the delivery otherwise.
//! A router dead-letters a refused delivery under its reason:
//!
//! | reason | when |
//! |---|---|
//! | `unsigned` | no `signature` extension |
//! | `unknown_key` | the key id is not in the keyring (retired, or not rolled out yet) |
//! | `bad_signature` | the signature does not match (a changed attribute or payload, another key under that id, unreadable signature) |
//! | `key_not_allowed` | the signature is good, but the key may not sign this `source` or `type` |
//!
//! Dead-letter and replay attributes and trace context are left out of the
//! signed form, so a dead letter replayed to its topic verifies as it did;
//! a [`Repair`](busline_core::Repair) that changes the event breaks its
//! signature, and the consumer refuses it.
//!
//! HMAC-SHA256 keys are shared secrets (a verifier can sign); Ed25519 keys
//! give verifiers only the public half. Events that already carry a
//! signature are published as they are (a replay, a forwarder), so the
//! original publisher's signature is what consumers check.
//!
//! ```
//! use busline_core::{Bus, BusSettings};
//! use busline_layers::signing::{Keyring, SignedBus, SigningKey, VerifyingKey};
//! # fn demo(bus: Bus) {
//! let orders = SigningKey::ed25519("orders-2026-12", [42u8; 32]).unwrap();
//! let keyring = Keyring::new()
//!     .with(VerifyingKey::of(&orders).allow_sources(["orders"]));
//! // Publishes signed with `orders`, consumes only what the keyring's keys signed.
//! let bus = SignedBus::wrap(&bus, Some(orders), keyring);
//! # let _ = bus;
//! # }
//! ```

pub mod canonical;
mod keys;

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use busline_core::backend::BusDecorator;
use busline_core::wire::{decode_structured, encode_structured, is_structured};
use busline_core::{
    Bus, DeadLetterReason, Delivery, EnvelopeError, EventBus, PublishError, PublishErrorKind, RawEvent,
    SubscribeError, SubscribeOptions, Subscription,
};
use futures::StreamExt;

pub use canonical::UNSIGNED_EXTENSIONS;
pub use keys::{KeyError, KeyScope, Keyring, SigningKey, VerifyingKey, MIN_HMAC_SECRET_LEN};

/// Extension carrying the signature, base64 (standard alphabet, padded).
pub const SIGNATURE: &str = "signature";
/// Extension carrying the id of the key that made the signature.
pub const SIGNATURE_KEY: &str = "signaturekey";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// An [`EventBus`] decorator that signs published events and refuses
/// consumed ones that are not signed by a key of its [`Keyring`] (see the
/// [module docs](self)).
pub struct SignedBus {
    inner: Arc<dyn EventBus>,
    signer: Option<SigningKey>,
    keyring: Keyring,
}

impl std::fmt::Debug for SignedBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedBus")
            .field("signer", &self.signer)
            .field("keyring", &self.keyring)
            .finish_non_exhaustive()
    }
}

impl SignedBus {
    /// Decorates a backend: publishes are signed with `signer` (`None`:
    /// passed as they are), deliveries checked against `keyring`.
    pub fn new(inner: Arc<dyn EventBus>, signer: Option<SigningKey>, keyring: Keyring) -> Self {
        Self {
            inner,
            signer,
            keyring,
        }
    }

    /// The same bus, signing and checking.
    pub fn wrap(bus: &Bus, signer: Option<SigningKey>, keyring: Keyring) -> Bus {
        bus.with_transport(Arc::new(Self::new(bus.transport().clone(), signer, keyring)))
    }

    fn sign(&self, topic: &str, mut event: RawEvent) -> Result<RawEvent, PublishError> {
        let Some(key) = &self.signer else {
            return Ok(event);
        };
        if event.extensions.contains_key(SIGNATURE) {
            return Ok(event);
        }
        if is_structured(&event.data.content_type) {
            // The attributes travel inside the body: sign them there.
            let invalid = |e| PublishError::new(PublishErrorKind::InvalidEnvelope, topic).with_source(e);
            let inner = decode_structured(&event.data.bytes, None).map_err(invalid)?;
            let inner = sign(key, inner);
            event.data.bytes = encode_structured(&inner).map_err(invalid)?;
            return Ok(event);
        }
        Ok(sign(key, event))
    }
}

/// Adds `key`'s signature of `event` (a binary-mode event: the attributes
/// beside the payload), replacing any it had; what [`SignedBus`] does to
/// each event it publishes.
pub fn sign(key: &SigningKey, mut event: RawEvent) -> RawEvent {
    let signature = key.sign(&canonical::canonical(&event, key.id()));
    event
        .extensions
        .insert(SIGNATURE_KEY.to_owned(), key.id().to_owned());
    event
        .extensions
        .insert(SIGNATURE.to_owned(), B64.encode(signature));
    event
}

/// `Ok` when a key of `keyring` signed `event` and may sign it.
pub fn verify(keyring: &Keyring, event: &RawEvent) -> Result<(), EnvelopeError> {
    let refuse = |reason, detail: String| EnvelopeError::Refused {
        reason,
        detail: format!(
            "event `{}` of type `{}` from `{}`: {detail}",
            event.id, event.event_type, event.source
        ),
    };
    let Some(signature) = event.extensions.get(SIGNATURE) else {
        return Err(refuse(DeadLetterReason::Unsigned, "no signature".into()));
    };
    let Some(key_id) = event.extensions.get(SIGNATURE_KEY) else {
        return Err(refuse(
            DeadLetterReason::BadSignature,
            format!("a signature without the `{SIGNATURE_KEY}` extension"),
        ));
    };
    let Some(key) = keyring.get(key_id) else {
        return Err(refuse(
            DeadLetterReason::UnknownKey,
            format!("unknown signing key `{key_id}`"),
        ));
    };
    let Ok(signature) = B64.decode(signature) else {
        return Err(refuse(
            DeadLetterReason::BadSignature,
            format!("the signature of key `{key_id}` is not base64"),
        ));
    };
    if !key.verify(&canonical::canonical(event, key_id), &signature) {
        return Err(refuse(
            DeadLetterReason::BadSignature,
            format!("the signature does not match key `{key_id}`"),
        ));
    }
    if let Some(refused) = key.scope().refusal(&event.source, &event.event_type) {
        return Err(refuse(
            DeadLetterReason::KeyNotAllowed,
            format!("key `{key_id}` may not sign {refused}"),
        ));
    }
    Ok(())
}

fn checked(keyring: &Keyring, delivery: Delivery) -> Delivery {
    let Ok(event) = delivery.event() else {
        return delivery;
    };
    match verify(keyring, event) {
        Ok(()) => delivery,
        Err(refused) => {
            tracing::debug!(topic = delivery.topic(), group = delivery.group(), error = %refused, "delivery refused");
            let (_, acker) = delivery.into_parts();
            Delivery::from_parts(Err(refused), acker)
        }
    }
}

#[async_trait]
impl BusDecorator for SignedBus {
    fn inner(&self) -> &Arc<dyn EventBus> {
        &self.inner
    }

    async fn on_publish(&self, topic: &str, event: RawEvent) -> Result<(), PublishError> {
        let event = self.sign(topic, event)?;
        self.inner.publish(topic, event).await
    }

    async fn on_publish_batch(&self, topic: &str, events: Vec<RawEvent>) -> Result<(), PublishError> {
        let events = events
            .into_iter()
            .map(|e| self.sign(topic, e))
            .collect::<Result<Vec<_>, _>>()?;
        self.inner.publish_batch(topic, events).await
    }

    async fn on_subscribe(
        &self,
        topic: &str,
        group: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, SubscribeError> {
        let deliveries = self.inner.subscribe(topic, group, options).await?;
        let keyring = self.keyring.clone();
        Ok(Subscription::new(
            deliveries.map(move |d| d.map(|d| checked(&keyring, d))),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::canonical::tests::event;
    use super::*;

    fn reason(keyring: &Keyring, event: &RawEvent) -> Option<DeadLetterReason> {
        match verify(keyring, event) {
            Ok(()) => None,
            Err(EnvelopeError::Refused { reason, .. }) => Some(reason),
            Err(other) => panic!("not a refusal: {other}"),
        }
    }

    /// Signature extensions as a foreign producer may write them.
    #[test]
    fn hostile_signature_extensions_are_refusals_with_a_reason() {
        let key = SigningKey::hmac_sha256("k1", [1u8; 32]).unwrap();
        let keyring = Keyring::new().with(VerifyingKey::of(&key));
        let good = sign(&key, event());
        assert_eq!(reason(&keyring, &good), None);
        let with = |name: &str, value: String| {
            let mut e = good.clone();
            e.extensions.insert(name.into(), value);
            e
        };
        let without_key = {
            let mut e = good.clone();
            e.extensions.remove(SIGNATURE_KEY);
            e
        };
        let cases = [
            (
                with(SIGNATURE, "not base64 !".into()),
                DeadLetterReason::BadSignature,
            ),
            (with(SIGNATURE, String::new()), DeadLetterReason::BadSignature),
            (
                with(SIGNATURE, "A".repeat(1 << 20)),
                DeadLetterReason::BadSignature,
            ),
            (with(SIGNATURE_KEY, String::new()), DeadLetterReason::UnknownKey),
            (
                with(SIGNATURE_KEY, "k1\u{0}".into()),
                DeadLetterReason::UnknownKey,
            ),
            (without_key, DeadLetterReason::BadSignature),
        ];
        for (event, want) in cases {
            assert_eq!(reason(&keyring, &event), Some(want));
        }
    }
}
