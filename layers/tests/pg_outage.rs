//! The dedup store's database goes away under a stream of events: a TCP
//! proxy of the test's own between the store and the shared PostgreSQL is
//! cut (connections reset, new ones refused) or frozen (bytes held, nothing
//! answers), then restored. Consumption pauses instead of dead-lettering,
//! and every event is handled once when the database is back. The URL comes
//! from `BUSLINE_TEST_POSTGRES_URL`, default
//! `postgres://postgres:postgres@127.0.0.1:5432/test`.
#![cfg(feature = "postgres")]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use busline_core::{Context, DomainEvent, EventService, HandlerError, HandlerWithoutStateExt, Layer, Router};
use busline_layers::{DedupLayer, PostgresDedupStore, PostgresOptions};
use busline_testkit::events::Ping;
use busline_testkit::support::{eventually, unique, Collector, WAIT};
use busline_testkit::TestHarness;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

fn url() -> String {
    std::env::var("BUSLINE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/test".to_owned())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Pass,
    /// Bytes are held, not forwarded; new connections are accepted and
    /// held too.
    Freeze,
    /// Open connections are closed; new ones are closed at once.
    Cut,
}

/// A TCP proxy on 127.0.0.1 in front of PostgreSQL, ended when dropped.
struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = self.mode.send(Mode::Cut);
    }
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        assert!(upstream.ip().is_loopback(), "tests talk to 127.0.0.1 only");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, rx) = watch::channel(Mode::Pass);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if *rx.borrow() == Mode::Cut {
                    drop(client);
                    continue;
                }
                tokio::spawn(pipe(client, upstream, rx.clone()));
            }
        });
        Self { addr, mode, task }
    }

    fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

/// Forwards one connection until either side closes or the proxy cuts it.
async fn pipe(client: TcpStream, upstream: SocketAddr, mode: watch::Receiver<Mode>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::select! {
        _ = pump(cr, sw, mode.clone()) => {}
        _ = pump(sr, cw, mode) => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Held while frozen; a cut ends the connection.
        let Ok(state) = mode.wait_for(|m| *m != Mode::Freeze).await.map(|m| *m) else {
            return;
        };
        if state == Mode::Cut {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = mode.changed() => continue,
        };
        if mode
            .wait_for(|m| *m != Mode::Freeze)
            .await
            .map(|m| *m)
            .unwrap_or(Mode::Cut)
            == Mode::Cut
        {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A key-value connection string for the database behind `addr`, with the
/// credentials of [`url`].
fn via(addr: SocketAddr) -> String {
    let config: tokio_postgres::Config = url().parse().unwrap();
    let quote = |s: &str| format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut s = format!("host=127.0.0.1 port={}", addr.port());
    if let Some(user) = config.get_user() {
        s += &format!(" user={}", quote(user));
    }
    if let Some(password) = config.get_password() {
        s += &format!(" password={}", quote(&String::from_utf8_lossy(password)));
    }
    if let Some(db) = config.get_dbname() {
        s += &format!(" dbname={}", quote(db));
    }
    s
}

fn upstream() -> SocketAddr {
    let config: tokio_postgres::Config = url().parse().unwrap();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn drop_table(table: &str) {
    let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
        .await
        .unwrap();
}

/// Publishes `total` events, one every 10 ms, while `outage` runs against
/// the proxy; checks that consumption paused, nothing was dead-lettered or
/// retried, and every event was handled exactly once.
async fn stream_through_an_outage(mode: Mode) {
    let proxy = Proxy::start(upstream()).await;
    let table = unique("busline_dedup_outage").replace('-', "_");
    let options = PostgresOptions::default()
        .with_pool_size(2)
        .with_connect_timeout(Duration::from_secs(1))
        .with_statement_timeout(Duration::from_secs(1));
    let store = PostgresDedupStore::connect_with(&via(proxy.addr), &table, options, tokio_postgres::NoTls)
        .await
        .unwrap();
    let handled = Collector::new();
    let hd = handled.clone();
    let handler = DedupLayer::new(store)
        .with_store_timeout(Duration::from_secs(2))
        .with_probe_backoff(Duration::from_millis(50), Duration::from_millis(500))
        .layer(
            (move |_c: Context, e: DomainEvent<Ping>| {
                hd.push(e.id.clone());
                async { Ok::<_, HandlerError>(()) }
            })
            .into_service(),
        );
    let gate = EventService::<Ping>::gate(&handler).expect("the dedup layer has a gate");
    let h = TestHarness::new();
    let router = Router::new(h.bus(), "billing")
        .with_max_in_flight(8)
        .with_handler_timeout(Some(Duration::from_secs(30)))
        .on("orders", handler)
        .start()
        .await
        .unwrap();

    let total: u64 = 300;
    let published = Arc::new(Mutex::new(Vec::new()));
    let (bus, ids) = (h.bus(), published.clone());
    let publisher = tokio::spawn(async move {
        for i in 0..total {
            let id = bus.publish("orders", Ping::new(i)).await.unwrap();
            ids.lock().unwrap().push(id);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });

    handled.wait_len(50, WAIT, "50 events before the outage").await;
    proxy.set(mode);
    eventually(WAIT, "the dedup gate closed", || !gate.is_open()).await;
    // Calls that passed the store before it went away have finished.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let paused_at = handled.len();
    // The outage lasts longer than the router's retry policy (5 attempts,
    // 200 ms doubling: about 3 s), which dead-lettered every event before.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = router.stats();
    assert_eq!(
        (during.retried, during.dead_lettered),
        (0, 0),
        "the outage used up no attempts"
    );
    assert_eq!(
        handled.len(),
        paused_at,
        "nothing handled while the store is unreachable"
    );
    assert!(!gate.is_open(), "still paused at the end of the outage");
    proxy.set(Mode::Pass);

    publisher.await.unwrap();
    let all = handled
        .wait_len(total as usize, WAIT, "every event after the outage")
        .await;
    let stats = router.shutdown().await.unwrap();
    assert_eq!(
        (stats.handled, stats.retried, stats.dead_lettered, stats.skipped),
        (total, 0, 0, 0)
    );
    let distinct: HashSet<&busline_core::EventId> = all.iter().collect();
    assert_eq!(distinct.len(), all.len(), "no event handled twice");
    let published: HashSet<busline_core::EventId> = published.lock().unwrap().iter().cloned().collect();
    assert_eq!(distinct.len(), published.len());
    assert!(all.iter().all(|id| published.contains(id)));
    assert!(gate.is_open());
    drop(proxy);
    drop_table(&table).await;
}

// One thread: if an assertion fails while the router runs, the runtime is
// dropped without polling it again, so the test fails instead of hanging.
#[tokio::test]
async fn a_cut_database_pauses_consumption_and_loses_nothing() {
    stream_through_an_outage(Mode::Cut).await;
}

#[tokio::test]
async fn a_frozen_database_pauses_consumption_and_loses_nothing() {
    stream_through_an_outage(Mode::Freeze).await;
}
