//! Topics and groups through the management plugin's HTTP API: AMQP has no
//! way to list exchanges, queues or bindings. A topic is a durable topic
//! exchange; a group of it is a queue `<topic>::<group>` bound to it with
//! `#` (retry and parking queues are not bound to the exchange).
//!
//! The client is a minimal HTTP/1.0 `GET` (the response ends where the
//! connection does, so no chunked decoding) with a deadline and a size cap:
//! one dependency less than an HTTP stack for two read-only calls.

use std::time::Duration;

use base64::Engine;
use busline_core::{GroupInfo, InspectError, InspectErrorKind, TopicInfo};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::seeds::Seed;

/// The management API's default port.
const DEFAULT_PORT: u16 = 15672;
/// Largest response read: a broker with many thousands of queues answers
/// a few MiB with the columns asked for.
const MAX_RESPONSE: u64 = 64 << 20;

/// Where and as whom to ask.
pub(crate) struct Management {
    host: String,
    port: u16,
    /// Path before `/api`, without a trailing `/` (a proxy's prefix).
    prefix: String,
    authorization: String,
    vhost: String,
    timeout: Duration,
}

/// Why a call failed, before it becomes an [`InspectError`].
#[derive(Debug)]
struct CallError {
    kind: InspectErrorKind,
    message: String,
}

impl Management {
    /// The API of `management_url`, or of port 15672 on the seed's host,
    /// with the seed's credentials and vhost.
    pub(crate) fn new(management_url: Option<&str>, seed: &Seed, timeout: Duration) -> Result<Self, String> {
        let uri = &seed.uri;
        let (host, port, prefix) = match management_url {
            None => (uri.authority.host.clone(), DEFAULT_PORT, String::new()),
            Some(url) => parse_http_url(url)?,
        };
        let credentials = format!(
            "{}:{}",
            uri.authority.userinfo.username, uri.authority.userinfo.password
        );
        Ok(Self {
            host,
            port,
            prefix,
            authorization: base64::engine::general_purpose::STANDARD.encode(credentials),
            vhost: uri.vhost.clone(),
            timeout,
        })
    }

    fn vhost(&self) -> String {
        utf8_percent_encode(&self.vhost, NON_ALPHANUMERIC).to_string()
    }

    pub(crate) async fn topics(&self) -> Result<Vec<TopicInfo>, InspectError> {
        let fail = |e: CallError| InspectError::topics(e.kind).with_source(e.message);
        let exchanges = self
            .get(&format!(
                "/api/exchanges/{}?columns=name,type,durable",
                self.vhost()
            ))
            .await
            .map_err(fail)?;
        let mut topics: Vec<TopicInfo> = rows(&exchanges)
            .filter(|x| x["type"] == "topic" && x["durable"] == true)
            .filter_map(|x| x["name"].as_str())
            .filter(|name| !name.is_empty() && !name.starts_with("amq."))
            // An exchange routes and keeps nothing: its queues hold the
            // events (`busline groups <topic>`).
            .map(TopicInfo::new)
            .collect();
        topics.sort_by(|a, b| a.topic.cmp(&b.topic));
        Ok(topics)
    }

