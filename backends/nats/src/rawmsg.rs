//! A stored message read as bytes: the header block parsed here rather than
//! by async-nats, which drops the connection on what it cannot parse, so
//! that a message no client can read can still be dead-lettered.

use std::str::FromStr;

use async_nats::HeaderMap;
use percent_encoding::{percent_encode, NON_ALPHANUMERIC};

/// What could be read out of a raw header block.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Recovered {
    /// Headers async-nats reads back as they are, in order.
    pub(crate) kept: Vec<(String, String)>,
    /// One description per header left out (percent-encoded bytes and why).
    pub(crate) dropped: Vec<String>,
    /// Whether async-nats would parse the block as it is.
    pub(crate) parseable: bool,
}

impl Recovered {
    /// The kept headers as a map.
    pub(crate) fn map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in &self.kept {
            map.append(name.as_str(), value.as_str());
        }
        map
    }
}

fn shown(bytes: &[u8]) -> String {
    percent_encode(bytes, NON_ALPHANUMERIC).to_string()
}

fn trim(mut b: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = b {
        if !first.is_ascii_whitespace() {
            break;
        }
        b = rest;
    }
    while let [rest @ .., last] = b {
        if !last.is_ascii_whitespace() {
            break;
        }
        b = rest;
    }
    b
}

/// Reads `block` (`NATS/1.0` and `name: value` lines) the way async-nats
/// does, line by line, keeping every header it would accept and describing
/// every other.
pub(crate) fn recover(block: &[u8]) -> Recovered {
    let mut out = Recovered {
        parseable: std::str::from_utf8(block).is_ok(),
        ..Default::default()
    };
    let mut lines = block
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .peekable();
    match lines.next() {
        Some(version) if version.starts_with(b"NATS/1.0") => {}
        _ => out.parseable = false,
    }
    while let Some(line) = lines.next() {
        if line.is_empty() {
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            out.dropped.push(format!("line `{}` (no colon)", shown(line)));
            out.parseable = false;
            continue;
        };
        let name = &line[..colon];
        // Folded continuation lines belong to this value, as async-nats reads them.
        let mut value = trim(&line[colon + 1..]).to_vec();
        while let Some(more) = lines.next_if(|l| l.first().is_some_and(u8::is_ascii_whitespace)) {
            value.extend_from_slice(more);
        }
        let value = trim(&value);
        let readable_name = std::str::from_utf8(name)
            .ok()
            .filter(|n| async_nats::HeaderName::from_str(n).is_ok());
        let readable_value = std::str::from_utf8(value).ok();
        match (readable_name, readable_value) {
            (Some(n), Some(v)) => out.kept.push((n.to_owned(), v.to_owned())),
            (n, v) => {
                let why = match (n, v) {
                    (None, None) => "name and value unreadable",
                    (None, _) => "name unreadable",
                    _ => "value not UTF-8",
                };
                out.dropped
                    .push(format!("`{}: {}` ({why})", shown(name), shown(value)));
                out.parseable = false;
            }
        }
    }
    out
}

/// Standard base64 with padding, as the JetStream API writes message bytes.
pub(crate) fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    fn sextet(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = text.trim().as_bytes();
    let body = bytes
        .strip_suffix(b"==")
        .or_else(|| bytes.strip_suffix(b"="))
        .unwrap_or(bytes);
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in body {
        let v = sextet(c).ok_or_else(|| format!("not base64: byte {c:#04x}"))?;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_all_tail_lengths() {
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(base64_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64_decode("//7/").unwrap(), b"\xff\xfe\xff");
        assert!(base64_decode("Zm9v!").is_err());
    }

    #[test]
    fn unreadable_headers_are_dropped_and_described() {
        let block = b"NATS/1.0\r\nce-id: e-1\r\nce-tenant: \xff\xfe\r\nx-\xff: 1\r\nn\xc3\xa4ts: 2\r\nfolded: a\r\n  b\r\nnocolon\r\n\r\n";
        let r = recover(block);
        assert!(!r.parseable);
        assert_eq!(
            r.kept,
            [
                ("ce-id".to_owned(), "e-1".to_owned()),
                ("folded".into(), "a  b".into())
            ]
        );
        assert_eq!(
            r.dropped,
            [
                "`ce%2Dtenant: %FF%FE` (value not UTF-8)",
                "`x%2D%FF: 1` (name unreadable)",
                // Valid UTF-8, but async-nats refuses the name.
                "`n%C3%A4ts: 2` (name unreadable)",
                "line `nocolon` (no colon)",
            ]
        );
        let ok = recover(b"NATS/1.0\r\nce-id: e-1\r\n\r\n");
        assert!(ok.parseable && ok.dropped.is_empty());
        assert_eq!(ok.map().get("ce-id").unwrap().as_str(), "e-1");
    }
}
