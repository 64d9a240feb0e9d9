//! `connection_state` as a readiness probe reads it, across a network
//! failure: a TCP proxy between busline and the real broker closes every
//! connection (a cut); the bus says it is reconnecting, with why, until
//! it is used again and reconnects.

mod common;

use std::time::Duration;

use busline_core::{Bus, ConnectionState};
use busline_testkit::events::Ping;
use busline_testkit::proxy::{upstream_of, Proxy};
use busline_testkit::support::{eventually, within, WAIT};
use busline_testkit::test_settings;
use common::{unique, RabbitFixture};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_reads_as_reconnecting_until_it_is_back() {
    let fixture = RabbitFixture::new().await;
    let proxy = Proxy::start(upstream_of(&fixture.broker.url)).await;
    let rabbit = busline_rabbitmq::RabbitBus::connect(
        &proxy.url_for(&fixture.broker.url),
        "connection-state",
        fixture.config.clone(),
    )
    .await
    .expect("busline connects through the proxy");
    let bus = Bus::new(rabbit, test_settings());
    let topic = unique("conn-state");
    bus.publish(&topic, Ping::new(1)).await.expect("a publish");
    assert_eq!(bus.connection_state(), ConnectionState::Connected);

    proxy.cut();
    // The client sees the closed socket at once (no heartbeat needed).
    eventually(WAIT, "the bus to say it is reconnecting", || {
        matches!(bus.connection_state(), ConnectionState::Reconnecting { .. })
    })
    .await;
    let ConnectionState::Reconnecting { reason } = bus.connection_state() else {
        unreachable!("just seen");
    };
    assert!(!reason.is_empty());

    // Used again, the link reconnects (with backoff) and says so.
    within(WAIT, "a confirmed publish after the cut", async {
        while bus.publish(&topic, Ping::new(2)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(bus.connection_state(), ConnectionState::Connected);
    bus.shutdown().await;
    assert_eq!(bus.connection_state(), ConnectionState::Closed);
}
