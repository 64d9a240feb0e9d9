//! A raw NATS protocol writer: a TCP socket that speaks `CONNECT` and
//! `HPUB` itself, so a test can store header bytes no client library
//! would write (bytes that are not UTF-8, names async-nats refuses).

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A NATS header block (`NATS/1.0`, one `name: value` line per pair, an
/// empty line), bytes as given.
pub fn header_block(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut block = b"NATS/1.0\r\n".to_vec();
    for (name, value) in pairs {
        block.extend_from_slice(name);
        block.extend_from_slice(b": ");
        block.extend_from_slice(value);
        block.extend_from_slice(b"\r\n");
    }
    block.extend_from_slice(b"\r\n");
    block
}

/// Publishes `payload` with the raw header `block` to `subject` on the
/// server at `url` (`nats://host:port`) and returns JetStream's publish
/// ack (JSON), read off the socket as the reply to the publish.
pub async fn publish(url: &str, subject: &str, block: &[u8], payload: &[u8]) -> Result<String, String> {
    tokio::time::timeout(
        Duration::from_secs(10),
        publish_inner(url, subject, block, payload),
    )
    .await
    .map_err(|_| "no publish ack within 10 s".to_owned())?
}

async fn publish_inner(url: &str, subject: &str, block: &[u8], payload: &[u8]) -> Result<String, String> {
    let addr = url.trim_start_matches("nats://").trim_end_matches('/');
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    stream.read_line(&mut line).await.map_err(|e| e.to_string())?;
    if !line.starts_with("INFO ") {
        return Err(format!("expected INFO, got {line:?}"));
    }
    let inbox = format!("_INBOX.raw.{}", uuid::Uuid::new_v4().simple());
    let mut out = Vec::new();
    out.extend_from_slice(
        br#"CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1,"lang":"raw","version":"0"}"#,
    );
    out.extend_from_slice(format!("\r\nSUB {inbox} 1\r\n").as_bytes());
    out.extend_from_slice(
        format!(
            "HPUB {subject} {inbox} {} {}\r\n",
            block.len(),
            block.len() + payload.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(block);
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\nPING\r\n");
    stream
        .get_mut()
        .write_all(&out)
        .await
        .map_err(|e| e.to_string())?;
    loop {
        line.clear();
        if stream.read_line(&mut line).await.map_err(|e| e.to_string())? == 0 {
            return Err("the server closed the connection".into());
        }
        let op = line.trim_end();
        if op == "PING" {
            stream
                .get_mut()
                .write_all(b"PONG\r\n")
                .await
                .map_err(|e| e.to_string())?;
        } else if op.starts_with("-ERR") {
            return Err(op.to_owned());
        } else if let Some(args) = op.strip_prefix("MSG ") {
            let len: usize = args
                .split_whitespace()
                .last()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("bad MSG line {op:?}"))?;
            let mut body = vec![0; len + 2];
            stream.read_exact(&mut body).await.map_err(|e| e.to_string())?;
            body.truncate(len);
            let ack = String::from_utf8_lossy(&body).into_owned();
            if ack.contains("\"error\"") {
                return Err(ack);
            }
            return Ok(ack);
        }
    }
}
