//! Signing keys, verification keys and the keyring that holds the latter.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use ed25519_dalek::Signer as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The shortest HMAC secret taken: the output size of SHA-256, as RFC 2104
/// advises (a shorter key weakens the MAC).
pub const MIN_HMAC_SECRET_LEN: usize = 32;

/// A key that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Key ids travel in an extension attribute: 1 to 64 characters of
    /// `A-Z a-z 0-9 . _ : -`.
    #[error("key id `{0}` is not 1 to 64 characters of A-Z a-z 0-9 . _ : -")]
    InvalidId(String),
    /// The HMAC secret of key `id` is shorter than [`MIN_HMAC_SECRET_LEN`].
    #[error("the HMAC secret of key `{id}` has {len} bytes; at least {MIN_HMAC_SECRET_LEN} are needed")]
    ShortSecret {
        /// The key id.
        id: String,
        /// The secret's length.
        len: usize,
    },
    /// The 32 bytes are not an Ed25519 public key.
    #[error("key `{0}` is not a valid Ed25519 public key")]
    InvalidPublicKey(String),
}

fn check_id(id: &str) -> Result<Arc<str>, KeyError> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(id.into())
    } else {
        Err(KeyError::InvalidId(id.to_owned()))
    }
}

fn hmac_secret(id: &str, secret: &[u8]) -> Result<Arc<[u8]>, KeyError> {
    if secret.len() < MIN_HMAC_SECRET_LEN {
        return Err(KeyError::ShortSecret {
            id: id.to_owned(),
            len: secret.len(),
        });
    }
    Ok(secret.into())
}

#[derive(Clone)]
enum Secret {
    Hmac(Arc<[u8]>),
    Ed25519(Arc<ed25519_dalek::SigningKey>),
}

/// The key a publisher signs its events with.
///
/// HMAC-SHA256 keys are shared secrets: whoever verifies can also sign.
/// Use Ed25519 where consumers must not be able to forge the publisher's
/// events: they hold only its [`VerifyingKey::ed25519`] public half.
///
/// ```
/// use busline_layers::signing::SigningKey;
/// let hmac = SigningKey::hmac_sha256("orders-2026-12", [7u8; 32]).unwrap();
/// let ed = SigningKey::ed25519("orders-ed-1", [9u8; 32]).unwrap();
/// let public: [u8; 32] = ed.public_key().unwrap();
/// # let _ = (hmac, public);
/// ```
#[derive(Clone)]
pub struct SigningKey {
    id: Arc<str>,
    secret: Secret,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .field("algorithm", &self.algorithm())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// An HMAC-SHA256 key of at least [`MIN_HMAC_SECRET_LEN`] bytes.
    pub fn hmac_sha256(id: &str, secret: impl AsRef<[u8]>) -> Result<Self, KeyError> {
        Ok(Self {
            id: check_id(id)?,
            secret: Secret::Hmac(hmac_secret(id, secret.as_ref())?),
        })
    }

    /// An Ed25519 key from its 32-byte secret (seed).
    pub fn ed25519(id: &str, secret: [u8; 32]) -> Result<Self, KeyError> {
        Ok(Self {
            id: check_id(id)?,
            secret: Secret::Ed25519(Arc::new(ed25519_dalek::SigningKey::from_bytes(&secret))),
        })
    }

    /// The key id written beside each signature.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `"hmac-sha256"` or `"ed25519"`.
    pub fn algorithm(&self) -> &'static str {
        match self.secret {
            Secret::Hmac(_) => "hmac-sha256",
            Secret::Ed25519(_) => "ed25519",
        }
    }

    /// The public half of an Ed25519 key, to hand to verifiers; `None` for
    /// an HMAC key, which has none.
    pub fn public_key(&self) -> Option<[u8; 32]> {
        match &self.secret {
            Secret::Hmac(_) => None,
            Secret::Ed25519(k) => Some(k.verifying_key().to_bytes()),
        }
    }

    pub(crate) fn sign(&self, message: &[u8]) -> Vec<u8> {
        match &self.secret {
            Secret::Hmac(secret) => {
                let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
                mac.update(message);
                mac.finalize().into_bytes().to_vec()
            }
            Secret::Ed25519(k) => k.sign(message).to_bytes().to_vec(),
        }
    }
}

#[derive(Clone)]
enum Public {
    Hmac(Arc<[u8]>),
    Ed25519(ed25519_dalek::VerifyingKey),
}

/// Which events a key may sign: patterns of `source` and of `type`, each
/// exact or ending in `*` for a prefix. An empty list allows any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyScope {
    sources: Vec<String>,
    types: Vec<String>,
}

