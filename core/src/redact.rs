//! The one redactor of busline: every `Debug`, `Display`, log line and error
//! that shows a broker URL or a configuration value goes through it.
//!
//! * A URL's userinfo is everything before the **last** `@` of its item, so
//!   a password may hold `/`, `?`, `#`, `@`, `:`, `,` or percent-escapes
//!   and still never shows: `amqp://orders:pa/ss@rabbit/%2f` prints as
//!   `amqp://orders:***@rabbit/%2f`. A `@` in a query (`?x=a@b`) makes
//!   the redactor hide more than the password, never less.
//! * A seed list is redacted item by item: both `nats://u:p@h1,nats://u:p@h2`
//!   (each item with its own scheme and credentials) and
//!   `amqp://u:p@h1,h2/vhost` (one set of credentials for every host). A
//!   new item starts at a comma followed by the first item's scheme and
//!   `://`; a password holding that very sequence must be percent-encoded.
//! * Query parameters and configuration keys that name a secret
//!   ([`is_secret_key`], one list: [`SECRET_KEY_FRAGMENTS`]) show as `***`.
//!
//! Configurations also keep their secrets out of `Serialize`: a
//! [`BrokerUrl`](crate::BrokerUrl), a [`BackendSection`](crate::BackendSection)
//! and the backends' property maps serialize redacted, unless serialized
//! inside [`with_secrets`], which is how a program that must write a
//! configuration back (to a file it protects) asks for the secrets.

use std::borrow::Cow;
use std::cell::Cell;

use percent_encoding::percent_decode_str;

/// What stands for a hidden secret.
pub const MASK: &str = "***";

/// Fragments of configuration keys (and URL query keys) that name a secret,
/// matched case-insensitively anywhere in the key. Besides these, keys that
/// start with `ssl.key.` (librdkafka's `ssl.key.pem`, `ssl.key.password`,
/// `ssl.key.location`) or end with `.pem` (inline PEM material) are secret.
pub const SECRET_KEY_FRAGMENTS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "credential",
    "passphrase",
    "private_key",
    "privatekey",
    "api_key",
    "apikey",
    "nkey",
    "jwt",
    // librdkafka: `sasl.jaas.config`, `sasl.oauthbearer.config` (may hold
    // a client secret), `sasl.oauthbearer.client.secret`.
    "sasl.jaas",
    "sasl.oauthbearer.config",
    "sasl.kerberos.keytab",
];

/// Whether a configuration key (or URL query key) names a secret: see
/// [`SECRET_KEY_FRAGMENTS`].
pub fn is_secret_key(key: &str) -> bool {
    let k = percent_decode_str(key).decode_utf8_lossy().to_ascii_lowercase();
    let k = k.trim();
    SECRET_KEY_FRAGMENTS.iter().any(|s| k.contains(s)) || k.starts_with("ssl.key.") || k.ends_with(".pem")
}

/// The value of configuration `key` as it may be shown: `***` for a secret
/// key, the value with its URL redacted if it holds one (a non-secret key
/// may still hold a URL with credentials, e.g. an OAuth endpoint), as it
/// is otherwise (`kafka/host@REALM` is a principal, not a secret).
pub fn redact_value<'a>(key: &str, value: &'a str) -> Cow<'a, str> {
    if is_secret_key(key) {
        Cow::Borrowed(MASK)
    } else if value.contains("://") {
        Cow::Owned(redact_url(value))
    } else {
        Cow::Borrowed(value)
    }
}