    pub(crate) async fn groups(&self, topic: &str) -> Result<Vec<GroupInfo>, InspectError> {
        let fail = |e: CallError| InspectError::groups(e.kind, topic).with_source(e.message);
        let exchange = utf8_percent_encode(topic, NON_ALPHANUMERIC).to_string();
        // The bindings of a missing exchange are `[]`, not a 404.
        self.get(&format!(
            "/api/exchanges/{}/{exchange}?columns=name",
            self.vhost()
        ))
        .await
        .map_err(fail)?;
        let bindings = self
            .get(&format!(
                "/api/exchanges/{}/{exchange}/bindings/source",
                self.vhost()
            ))
            .await
            .map_err(fail)?;
        let prefix = format!("{topic}::");
        let mut names: Vec<(String, String)> = rows(&bindings)
            .filter(|b| b["destination_type"] == "queue" && b["routing_key"] == "#")
            .filter_map(|b| b["destination"].as_str())
            .filter_map(|queue| {
                let group = queue.strip_prefix(&prefix)?;
                (!group.is_empty()).then(|| (group.to_owned(), queue.to_owned()))
            })
            .collect();
        names.sort();
        names.dedup();
        let mut groups = Vec::with_capacity(names.len());
        for (group, queue) in names {
            let path = format!(
                "/api/queues/{}/{}?columns=messages_ready,messages_unacknowledged,consumers",
                self.vhost(),
                utf8_percent_encode(&queue, NON_ALPHANUMERIC)
            );
            let q = match self.get(&path).await {
                Ok(q) => q,
                // Deleted between the two calls.
                Err(e) if e.kind == InspectErrorKind::NotFound => continue,
                Err(e) => return Err(fail(e)),
            };
            // A queue's figures are absent until its first stats emission.
            groups.push(
                GroupInfo::new(group)
                    .with_lag(q["messages_ready"].as_u64())
                    .with_in_flight(q["messages_unacknowledged"].as_u64())
                    .with_members(
                        q["consumers"]
                            .as_u64()
                            .map(|c| u32::try_from(c).unwrap_or(u32::MAX)),
                    ),
            );
        }
        Ok(groups)
    }

    async fn get(&self, path: &str) -> Result<Value, CallError> {
        let deadline = self.timeout;
        tokio::time::timeout(deadline, self.get_now(path))
            .await
            .map_err(|_| CallError {
                kind: InspectErrorKind::Timeout,
                message: format!(
                    "the management API at {} did not answer within {deadline:?}",
                    self.at()
                ),
            })?
    }

    fn at(&self) -> String {
        format!("http://{}:{}{}", self.host, self.port, self.prefix)
    }

