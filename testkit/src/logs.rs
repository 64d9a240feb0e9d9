//! Every log line of a test process, captured in memory, so a test can
//! check what busline and the broker clients wrote (that no password shows
//! in it, say).

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use tracing_subscriber::fmt::MakeWriter;

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buffer {
    type Writer = Buffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

static BUFFER: OnceLock<Option<Buffer>> = OnceLock::new();

/// The log lines captured since [`capture`] was first called.
#[derive(Clone)]
pub struct CapturedLogs(Buffer);

impl std::fmt::Debug for CapturedLogs {
    // The lines themselves may be long; their count says enough.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes = self.0 .0.lock().map(|b| b.len()).unwrap_or(0);
        f.debug_struct("CapturedLogs").field("bytes", &bytes).finish()
    }
}

/// Installs (once per process) a global subscriber that records every event
/// of every target at `TRACE` level, with its fields, from every thread
/// (librdkafka's threads included), and returns its buffer. Panics if the
/// process already has another global subscriber: what it logs would not
/// be seen.
pub fn capture() -> CapturedLogs {
    let buffer = BUFFER.get_or_init(|| {
        let buffer = Buffer::default();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(buffer.clone())
            .try_init()
            .ok()
            .map(|()| buffer)
    });
    CapturedLogs(
        buffer
            .clone()
            .expect("another global tracing subscriber was installed before logs::capture()"),
    )
}

impl CapturedLogs {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0 .0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Lines logged so far.
    pub fn lines(&self) -> usize {
        self.text().lines().count()
    }
}

/// `s` with every byte but RFC 3986's unreserved ones (`A-Za-z0-9-._~`)
/// percent-encoded: how a password goes into a URL's userinfo.
///
/// ```
/// assert_eq!(busline_testkit::logs::percent_encoded("p@ss/w-d"), "p%40ss%2Fw-d");
/// ```
pub fn percent_encoded(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Panics naming the secret and the place if any of `secrets` (or its
/// percent-encoded form) occurs in any of `shown` (pairs of a description
/// and a text: captured logs, an error's `Display` and `Debug`, …).
pub fn assert_no_secret(secrets: &[&str], shown: &[(&str, &str)]) {
    for secret in secrets {
        let encoded = percent_encoded(secret);
        for (what, text) in shown {
            for form in [*secret, encoded.as_str()] {
                if let Some(at) = text.find(form) {
                    let from = text[..at].char_indices().rev().nth(200).map_or(0, |(i, _)| i);
                    panic!(
                        "the secret {secret:?} shows in {what}: …{}…",
                        &text[from..(at + form.len()).min(text.len())]
                    );
                }
            }
        }
    }
}