/// `url` with every password (or token standing as user name) replaced by
/// `***`, and the values of secret query parameters too. Seed lists are
/// redacted item by item; see the [module documentation](self).
///
/// ```
/// use busline_core::redact::redact_url;
/// assert_eq!(redact_url("amqp://orders:pa/ss@rabbit:5672/%2f"), "amqp://orders:***@rabbit:5672/%2f");
/// assert_eq!(
///     redact_url("nats://u:p1@h1:4222,nats://v:p2@h2:4222"),
///     "nats://u:***@h1:4222,nats://v:***@h2:4222"
/// );
/// assert_eq!(redact_url("kafka://a:9092,b:9092"), "kafka://a:9092,b:9092");
/// ```
pub fn redact_url(url: &str) -> String {
    let url = url.trim();
    let Some((scheme, rest)) = split_scheme(url) else {
        // No scheme: a bare `user:pass@host` still hides its userinfo.
        return redact_item(url);
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    out.push_str("://");
    let mut first = true;
    for (separator, item) in seed_items(scheme, rest) {
        if !first {
            out.push_str(separator);
        }
        first = false;
        out.push_str(&redact_item(item));
    }
    out
}

/// The scheme and what follows `://`, if `url` starts with a valid scheme.
fn split_scheme(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some((scheme, rest))
}

/// The items of a seed list (`rest` is what follows the first `scheme://`),
/// each with the separator before it (`,scheme://`, empty for the first).
/// An item starts at a comma followed (after blanks) by `scheme://`, the
/// scheme compared without case.
pub fn seed_items<'a>(scheme: &str, rest: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut items = Vec::new();
    let mut start = 0;
    let mut separator = "";
    let bytes = rest.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b',' {
            let after = rest[i + 1..].trim_start();
            let skipped = rest.len() - (i + 1) - after.len();
            let head = after.get(..scheme.len() + 3);
            if head.is_some_and(|h| {
                h[..scheme.len()].eq_ignore_ascii_case(scheme) && &h[scheme.len()..] == "://"
            }) {
                items.push((separator, &rest[start..i]));
                let end = i + 1 + skipped + scheme.len() + 3;
                separator = &rest[i..end];
                start = end;
                i = end;
                continue;
            }
        }
        i += 1;
    }
    items.push((separator, &rest[start..]));
    items
}

/// Splits one item (what follows `scheme://`) into its userinfo (before its
/// last `@`, if any) and the rest (hosts, path, query).
pub fn split_userinfo(item: &str) -> (Option<&str>, &str) {
    match item.rfind('@') {
        Some(at) => (Some(&item[..at]), &item[at + 1..]),
        None => (None, item),
    }
}

fn redact_item(item: &str) -> String {
    let (userinfo, hosts_and_tail) = split_userinfo(item);
    let tail_start = hosts_and_tail
        .find(['/', '?', '#'])
        .unwrap_or(hosts_and_tail.len());
    let (hosts, tail) = hosts_and_tail.split_at(tail_start);
    let mut out = String::with_capacity(item.len());
    match userinfo {
        None => {}
        // A user name cannot hold a raw `:`, so the first one ends it.
        Some(userinfo) => match userinfo.split_once(':') {
            Some((user, _)) => {
                out.push_str(user);
                out.push(':');
                out.push_str(MASK);
                out.push('@');
            }
            // A lone user name may be a token (NATS): hidden too.
            None => {
                out.push_str(MASK);
                out.push('@');
            }
        },
    }
    out.push_str(hosts);
    out.push_str(&redact_tail(tail));
    out
}

/// A path, query and fragment with the values of secret query keys hidden.
fn redact_tail(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => format!("{k}={}", redact_value(k, v)),
            None => pair.to_owned(),
        })
        .collect();
    let mut out = format!("{path}?{}", pairs.join("&"));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

thread_local! {
    static EXPOSE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with secrets exposed to `Serialize`: configurations serialized
/// inside it (on this thread) keep their passwords, tokens and keys, so a
/// program can write a configuration back. Everywhere else they serialize
/// redacted. `Debug` and `Display` never expose secrets.
///
/// ```
/// let config = busline_core::BusConfig::from_url("amqp://app:s3cret@rabbit/%2f");
/// let shown = serde_json::to_string(&config).unwrap();
/// assert!(!shown.contains("s3cret"));
/// let full = busline_core::redact::with_secrets(|| serde_json::to_string(&config)).unwrap();
/// assert!(full.contains("s3cret"));
/// ```
pub fn with_secrets<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            EXPOSE.with(|e| e.set(self.0));
        }
    }
    let _restore = Restore(EXPOSE.with(|e| e.replace(true)));
    f()
}