    async fn get_now(&self, path: &str) -> Result<Value, CallError> {
        let mut stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| CallError {
                kind: InspectErrorKind::Unsupported,
                message: format!(
                    "no management API at {} ({e}): RabbitMQ lists exchanges and queues only through its \
                     management plugin; enable it (`rabbitmq-plugins enable rabbitmq_management`) or set \
                     `[rabbitmq] management_url`",
                    self.at()
                ),
            })?;
        let request = format!(
            "GET {}{path} HTTP/1.0\r\nHost: {}:{}\r\nAuthorization: Basic {}\r\nAccept: application/json\r\n\r\n",
            self.prefix, self.host, self.port, self.authorization
        );
        let io = |e: std::io::Error| CallError {
            kind: InspectErrorKind::Connection,
            message: format!("management API at {}: {e}", self.at()),
        };
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        let mut response = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE + 1)
            .read_to_end(&mut response)
            .await
            .map_err(io)?;
        if response.len() as u64 > MAX_RESPONSE {
            return Err(CallError {
                kind: InspectErrorKind::Other,
                message: format!("the management API's answer is larger than {MAX_RESPONSE} bytes"),
            });
        }
        self.parse(&response)
    }

    fn parse(&self, response: &[u8]) -> Result<Value, CallError> {
        let other = |message: String| CallError {
            kind: InspectErrorKind::Other,
            message,
        };
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| {
                other(format!(
                    "the management API at {} sent no HTTP response",
                    self.at()
                ))
            })?;
        let head = String::from_utf8_lossy(&response[..split]);
        let body = &response[split + 4..];
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| other(format!("the management API at {} sent no HTTP status", self.at())))?;
        match status {
            200 => serde_json::from_slice(body)
                .map_err(|e| other(format!("the management API's answer is not JSON: {e}"))),
            404 => Err(CallError {
                kind: InspectErrorKind::NotFound,
                message: "no such exchange or queue".into(),
            }),
            401 | 403 => Err(other(format!(
                "the management API refused the URL's user ({status}); it needs the `monitoring` (or \
                 `management`) tag and access to the vhost"
            ))),
            _ => Err(other(format!(
                "the management API answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ))),
        }
    }
}

fn rows(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

/// `http://host[:port][/prefix]` → its parts; anything else is refused.
fn parse_http_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("`[rabbitmq] management_url` = `{url}`: only http:// is supported (put a local proxy before an https API)")
    })?;
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    if authority.contains('@') {
        return Err("`[rabbitmq] management_url` takes no credentials: the AMQP URL's are used".into());
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| format!("`{url}`: bad port"))?),
        None => (authority, DEFAULT_PORT),
    };
    if host.is_empty() {
        return Err(format!("`{url}`: no host"));
    }
    let prefix = path.trim_end_matches('/');
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("/{prefix}")
    };
    Ok((host.to_owned(), port, prefix))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use busline_core::InspectErrorKind;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::{parse_http_url, Management};

    /// A one-connection server on a raw socket that answers `response`
    /// (then closes, or holds the connection open when `hold`).
    async fn api(response: Vec<u8>, hold: bool) -> Management {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            let _ = socket.write_all(&response).await;
            if hold {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        });
        let seed = crate::seeds::parse("amqp://guest:guest@127.0.0.1:5672/%2f")
            .unwrap()
            .remove(0);
        Management::new(
            Some(&format!("http://127.0.0.1:{port}")),
            &seed,
            Duration::from_millis(500),
        )
        .unwrap()
    }

    async fn topics_error(response: &[u8], hold: bool) -> (InspectErrorKind, String) {
        let e = api(response.to_vec(), hold)
            .await
            .topics()
            .await
            .expect_err("an error");
        (e.kind(), busline_core::ErrorChain(&e).to_string())
    }

    #[tokio::test]
    async fn what_a_broken_api_answers_is_a_typed_error() {
        let cases: [(&[u8], InspectErrorKind, &str); 6] = [
            (
                b"garbage with no end of head",
                InspectErrorKind::Other,
                "no HTTP response",
            ),
            (b"HTTP/1.1 abc\r\n\r\n", InspectErrorKind::Other, "no HTTP status"),
            (
                b"HTTP/1.1 200 OK\r\n\r\n{not json",
                InspectErrorKind::Other,
                "not JSON",
            ),
            (
                b"HTTP/1.1 401 Unauthorized\r\n\r\n{}",
                InspectErrorKind::Other,
                "refused the URL's user",
            ),
            (
                b"HTTP/1.1 404 Not Found\r\n\r\n{}",
                InspectErrorKind::NotFound,
                "no such",
            ),
            (
                b"HTTP/1.1 500 Oops\r\n\r\n\xff\xfe not utf-8",
                InspectErrorKind::Other,
                "answered 500",
            ),
        ];
        for (response, kind, says) in cases {
            let (got, text) = topics_error(response, false).await;
            assert_eq!(got, kind, "{text}");
            assert!(text.contains(says), "{text}");
        }
    }

    #[tokio::test]
    async fn an_api_that_never_finishes_times_out() {
        let (kind, text) = topics_error(b"HTTP/1.1 200 OK\r\n\r\n[", true).await;
        assert_eq!(kind, InspectErrorKind::Timeout, "{text}");
    }

    #[tokio::test]
    async fn rows_that_are_not_busline_exchanges_are_left_out() {
        let body = r#"[{"name":"","type":"direct","durable":true},
            {"name":"amq.topic","type":"topic","durable":true},
            {"name":"transient","type":"topic","durable":false},
            {"name":"fanout","type":"fanout","durable":true},
            {"name":42,"type":"topic","durable":true},
            "not an object",
            {"name":"orders","type":"topic","durable":true}]"#;
        let response = format!("HTTP/1.1 200 OK\r\n\r\n{body}").into_bytes();
        let topics = api(response, false).await.topics().await.unwrap();
        let names: Vec<&str> = topics.iter().map(|t| t.topic.as_str()).collect();
        assert_eq!(names, vec!["orders"]);
    }

    #[test]
    fn management_urls() {
        assert_eq!(
            parse_http_url("http://rabbit:15673").unwrap(),
            ("rabbit".into(), 15673, String::new())
        );
        assert_eq!(
            parse_http_url("http://rabbit/mgmt/").unwrap(),
            ("rabbit".into(), 15672, "/mgmt".into())
        );
        assert!(parse_http_url("https://rabbit").is_err());
        assert!(parse_http_url("http://u:p@rabbit").is_err());
        assert!(parse_http_url("http://:80").is_err());
    }
}
