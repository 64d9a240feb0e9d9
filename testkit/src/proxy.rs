//! A TCP proxy between busline and the real broker that a test can freeze
//! (no byte forwarded either way, connections left open: a stalled network
//! or a hung broker), cut (every connection closed: a network failure) or
//! make refuse new connections (a broker that is down).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// A running proxy on 127.0.0.1 and a random port; stops when dropped.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    frozen: watch::Sender<bool>,
    refusing: watch::Sender<bool>,
    cuts: watch::Sender<u64>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Forwards every connection made to it to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        assert!(upstream.ip().is_loopback(), "tests only talk to 127.0.0.1");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let addr = listener.local_addr().unwrap();
        let (frozen, _) = watch::channel(false);
        let (refusing, _) = watch::channel(false);
        let (cuts, _) = watch::channel(0u64);
        let (f, c, r) = (frozen.clone(), cuts.clone(), refusing.clone());
        let accept = tokio::spawn(async move {
            // Owned here, so aborting this task ends every connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                while connections.try_join_next().is_some() {}
                if *r.borrow() {
                    drop(client);
                    continue;
                }
                connections.spawn(forward(client, upstream, f.subscribe(), c.subscribe()));
            }
        });
        Self {
            addr,
            frozen,
            refusing,
            cuts,
            accept,
        }
    }

    /// `url` (`scheme://[user:pass@]host:port[/path]`) pointed at the proxy
    /// instead.
    pub fn url_for(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL");
        let (auth, rest) = rest.rsplit_once('@').map_or(("", rest), |(a, r)| (a, r));
        let path = rest.find('/').map_or("", |i| &rest[i..]);
        let at = if auth.is_empty() { "" } else { "@" };
        format!("{scheme}://{auth}{at}{}{path}", self.addr)
    }

    /// Stops forwarding bytes in both directions; connections stay open.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Forwards again, starting with what was held back.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }

    /// Closes every connection made so far (new ones are accepted).
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// While `yes`, closes each new connection as soon as it is made, as a
    /// port nothing listens on would; connections already made go on.
    pub fn refuse(&self, yes: bool) {
        self.refusing.send_replace(yes);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// The broker's address in a `scheme://[…@]host[:port][/…]` URL (the
/// scheme's default port where it names none: AMQP 5672, NATS 4222, Kafka
/// 9092).
pub fn upstream_of(url: &str) -> SocketAddr {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let default_port = match scheme {
        "nats" => 4222,
        "kafka" => 9092,
        _ => 5672,
    };
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let authority = rest.split('/').next().unwrap();
    let authority = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:{default_port}")
    };
    let authority = authority.replace("localhost", "127.0.0.1");
    authority.parse().expect("a numeric 127.0.0.1 broker address")
}

async fn forward(
    client: TcpStream,
    upstream: SocketAddr,
    frozen: watch::Receiver<bool>,
    mut cuts: watch::Receiver<u64>,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::select! {
        _ = pump(cr, sw, frozen.clone()) => {}
        _ = pump(sr, cw, frozen) => {}
        _ = cuts.changed() => {}
    }
    // Both halves of both sockets are dropped here: the connection closes.
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut frozen: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = frozen.wait_for(|f| *f) => continue,
        };
        // Bytes read just before a freeze wait for the thaw.
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
