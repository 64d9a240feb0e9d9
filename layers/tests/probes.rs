//! The probe endpoint over a real TCP socket (feature `probes`): what a
//! kubelet and a Prometheus scraper see while routers run, after one's
//! subscription died, and after shutdown; and what a client that is not a
//! probe gets.
#![cfg(feature = "probes")]

use std::sync::Arc;

use busline_core::backend::{async_trait, BusDecorator};
use busline_core::{
    Bus, BusConfig, BusSettings, ConsumeError, ConsumeErrorKind, DomainEvent, EventBus, HandlerError, Router,
    SubscribeError, SubscribeOptions, Subscription,
};
use busline_layers::probes::ProbeEndpoint;
use busline_testkit::events::Ping;
use busline_testkit::support::{eventually, unique, within, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Starts the endpoint on a free port; returns its address and the handle
/// that stops it.
async fn start(endpoint: ProbeEndpoint) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(endpoint.serve(listener, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// Sends `request` as raw bytes and returns the status code and body.
async fn send(addr: std::net::SocketAddr, request: &[u8]) -> (u16, String) {
    within(WAIT, "the probe's answer", async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        let status = answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {answer:?}"));
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    })
    .await
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    send(
        addr,
        format!("GET {path} HTTP/1.1\r\nhost: probe\r\n\r\n").as_bytes(),
    )
    .await
}

fn memory_bus() -> Bus {
    busline_memory::connect(&BusConfig::from_url(format!("memory://{}", unique("probes")))).unwrap()
}

#[tokio::test]
async fn probes_follow_the_routers_from_start_to_shutdown() {
    let bus = memory_bus();
    let topic = unique("orders");
    let router = Router::new(bus.clone(), "billing")
        .on(&topic, |_e: DomainEvent<Ping>| async {
            Ok::<_, HandlerError>(())
        })
        .start()
        .await
        .unwrap();
    let (addr, stop) = start(ProbeEndpoint::new().bus(bus.clone()).router(router.probe())).await;

    assert_eq!(get(addr, "/health").await.0, 200);
    let (status, body) = get(addr, "/ready").await;
    assert_eq!(
        (status, body.trim()),
        (200, format!("billing {topic}: running").as_str())
    );
    bus.publish(&topic, Ping::new(1)).await.unwrap();
    eventually(WAIT, "the event handled", || router.stats().handled == 1).await;
    let (status, metrics) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("busline_router_events_total{group=\"billing\",outcome=\"handled\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "busline_subscription_up{{group=\"billing\",topic=\"{topic}\",state=\"running\"}} 1\n"
        )),
        "{metrics}"
    );

    let probe = router.probe();
    router.shutdown().await.unwrap();
    let endpoint = ProbeEndpoint::new().router(probe);
    assert_eq!(
        endpoint.answer("/ready").status,
        503,
        "a stopped router is not ready"
    );
    assert_eq!(endpoint.answer("/health").status, 200, "stopped is not dead");
    bus.shutdown().await;
    let (status, body) = get(addr, "/health").await;
    assert_eq!(status, 503, "a shut-down bus is not alive: {body}");
    assert!(body.contains("bus: shut down"), "{body}");
    let _ = stop.send(());
}

/// A bus whose subscriptions fail at once, as when the broker connection
/// is lost for good.
struct Dying(Arc<dyn EventBus>);

#[async_trait]
impl BusDecorator for Dying {
    fn inner(&self) -> &Arc<dyn EventBus> {
        &self.0
    }

    async fn on_subscribe(
        &self,
        topic: &str,
        _group: &str,
        _options: SubscribeOptions,
    ) -> Result<Subscription, SubscribeError> {
        let error = ConsumeError::new(ConsumeErrorKind::Connection, topic);
        Ok(Subscription::new(futures::stream::iter([Err(error)])))
    }
}

#[tokio::test]
async fn a_dead_subscription_fails_liveness_with_its_error() {
    let inner = memory_bus();
    let bus = Bus::new(Dying(inner.transport().clone()), BusSettings::default());
    let router = Router::new(bus.clone(), "billing")
        .on("orders", |_e: DomainEvent<Ping>| async {
            Ok::<_, HandlerError>(())
        })
        .start()
        .await
        .unwrap();
    let (addr, stop) = start(ProbeEndpoint::new().router(router.probe())).await;
    eventually(WAIT, "the subscription marked failed", || {
        !router.health().is_alive()
    })
    .await;
    let (status, body) = get(addr, "/health").await;
    assert_eq!(status, 503);
    assert!(
        body.starts_with("billing orders: failed: "),
        "the error is in the body: {body}"
    );
    assert_eq!(get(addr, "/ready").await.0, 503);
    let (_, metrics) = get(addr, "/metrics").await;
    assert!(metrics.contains("state=\"failed\"} 0\n"), "{metrics}");
    let _ = router.shutdown().await;
    let _ = stop.send(());
}

#[tokio::test]
async fn clients_that_are_not_probes_get_an_error_status_and_the_endpoint_keeps_answering() {
    let (addr, stop) = start(ProbeEndpoint::new()).await;
    assert_eq!(send(addr, b"POST /health HTTP/1.1\r\n\r\n").await.0, 405);
    assert_eq!(send(addr, b"\xff\xfe garbage\r\n\r\n").await.0, 400);
    assert_eq!(send(addr, b"GET health HTTP/1.1\r\n\r\n").await.0, 400);
    let endless = [b"GET /health HTTP/1.1\r\nx: ".as_slice(), &[b'a'; 16 * 1024]].concat();
    assert_eq!(send(addr, &endless).await.0, 431);
    assert_eq!(get(addr, "/nowhere").await.0, 404);
    // One that connects and says nothing is cut off after its deadline;
    // meanwhile others are answered.
    let _silent = TcpStream::connect(addr).await.unwrap();
    assert_eq!(get(addr, "/health").await.0, 200);
    let _ = stop.send(());
}

/// A memory bus whose connection state a test sets, as a broker client
/// reports losing and regaining its connection.
struct Unplugged {
    inner: Arc<dyn EventBus>,
    down: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait]
impl EventBus for Unplugged {
    fn capabilities(&self) -> busline_core::Capabilities {
        self.inner.capabilities()
    }

    async fn publish(
        &self,
        topic: &str,
        event: busline_core::RawEvent,
    ) -> Result<(), busline_core::PublishError> {
        self.inner.publish(topic, event).await
    }

    async fn provision(&self, topic: &str, group: &str) -> Result<(), SubscribeError> {
        self.inner.provision(topic, group).await
    }

    fn connection_state(&self) -> busline_core::ConnectionState {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            busline_core::ConnectionState::Reconnecting {
                reason: "connection reset by peer".into(),
            }
        } else {
            busline_core::ConnectionState::Connected
        }
    }

    async fn subscribe(
        &self,
        topic: &str,
        group: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, SubscribeError> {
        self.inner.subscribe(topic, group, options).await
    }

    async fn shutdown(&self) {
        self.inner.shutdown().await
    }
}

#[tokio::test]
async fn a_reconnecting_bus_is_alive_and_not_ready() {
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bus = Bus::new(
        Unplugged {
            inner: memory_bus().transport().clone(),
            down: down.clone(),
        },
        BusSettings::default(),
    );
    let topic = unique("orders");
    let router = Router::new(bus.clone(), "billing")
        .on(&topic, |_e: DomainEvent<Ping>| async {
            Ok::<_, HandlerError>(())
        })
        .start()
        .await
        .unwrap();
    let (addr, stop) = start(ProbeEndpoint::new().bus(bus.clone()).router(router.probe())).await;
    assert_eq!(get(addr, "/ready").await.0, 200);
    assert!(get(addr, "/metrics")
        .await
        .1
        .contains("busline_bus_connected 1\n"));

    down.store(true, std::sync::atomic::Ordering::SeqCst);
    let (status, body) = get(addr, "/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("bus: reconnecting (connection reset by peer)"),
        "{body}"
    );
    assert!(body.contains("billing bus: reconnecting"), "{body}");
    assert!(!router.health().is_ready());
    assert_eq!(get(addr, "/health").await.0, 200, "reconnecting is alive");
    assert!(get(addr, "/metrics")
        .await
        .1
        .contains("busline_bus_connected 0\n"));

    down.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(get(addr, "/ready").await.0, 200, "ready again once back");
    router.shutdown().await.unwrap();
    bus.shutdown().await;
    let _ = stop.send(());
}