impl KeyScope {
    fn matches(patterns: &[String], value: &str) -> bool {
        patterns.is_empty()
            || patterns.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => value.starts_with(prefix),
                None => p == value,
            })
    }

    /// `None` when the scope allows an event of `source` and `event_type`,
    /// else what it refuses.
    pub(crate) fn refusal(&self, source: &str, event_type: &str) -> Option<String> {
        if !Self::matches(&self.sources, source) {
            return Some(format!(
                "source `{source}` (allowed: {})",
                self.sources.join(", ")
            ));
        }
        if !Self::matches(&self.types, event_type) {
            return Some(format!(
                "type `{event_type}` (allowed: {})",
                self.types.join(", ")
            ));
        }
        None
    }
}

/// A key a consumer checks signatures with, and what it may sign.
///
/// ```
/// use busline_layers::signing::{SigningKey, VerifyingKey};
/// let payments = SigningKey::ed25519("payments-1", [3u8; 32]).unwrap();
/// let check = VerifyingKey::ed25519("payments-1", payments.public_key().unwrap())
///     .unwrap()
///     .allow_sources(["payments"])
///     .allow_types(["payment.*"]);
/// # let _ = check;
/// ```
#[derive(Clone)]
pub struct VerifyingKey {
    id: Arc<str>,
    public: Public,
    scope: KeyScope,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algorithm = match self.public {
            Public::Hmac(_) => "hmac-sha256",
            Public::Ed25519(_) => "ed25519",
        };
        f.debug_struct("VerifyingKey")
            .field("id", &self.id)
            .field("algorithm", &algorithm)
            .field("scope", &self.scope)
            .finish()
    }
}

impl VerifyingKey {
    /// The HMAC-SHA256 secret shared with the publisher.
    pub fn hmac_sha256(id: &str, secret: impl AsRef<[u8]>) -> Result<Self, KeyError> {
        Ok(Self {
            id: check_id(id)?,
            public: Public::Hmac(hmac_secret(id, secret.as_ref())?),
            scope: KeyScope::default(),
        })
    }

    /// An Ed25519 public key ([`SigningKey::public_key`]).
    pub fn ed25519(id: &str, public: [u8; 32]) -> Result<Self, KeyError> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(&public)
            .map_err(|_| KeyError::InvalidPublicKey(id.to_owned()))?;
        Ok(Self {
            id: check_id(id)?,
            public: Public::Ed25519(key),
            scope: KeyScope::default(),
        })
    }

    /// What checks the signatures of `key`: its public half for Ed25519,
    /// the shared secret for HMAC.
    pub fn of(key: &SigningKey) -> Self {
        let public = match &key.secret {
            Secret::Hmac(s) => Public::Hmac(s.clone()),
            Secret::Ed25519(k) => Public::Ed25519(k.verifying_key()),
        };
        Self {
            id: key.id.clone(),
            public,
            scope: KeyScope::default(),
        }
    }

    /// Limits the key to events whose `source` matches one of `patterns`
    /// (exact, or a prefix ending in `*`).
    pub fn allow_sources<I: IntoIterator<Item = S>, S: Into<String>>(mut self, patterns: I) -> Self {
        self.scope.sources = patterns.into_iter().map(Into::into).collect();
        self
    }

    /// Limits the key to events whose `type` matches one of `patterns`
    /// (exact, or a prefix ending in `*`).
    pub fn allow_types<I: IntoIterator<Item = S>, S: Into<String>>(mut self, patterns: I) -> Self {
        self.scope.types = patterns.into_iter().map(Into::into).collect();
        self
    }

    /// The key id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What the key may sign.
    pub fn scope(&self) -> &KeyScope {
        &self.scope
    }

    /// Whether `signature` is this key's over `message`; HMACs are compared
    /// in constant time.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.public {
            Public::Hmac(secret) => {
                let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
                mac.update(message);
                mac.verify_slice(signature).is_ok()
            }
            Public::Ed25519(key) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify_strict(message, &sig).is_ok()),
        }
    }
}

/// The verification keys a consumer accepts, by id.
///
/// Clones share one set, so a service can roll keys while running: add the
/// new key everywhere, switch the publishers to it, remove the old one once
/// no event signed with it is left to consume.
///
/// ```
/// use busline_layers::signing::{Keyring, SigningKey, VerifyingKey};
/// let old = SigningKey::hmac_sha256("orders-1", [1u8; 32]).unwrap();
/// let new = SigningKey::hmac_sha256("orders-2", [2u8; 32]).unwrap();
/// let keyring = Keyring::new()
///     .with(VerifyingKey::of(&old))
///     .with(VerifyingKey::of(&new));
/// keyring.remove("orders-1");
/// assert_eq!(keyring.ids(), vec!["orders-2".to_owned()]);
/// ```
#[derive(Clone, Default)]
pub struct Keyring {
    keys: Arc<RwLock<HashMap<Arc<str>, VerifyingKey>>>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring").field("ids", &self.ids()).finish()
    }
}

