//! A small HTTP endpoint for Kubernetes probes and Prometheus: `/health`
//! (liveness), `/ready` (readiness) and `/metrics` over the routers of a
//! service.
//!
//! It answers `GET` with HTTP/1.1 and closes each connection after one
//! response; a request must arrive whole within five seconds and 8 KiB, so
//! a slow or endless client costs one task for five seconds at most. It is
//! for probes and scrapers on a private port, not for the internet.
//!
//! ```no_run
//! # async fn demo(bus: busline_core::Bus, billing: busline_core::RunningRouter) -> std::io::Result<()> {
//! use busline_layers::probes::ProbeEndpoint;
//!
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:9464").await?;
//! let endpoint = ProbeEndpoint::new().bus(bus).router(billing.probe());
//! tokio::spawn(endpoint.serve(listener, std::future::pending()));
//! # Ok(()) }
//! ```

use std::fmt::Write as _;
use std::future::Future;
use std::time::Duration;

use busline_core::{Bus, RouterProbe, SubscriptionState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The longest request head read.
const MAX_REQUEST: usize = 8 * 1024;
/// How long a client may take to send its request and read the answer.
const CLIENT_DEADLINE: Duration = Duration::from_secs(5);

/// What the endpoint reports on: routers, and the bus they share.
#[derive(Debug, Clone, Default)]
pub struct ProbeEndpoint {
    routers: Vec<RouterProbe>,
    bus: Option<Bus>,
}

/// One HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResponse {
    /// The status code.
    pub status: u16,
    /// The media type of `body`.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

impl ProbeEndpoint {
    /// An endpoint with nothing to report on yet (always alive and ready).
    pub fn new() -> Self {
        Self::default()
    }

    /// Reports on this router ([`RunningRouter::probe`](busline_core::RunningRouter::probe)).
    pub fn router(mut self, probe: RouterProbe) -> Self {
        self.routers.push(probe);
        self
    }

    /// Reports the bus: once it is shut down, the service is neither alive
    /// nor ready; while it reconnects ([`Bus::connection_state`]) it is
    /// alive and not ready.
    pub fn bus(mut self, bus: Bus) -> Self {
        self.bus = Some(bus);
        self
    }

    /// The answer to `GET path`: `/health` is 200 while no subscription has
    /// died (paused ones are alive), `/ready` is 200 while every one takes
    /// deliveries and no bus is reconnecting, both 503 otherwise with the
    /// reasons in the body; `/metrics` is the routers' counters,
    /// subscription states and the bus's connection in Prometheus' text
    /// format.
    pub fn answer(&self, path: &str) -> ProbeResponse {
        let path = path.split('?').next().unwrap_or(path);
        match path {
            "/health" | "/healthz" | "/livez" => self.verdict(false, |h| h.is_alive()),
            "/ready" | "/readyz" => self.verdict(true, |h| h.is_ready()),
            "/metrics" => ProbeResponse {
                status: 200,
                content_type: "text/plain; version=0.0.4",
                body: self.metrics(),
            },
            _ => text(404, "not found: try /health, /ready or /metrics\n".into()),
        }
    }

    /// `ready`: a bus that is reconnecting fails it too (it is alive).
    fn verdict(&self, ready: bool, good: impl Fn(&busline_core::RouterHealth) -> bool) -> ProbeResponse {
        let mut body = String::new();
        let mut ok = true;
        if let Some(bus) = &self.bus {
            if bus.is_closed() {
                ok = false;
                body.push_str("bus: shut down\n");
            } else {
                let connection = bus.connection_state();
                if !connection.is_usable() {
                    ok &= !ready;
                    let _ = writeln!(body, "bus: {connection}");
                }
            }
        }
        for router in &self.routers {
            let health = router.health();
            ok &= good(&health);
            if !health.connection.is_usable() {
                let _ = writeln!(body, "{} bus: {}", health.group, health.connection);
            }
            for s in &health.subscriptions {
                let _ = writeln!(body, "{} {}: {}", health.group, s.topic, state_text(&s.state));
            }
        }
        if body.is_empty() {
            body.push_str("ok\n");
        }
        text(if ok { 200 } else { 503 }, body)
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP busline_router_events_total Events a router settled, by outcome.\n");
        out.push_str("# TYPE busline_router_events_total counter\n");
        for router in &self.routers {
            let s = router.stats();
            let group = label(router.group());
            for (outcome, n) in [
                ("handled", s.handled),
                ("retried", s.retried),
                ("dead_lettered", s.dead_lettered),
                ("skipped", s.skipped),
                ("abandoned", s.abandoned),
                ("settle_failed", s.settle_failures),
            ] {
                let _ = writeln!(
                    out,
                    "busline_router_events_total{{group=\"{group}\",outcome=\"{outcome}\"}} {n}"
                );
            }
        }
        if let Some(connection) = self.bus.as_ref().map(Bus::connection_state) {
            if connection != busline_core::ConnectionState::Unknown {
                out.push_str("# HELP busline_bus_connected 1 while the bus reaches its broker, 0 reconnecting or shut down.\n");
                out.push_str("# TYPE busline_bus_connected gauge\n");
                let _ = writeln!(
                    out,
                    "busline_bus_connected {}",
                    u8::from(connection == busline_core::ConnectionState::Connected)
                );
            }
        }
        out.push_str("# HELP busline_subscription_up 1 while the subscription takes deliveries, 0 paused, stopped or failed.\n");
        out.push_str("# TYPE busline_subscription_up gauge\n");
        for router in &self.routers {
            let health = router.health();
            let group = label(&health.group);
            for s in &health.subscriptions {
                let up = u8::from(s.state == SubscriptionState::Running);
                let _ = writeln!(
                    out,
                    "busline_subscription_up{{group=\"{group}\",topic=\"{}\",state=\"{}\"}} {up}",
                    label(&s.topic),
                    state_name(&s.state)
                );
            }
        }
        out
    }

    /// Answers connections on `listener` until `shutdown` resolves; each
    /// connection in a task of its own.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let endpoint = std::sync::Arc::new(self);
        tokio::pin!(shutdown);
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    // Out of descriptors, a reset before accept: the
                    // listener itself is fine.
                    Err(e) if is_per_connection(&e) => continue,
                    Err(e) => return Err(e),
                },
                _ = &mut shutdown => return Ok(()),
            };
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(CLIENT_DEADLINE, endpoint.respond(stream)).await;
            });
        }
    }

    async fn respond(&self, mut stream: TcpStream) -> std::io::Result<()> {
        let response = match read_head(&mut stream).await? {
            Head::Get(path) => self.answer(&path),
            Head::OtherMethod => text(405, "only GET\n".into()),
            Head::Malformed => text(400, "bad request\n".into()),
            Head::TooLarge => text(431, "request head over 8 KiB\n".into()),
        };
        let reason = match response.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            431 => "Request Header Fields Too Large",
            _ => "Service Unavailable",
        };
        let head = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: {}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
            response.status,
            response.content_type,
            response.body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(response.body.as_bytes()).await?;
        stream.shutdown().await
    }
}

fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted) || e.raw_os_error() == Some(24)
}

enum Head {
    Get(String),
    OtherMethod,
    Malformed,
    TooLarge,
}

/// Reads up to the end of the request head and takes its request line.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Head> {
    let mut buffer = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            buffer.truncate(end);
            break;
        }
        if buffer.len() > MAX_REQUEST {
            return Ok(Head::TooLarge);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Head::Malformed);
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let Ok(head) = std::str::from_utf8(&buffer) else {
        return Ok(Head::Malformed);
    };
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Ok(Head::Malformed);
    };
    if !version.starts_with("HTTP/1.") || !path.starts_with('/') {
        return Ok(Head::Malformed);
    }
    Ok(if method == "GET" {
        Head::Get(path.to_owned())
    } else {
        Head::OtherMethod
    })
}

fn text(status: u16, body: String) -> ProbeResponse {
    ProbeResponse {
        status,
        content_type: "text/plain; charset=utf-8",
        body,
    }
}

fn state_name(state: &SubscriptionState) -> &'static str {
    match state {
        SubscriptionState::Running => "running",
        SubscriptionState::Paused => "paused",
        SubscriptionState::Stopped => "stopped",
        SubscriptionState::Failed { .. } => "failed",
        _ => "unknown",
    }
}

fn state_text(state: &SubscriptionState) -> String {
    match state {
        SubscriptionState::Failed { error } => format!("failed: {error}"),
        other => state_name(other).to_owned(),
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn an_empty_endpoint_is_alive_and_ready_and_unknown_paths_are_404() {
        let endpoint = ProbeEndpoint::new();
        assert_eq!(endpoint.answer("/health").status, 200);
        assert_eq!(endpoint.answer("/ready?verbose").status, 200);
        assert_eq!(endpoint.answer("/nope").status, 404);
    }
}
