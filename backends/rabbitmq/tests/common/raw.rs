//! A raw AMQP 0-9-1 client on a TCP socket, for writing what lapin refuses
//! to write and reading what lapin cannot parse.
//!
//! lapin keeps short strings (header-table keys, `content_type`) as Rust
//! `String`s (`amq-protocol-types` `ShortString(String)`), so it can neither
//! build nor parse a short string that is not UTF-8; a foreign producer
//! (pika, the Java client) writes any bytes there and the broker passes
//! them on. This client speaks just enough of the protocol for the tests:
//! the handshake (PLAIN), one channel, confirmed `basic.publish` with a
//! content type, a header table of long-string values and a body, and
//! `basic.get` that returns the properties and body as bytes. Every call is
//! bounded by the deadline given to it.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xce;
const BASIC: u16 = 60;
/// What we offer in tune-ok; the broker's own maximum if lower.
const FRAME_MAX: u32 = 131_072;

/// One message as a foreign producer writes it: every string as bytes.
#[derive(Debug, Clone, Default)]
pub struct RawMessage {
    pub exchange: String,
    pub routing_key: String,
    /// The `content_type` property (a short string), any bytes.
    pub content_type: Option<Vec<u8>>,
    /// The header table: keys (short strings) and long-string values, any
    /// bytes; written in this order, duplicates included.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// A message read with `basic.get`.
#[derive(Debug, Clone)]
pub struct Got {
    /// The content header's property flags and list, undecoded.
    pub properties: Vec<u8>,
    pub body: Vec<u8>,
    /// Messages left in the queue.
    pub message_count: u32,
}

/// An open connection with channel 1 open.
pub struct RawClient {
    stream: TcpStream,
    frame_max: u32,
    confirming: bool,
    published: u64,
}

struct Frame {
    kind: u8,
    payload: Vec<u8>,
}

/// The parts of an `amqp://user:pass@host:port/vhost` URL.
struct Target {
    addr: String,
    user: String,
    pass: String,
    vhost: String,
}

fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("amqp://")
        .ok_or_else(|| format!("not an amqp:// URL: {url}"))?;
    let rest = rest.split('?').next().unwrap_or_default();
    let (auth, rest) = rest.rsplit_once('@').unwrap_or(("guest:guest", rest));
    let (user, pass) = auth.split_once(':').unwrap_or((auth, ""));
    let (hostport, vhost) = rest.split_once('/').unwrap_or((rest, ""));
    let addr = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:5672")
    };
    let vhost = match vhost {
        "" => "/".to_owned(),
        v => percent_decode(v),
    };
    Ok(Target {
        addr,
        user: percent_decode(user),
        pass: percent_decode(pass),
        vhost,
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn short(out: &mut Vec<u8>, s: &[u8]) -> Result<(), String> {
    let len = u8::try_from(s.len()).map_err(|_| format!("short string of {} bytes", s.len()))?;
    out.push(len);
    out.extend_from_slice(s);
    Ok(())
}

fn long(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

fn table(out: &mut Vec<u8>, entries: &[(Vec<u8>, Vec<u8>)]) -> Result<(), String> {
    let mut body = Vec::new();
    for (k, v) in entries {
        short(&mut body, k)?;
        body.push(b'S');
        long(&mut body, v);
    }
    long(out, &body);
    Ok(())
}

fn method(class: u16, id: u16, args: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(4 + args.len());
    p.extend_from_slice(&class.to_be_bytes());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(args);
    p
}

/// A cursor over a method's arguments.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.0.len() < n {
            return Err("truncated frame".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn short(&mut self) -> Result<Vec<u8>, String> {
        let n = self.take(1)?[0] as usize;
        Ok(self.take(n)?.to_vec())
    }
}

impl RawClient {
    /// Connects, logs in and opens channel 1, all within `limit`.
    pub async fn connect(url: &str, limit: Duration) -> Result<Self, String> {
        tokio::time::timeout(limit, Self::connect_unbounded(url))
            .await
            .map_err(|_| format!("raw AMQP handshake with {url}: no answer within {limit:?}"))?
    }

    async fn connect_unbounded(url: &str) -> Result<Self, String> {
        let target = parse_url(url)?;
        let stream = TcpStream::connect(&target.addr)
            .await
            .map_err(|e| format!("raw AMQP connect to {}: {e}", target.addr))?;
        let mut c = Self {
            stream,
            frame_max: FRAME_MAX,
            confirming: false,
            published: 0,
        };
        c.stream
            .write_all(b"AMQP\x00\x00\x09\x01")
            .await
            .map_err(|e| e.to_string())?;
        c.expect_method(0, 10, 10).await?; // connection.start
        let mut args = Vec::new();
        table(&mut args, &[])?; // client properties
        short(&mut args, b"PLAIN")?;
        let mut response = vec![0];
        response.extend_from_slice(target.user.as_bytes());
        response.push(0);
        response.extend_from_slice(target.pass.as_bytes());
        long(&mut args, &response);
        short(&mut args, b"en_US")?;
        c.send_method(0, 10, 11, &args).await?; // start-ok
        let tune = c.expect_method(0, 10, 30).await?;
        let mut r = Reader(&tune);
        let channel_max = r.u16()?;
        let frame_max = r.u32()?;
        if frame_max != 0 {
            c.frame_max = frame_max.min(FRAME_MAX);
        }
        let mut args = Vec::new();
        args.extend_from_slice(&channel_max.to_be_bytes());
        args.extend_from_slice(&c.frame_max.to_be_bytes());
        args.extend_from_slice(&0u16.to_be_bytes()); // no heartbeats
        c.send_method(0, 10, 31, &args).await?; // tune-ok
        let mut args = Vec::new();
        short(&mut args, target.vhost.as_bytes())?;
        short(&mut args, b"")?;
        args.push(0);
        c.send_method(0, 10, 40, &args).await?; // connection.open
        c.expect_method(0, 10, 41).await?;
        c.send_method(1, 20, 10, &[0]).await?; // channel.open, reserved ""
        c.expect_method(1, 20, 11).await?;
        Ok(c)
    }

    async fn send_frame(&mut self, kind: u8, channel: u16, payload: &[u8]) -> Result<(), String> {
        let mut f = Vec::with_capacity(payload.len() + 8);
        f.push(kind);
        f.extend_from_slice(&channel.to_be_bytes());
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f.push(FRAME_END);
        self.stream.write_all(&f).await.map_err(|e| e.to_string())
    }

    async fn send_method(&mut self, channel: u16, class: u16, id: u16, args: &[u8]) -> Result<(), String> {
        self.send_frame(FRAME_METHOD, channel, &method(class, id, args))
            .await
    }

    async fn read_frame(&mut self) -> Result<Frame, String> {
        loop {
            let mut head = [0u8; 7];
            self.stream
                .read_exact(&mut head)
                .await
                .map_err(|e| format!("raw AMQP read: {e}"))?;
            let size = u32::from_be_bytes(head[3..7].try_into().unwrap()) as usize;
            let mut payload = vec![0u8; size + 1];
            self.stream
                .read_exact(&mut payload)
                .await
                .map_err(|e| format!("raw AMQP read: {e}"))?;
            if payload.pop() != Some(FRAME_END) {
                return Err("raw AMQP: bad frame end".into());
            }
            if head[0] == FRAME_HEARTBEAT {
                continue;
            }
            return Ok(Frame {
                kind: head[0],
                payload,
            });
        }
    }

    /// The next method frame's (class, method, arguments); a close from
    /// the broker is an error with its reply text.
    async fn read_method(&mut self) -> Result<(u16, u16, Vec<u8>), String> {
        let frame = self.read_frame().await?;
        if frame.kind != FRAME_METHOD {
            return Err(format!(
                "raw AMQP: expected a method, got frame type {}",
                frame.kind
            ));
        }
        let mut r = Reader(&frame.payload);
        let (class, id) = (r.u16()?, r.u16()?);
        let args = r.0.to_vec();
        if (class, id) == (10, 50) || (class, id) == (20, 40) {
            let mut r = Reader(&args);
            let code = r.u16()?;
            let text = String::from_utf8_lossy(&r.short()?).into_owned();
            return Err(format!(
                "the broker closed the {}: {code} {text}",
                if class == 10 { "connection" } else { "channel" }
            ));
        }
        Ok((class, id, args))
    }

    async fn expect_method(&mut self, _channel: u16, class: u16, id: u16) -> Result<Vec<u8>, String> {
        let (c, m, args) = self.read_method().await?;
        if (c, m) != (class, id) {
            return Err(format!("raw AMQP: expected {class}.{id}, got {c}.{m}"));
        }
        Ok(args)
    }

    /// Publishes `message` on channel 1 in confirm mode and waits for the
    /// broker's ack, within `limit`.
    pub async fn publish(&mut self, message: &RawMessage, limit: Duration) -> Result<(), String> {
        tokio::time::timeout(limit, self.publish_unbounded(message))
            .await
            .map_err(|_| format!("raw AMQP publish: no confirmation within {limit:?}"))?
    }

    async fn publish_unbounded(&mut self, m: &RawMessage) -> Result<(), String> {
        if !self.confirming {
            self.send_method(1, 85, 10, &[0]).await?; // confirm.select
            self.expect_method(1, 85, 11).await?;
            self.confirming = true;
        }
        let mut args = Vec::new();
        args.extend_from_slice(&0u16.to_be_bytes());
        short(&mut args, m.exchange.as_bytes())?;
        short(&mut args, m.routing_key.as_bytes())?;
        args.push(0); // not mandatory, not immediate
        self.send_method(1, BASIC, 40, &args).await?;

        let mut flags: u16 = 0;
        let mut props = Vec::new();
        if let Some(ct) = &m.content_type {
            flags |= 1 << 15;
            short(&mut props, ct)?;
        }
        flags |= 1 << 13;
        table(&mut props, &m.headers)?;
        flags |= 1 << 12;
        props.push(2); // persistent
        let mut header = Vec::new();
        header.extend_from_slice(&BASIC.to_be_bytes());
        header.extend_from_slice(&0u16.to_be_bytes());
        header.extend_from_slice(&(m.body.len() as u64).to_be_bytes());
        header.extend_from_slice(&flags.to_be_bytes());
        header.extend_from_slice(&props);
        self.send_frame(FRAME_HEADER, 1, &header).await?;
        let chunk = (self.frame_max as usize).saturating_sub(8).max(1);
        for part in m.body.chunks(chunk) {
            self.send_frame(FRAME_BODY, 1, part).await?;
        }
        self.published += 1;
        let (class, id, args) = self.read_method().await?;
        let tag = Reader(&args).u64()?;
        match (class, id) {
            (BASIC, 80) if tag == self.published => Ok(()),
            (BASIC, 120) => Err("the broker nacked the message".into()),
            other => Err(format!(
                "raw AMQP: expected basic.ack {}, got {other:?} tag {tag}",
                self.published
            )),
        }
    }

    /// Takes one message off `queue` (`basic.get`, no ack needed), within
    /// `limit`; `None` if the queue is empty.
    pub async fn get(&mut self, queue: &str, limit: Duration) -> Result<Option<Got>, String> {
        tokio::time::timeout(limit, self.get_unbounded(queue))
            .await
            .map_err(|_| format!("raw AMQP basic.get: no answer within {limit:?}"))?
    }

    async fn get_unbounded(&mut self, queue: &str) -> Result<Option<Got>, String> {
        let mut args = Vec::new();
        args.extend_from_slice(&0u16.to_be_bytes());
        short(&mut args, queue.as_bytes())?;
        args.push(1); // no-ack: the message is taken
        self.send_method(1, BASIC, 70, &args).await?;
        let (class, id, args) = self.read_method().await?;
        match (class, id) {
            (BASIC, 72) => return Ok(None),
            (BASIC, 71) => {}
            other => return Err(format!("raw AMQP: expected get-ok, got {other:?}")),
        }
        let mut r = Reader(&args);
        r.u64()?; // delivery tag
        r.take(1)?; // redelivered
        r.short()?; // exchange
        r.short()?; // routing key
        let message_count = r.u32()?;
        let header = self.read_frame().await?;
        if header.kind != FRAME_HEADER {
            return Err("raw AMQP: expected a content header".into());
        }
        let mut r = Reader(&header.payload);
        r.u16()?;
        r.u16()?;
        let size = r.u64()? as usize;
        let properties = r.0.to_vec();
        let mut body = Vec::with_capacity(size);
        while body.len() < size {
            let frame = self.read_frame().await?;
            if frame.kind != FRAME_BODY {
                return Err("raw AMQP: expected a body frame".into());
            }
            body.extend_from_slice(&frame.payload);
        }
        Ok(Some(Got {
            properties,
            body,
            message_count,
        }))
    }

    /// Closes the connection politely, within a second.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let mut args = Vec::new();
            args.extend_from_slice(&200u16.to_be_bytes());
            short(&mut args, b"done")?;
            args.extend_from_slice(&0u32.to_be_bytes());
            self.send_method(0, 10, 50, &args).await?;
            loop {
                let (c, m, _) = self.read_method().await?;
                if (c, m) == (10, 51) {
                    return Ok::<_, String>(());
                }
            }
        })
        .await;
    }
}

/// Publishes `messages` in order on one fresh connection, each confirmed,
/// within `limit` each.
pub async fn publish(url: &str, messages: &[RawMessage], limit: Duration) -> Result<(), String> {
    let mut client = RawClient::connect(url, limit).await?;
    for m in messages {
        client.publish(m, limit).await?;
    }
    client.close().await;
    Ok(())
}

/// Takes every message off `queue` (at most `max`) on one fresh
/// connection.
pub async fn drain(url: &str, queue: &str, max: usize, limit: Duration) -> Result<Vec<Got>, String> {
    let mut client = RawClient::connect(url, limit).await?;
    let mut out = Vec::new();
    while out.len() < max {
        match client.get(queue, limit).await? {
            Some(got) => out.push(got),
            None => break,
        }
    }
    client.close().await;
    Ok(out)
}