impl Keyring {
    /// An empty keyring: every signed event is refused as `unknown_key`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key` (replacing a key of the same id).
    pub fn with(self, key: VerifyingKey) -> Self {
        self.insert(key);
        self
    }

    /// Adds `key` (replacing a key of the same id) to every clone.
    pub fn insert(&self, key: VerifyingKey) {
        self.write().insert(key.id.clone(), key);
    }

    /// Retires key `id`; events signed with it are refused from now on.
    pub fn remove(&self, id: &str) -> Option<VerifyingKey> {
        self.write().remove(id)
    }

    /// The ids held, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.read().keys().map(|k| k.to_string()).collect();
        ids.sort();
        ids
    }

    pub(crate) fn get(&self, id: &str) -> Option<VerifyingKey> {
        self.read().get(id).cloned()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Arc<str>, VerifyingKey>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Arc<str>, VerifyingKey>> {
        self.keys.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_when_built() {
        assert!(matches!(
            SigningKey::hmac_sha256("k", [0u8; 31]),
            Err(KeyError::ShortSecret { len: 31, .. })
        ));
        assert!(matches!(
            SigningKey::hmac_sha256("has space", [0u8; 32]),
            Err(KeyError::InvalidId(_))
        ));
        assert!(matches!(
            SigningKey::ed25519("", [0u8; 32]),
            Err(KeyError::InvalidId(_))
        ));
        // About half of all y coordinates are on no point of the curve.
        let refused = (2u8..=255)
            .map(|y| {
                let mut public = [0u8; 32];
                public[0] = y;
                VerifyingKey::ed25519("k", public)
            })
            .find(Result::is_err);
        assert!(
            matches!(refused, Some(Err(KeyError::InvalidPublicKey(_)))),
            "{refused:?}"
        );
    }

    #[test]
    fn debug_shows_no_secret() {
        let secret = [0x5au8; 32];
        let hmac = SigningKey::hmac_sha256("k1", secret).unwrap();
        let ed = SigningKey::ed25519("k2", secret).unwrap();
        let text = format!(
            "{hmac:?} {ed:?} {:?} {:?}",
            VerifyingKey::of(&hmac),
            Keyring::new().with(VerifyingKey::of(&ed))
        );
        assert!(text.contains("k1") && text.contains("k2"), "{text}");
        for needle in ["90, 90", "5a5a", "0x5a", "Zlpa"] {
            assert!(!text.contains(needle), "{text}");
        }
    }

    #[test]
    fn signatures_verify_only_with_their_key() {
        let a = SigningKey::hmac_sha256("a", [1u8; 32]).unwrap();
        let b = SigningKey::hmac_sha256("a", [2u8; 32]).unwrap();
        let ed = SigningKey::ed25519("e", [3u8; 32]).unwrap();
        let sig = a.sign(b"message");
        assert!(VerifyingKey::of(&a).verify(b"message", &sig));
        assert!(!VerifyingKey::of(&a).verify(b"messagf", &sig));
        assert!(!VerifyingKey::of(&b).verify(b"message", &sig));
        let sig = ed.sign(b"message");
        let public = VerifyingKey::ed25519("e", ed.public_key().unwrap()).unwrap();
        assert!(public.verify(b"message", &sig));
        assert!(!public.verify(b"message", &sig[..63]));
        // An HMAC verifier never takes an Ed25519 signature and back.
        assert!(!VerifyingKey::of(&a).verify(b"message", &sig));
        assert!(!public.verify(b"message", &a.sign(b"message")));
    }

    #[test]
    fn scopes_match_exactly_or_by_prefix() {
        let key = VerifyingKey::of(&SigningKey::hmac_sha256("p", [1u8; 32]).unwrap())
            .allow_sources(["payments", "billing/*"])
            .allow_types(["payment.*"]);
        let scope = key.scope();
        assert_eq!(scope.refusal("payments", "payment.captured"), None);
        assert_eq!(scope.refusal("billing/eu", "payment.captured"), None);
        assert!(scope.refusal("payments-eu", "payment.captured").is_some());
        assert!(scope.refusal("orders", "payment.captured").is_some());
        assert!(scope.refusal("payments", "order.created").is_some());
        assert_eq!(KeyScope::default().refusal("anyone", "anything"), None);
    }
}
