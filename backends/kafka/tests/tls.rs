//! Kafka over TLS. Neither broker the tests have serves TLS itself:
//! librdkafka's mock cluster listens in plaintext only, and tansu 0.6 takes
//! `--cert`/`--key` but never uses its acceptor (broker.rs: `let _acceptor
//! = …`; connections are served in plaintext). So the TLS test runs a tansu
//! of its own whose advertised listener is a TLS-terminating proxy started
//! by the test (tokio-rustls, certificates made at test time): every
//! connection librdkafka opens, bootstrap and partition leader alike, goes
//! through TLS.

mod common;

use std::net::TcpListener as StdListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use busline_core::{BusConfig, ConfigError, DomainEvent, Router};
use busline_testkit::brokers::answers;
use busline_testkit::events::Ping;
use busline_testkit::support::{eventually, recorder, unique, Collector, WAIT};
use busline_testkit::tls::TestCerts;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};

const PASSWORD: &str = "Tl5/p@ss#w?rd";

/// A TLS client against a plaintext listener: the handshake fails, and the
/// error is a typed `Connect` naming the URL without its password, within
/// the operation timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_against_a_plaintext_listener_fails_typed_redacted_in_time() {
    let mock = common::MockKafka::start(1);
    let config = BusConfig::from_toml_str(&format!(
        "url = \"kafkas://busline:{PASSWORD}@{}?mechanism=SCRAM-SHA-512\"\n[kafka]\noperation_timeout = \"3s\"\n",
        mock.bootstrap()
    ))
    .unwrap();
    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(20), busline_kafka::connect(&config))
        .await
        .expect("connect answers within 20 s")
        .expect_err("a TLS handshake with a plaintext listener fails");
    let elapsed = started.elapsed();
    assert!(matches!(err, ConfigError::Connect { .. }), "{err:?}");
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("kafkas://busline:***@"), "{shown}");
    assert!(!shown.contains(PASSWORD) && !shown.contains("p@ss"), "{shown}");
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A tansu broker started by this test, ended by its PID (the child
/// handle) when dropped.
struct OwnTansu(Child);

impl Drop for OwnTansu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tansu_bin() -> String {
    let home = std::env::var("HOME").unwrap_or_default();
    let installed = format!("{home}/.cargo/bin/tansu");
    if Path::new(&installed).exists() {
        installed
    } else {
        "tansu".to_owned()
    }
}

/// Accepts TLS on `listener` with the test's server certificate and
/// forwards each connection, decrypted, to `upstream`; counts completed
/// handshakes.
fn start_proxy(listener: TcpListener, certs: &TestCerts, upstream: u16) -> Arc<AtomicUsize> {
    let chain = CertificateDer::pem_file_iter(&certs.server_cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&certs.server_key).unwrap();
    let server =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counted = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, counted) = (acceptor.clone(), counted.clone());
            tokio::spawn(async move {
                // A client that is not TLS, or does not trust us, ends here.
                let Ok(Ok(mut tls)) =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut broker) = TcpStream::connect(("127.0.0.1", upstream)).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
                }
            });
        }
    });
    handshakes
}

/// Publishes and consumes an event over TLS (the CA given as
/// `ssl.ca.location`, host name verified against the certificate's
/// `127.0.0.1`); a client that does not trust the CA, and one that speaks
/// plaintext to the TLS port, fail to connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_travel_over_tls() {
    let certs = TestCerts::generate();
    let (plain, proxy) = (free_port(), TcpListener::bind("127.0.0.1:0").await.unwrap());
    let tls_port = proxy.local_addr().unwrap().port();
    let child = Command::new(tansu_bin())
        .args([
            "broker",
            "--listener-url",
            &format!("tcp://127.0.0.1:{plain}"),
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{tls_port}"),
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tansu runs (installed by .ci/tansu.sh install)");
    let _tansu = OwnTansu(child);
    eventually(Duration::from_secs(30), "the test's tansu to listen", || {
        answers(("127.0.0.1", plain), Duration::from_millis(200))
    })
    .await;
    let handshakes = start_proxy(proxy, &certs, plain);

    let toml = |url: &str, ca: &Path| {
        format!(
            "url = \"{url}\"\nservice = \"tls-test\"\n[kafka]\noperation_timeout = \"5s\"\n\"ssl.ca.location\" = \"{}\"\n\
             # tansu 0.6 returns nothing for a fetch that starts inside a stored\n\
             # record batch: start a little earlier and skip.\nfetch_rewind = 10000\n",
            ca.display()
        )
    };
    let config =
        BusConfig::from_toml_str(&toml(&format!("kafkas://127.0.0.1:{tls_port}"), &certs.ca)).unwrap();
    let bus = tokio::time::timeout(WAIT, busline_kafka::connect(&config))
        .await
        .expect("connect within WAIT")
        .unwrap_or_else(|e| panic!("a TLS connection through the proxy: {e}"));
    let (topic, group) = (unique("tls"), unique("g"));
    let handled = Collector::<DomainEvent<Ping>>::new();
    let router = Router::new(bus.clone(), &group)
        .on(&topic, recorder(&handled))
        .start()
        .await
        .unwrap();
    bus.publish(&topic, Ping::new(7))
        .await
        .expect("a publish over TLS");
    let got = handled.wait_len(1, WAIT, "the event published over TLS").await;
    assert_eq!(got[0].data.seq, 7);
    assert!(handshakes.load(Ordering::SeqCst) >= 1);
    router.shutdown().await.unwrap();
    bus.shutdown().await;

    // Not trusted: a CA that did not sign the proxy's certificate.
    let untrusted =
        BusConfig::from_toml_str(&toml(&format!("kafkas://127.0.0.1:{tls_port}"), &certs.other_ca)).unwrap();
    let err = tokio::time::timeout(WAIT, busline_kafka::connect(&untrusted))
        .await
        .expect("connect answers within WAIT")
        .expect_err("an untrusted server certificate is refused");
    assert!(matches!(err, ConfigError::Connect { .. }), "{err:?}");
    // Plaintext to the TLS port: no Kafka answer.
    let plaintext =
        BusConfig::from_toml_str(&toml(&format!("kafka://127.0.0.1:{tls_port}"), &certs.ca)).unwrap();
    let err = tokio::time::timeout(WAIT, busline_kafka::connect(&plaintext))
        .await
        .expect("connect answers within WAIT")
        .expect_err("plaintext to a TLS listener fails");
    assert!(matches!(err, ConfigError::Connect { .. }), "{err:?}");
}