/// Whether the current thread is inside [`with_secrets`]; `Serialize`
/// implementations of values holding secrets ask it.
pub fn secrets_exposed() -> bool {
    EXPOSE.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every character a password may hold, raw, and each hostile shape of
    /// URL: none of them may show a byte of the password.
    #[test]
    fn hostile_passwords_never_show() {
        let passwords = [
            "pa/ss",
            "pa?ss",
            "pa#ss",
            "pa@ss",
            "pa:ss",
            "pa,ss",
            "p@/?#:,%40ss",
            "%2Fp%40ss%23",
            "p a ss",
            "p[::1]w",
            "pä§ß",
            "p@ss@word@",
            "p//w",
        ];
        for pw in passwords {
            for url in [
                format!("amqp://orders:{pw}@rabbit:5672/%2f"),
                format!("amqps://orders:{pw}@[::1]:5671/vhost?heartbeat=5"),
                format!("nats://u:{pw}@h1:4222,nats://v:{pw}@h2:4222"),
                format!("nats://u:{pw}@h1:4222, NATS://v:{pw}@[fe80::1%25eth0]:4222/"),
                format!("amqp://u:{pw}@h1:5681,h2:5682,h3/prod?heartbeat=7"),
                format!("kafka://u:{pw}@a:9092,b:9092"),
                format!("kafkas://u:{pw}@a:9093?mechanism=SCRAM-SHA-512"),
                format!("nats://{pw}@host:4222"),
                format!("u:{pw}@host:1"),
                format!("amqp://u:x@h/v?password={pw}&heartbeat=1"),
            ] {
                let shown = redact_url(&url);
                let secret = pw.trim();
                assert!(!shown.contains(secret), "{url} -> {shown}");
                assert!(shown.contains(MASK), "{url} -> {shown}");
            }
        }
    }

    #[test]
    fn hosts_paths_and_queries_stay() {
        let cases = [
            (
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                "amqp://guest:***@127.0.0.1:5672/%2f",
            ),
            (
                "amqp://orders:pa/ss@rabbit:5672/%2f",
                "amqp://orders:***@rabbit:5672/%2f",
            ),
            (
                "amqp://orders:pa#ss@rabbit/v#frag",
                "amqp://orders:***@rabbit/v#frag",
            ),
            ("amqp://o:p%2F%40@[::1]:5672/%2f", "amqp://o:***@[::1]:5672/%2f"),
            ("nats://s3cret@host:4222", "nats://***@host:4222"),
            ("kafka://a:9092,b:9092", "kafka://a:9092,b:9092"),
            ("kafka://[::1]:9092", "kafka://[::1]:9092"),
            (
                "amqps://u:p@h/v?auth_mechanism=plain&password=x",
                "amqps://u:***@h/v?auth_mechanism=plain&password=***",
            ),
            (
                "https://idp/token?client_secret=abc#x",
                "https://idp/token?client_secret=***#x",
            ),
            (
                "nats://u:a@h1:4222,nats://h2:4222, nats://v:b@h3",
                "nats://u:***@h1:4222,nats://h2:4222, nats://v:***@h3",
            ),
            (
                "amqp://u:p,w@h1:5681, h2:5682,h3/prod?heartbeat=7",
                "amqp://u:***@h1:5681, h2:5682,h3/prod?heartbeat=7",
            ),
            ("memory://", "memory://"),
            ("", ""),
            ("not a url", "not a url"),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }

    #[test]
    fn secret_keys_are_one_list() {
        for k in [
            "password",
            "sasl.password",
            "SASL.PASSWORD",
            "ssl.key.pem",
            "ssl.key.password",
            "ssl.key.location",
            "ssl.keystore.password",
            "ssl.certificate.pem",
            "sasl.oauthbearer.config",
            "sasl.oauthbearer.client.secret",
            "sasl.jaas.config",
            "client_secret",
            "token",
            "auth_token",
            "pass%77ord",
            "nkey_seed",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in [
            "linger.ms",
            "sasl.username",
            "sasl.mechanisms",
            "security.protocol",
            "ssl.ca.location",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
        assert_eq!(redact_value("sasl.password", "x"), "***");
        assert_eq!(
            redact_value("sasl.oauthbearer.token.endpoint.url", "https://u:p@idp/t"),
            "***"
        );
        assert_eq!(
            redact_value("endpoint", "https://u:p@idp/t"),
            "https://u:***@idp/t"
        );
        assert_eq!(redact_value("linger.ms", "5"), "5");
        assert_eq!(
            redact_value("sasl.kerberos.principal", "kafka/h@REALM"),
            "kafka/h@REALM"
        );
    }

    #[test]
    fn with_secrets_is_scoped_and_restored_after_a_panic() {
        assert!(!secrets_exposed());
        assert!(with_secrets(secrets_exposed));
        assert!(!secrets_exposed());
        let caught = std::panic::catch_unwind(|| with_secrets(|| panic!("inside")));
        assert!(caught.is_err());
        assert!(!secrets_exposed());
    }
}
