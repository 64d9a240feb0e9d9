//! `connection_state` as a readiness probe reads it, across a network
//! failure: a TCP proxy between busline and the real server closes every
//! connection and refuses new ones (a server that is down); the bus says
//! it is reconnecting until the proxy lets it back, then connected.

mod common;

use busline_core::{Bus, BusConfig, ConnectionState};
use busline_nats::NatsBus;
use busline_testkit::proxy::{upstream_of, Proxy};
use busline_testkit::support::{eventually, WAIT};
use busline_testkit::test_settings;
use common::{test_config, NatsFixture};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_server_reads_as_reconnecting_until_it_is_back() {
    let fixture = NatsFixture::new().await;
    let proxy = Proxy::start(upstream_of(&fixture.url)).await;
    let nats = NatsBus::connect(&BusConfig::from_url(proxy.url_for(&fixture.url)), test_config())
        .await
        .expect("busline connects through the proxy");
    let bus = Bus::new(nats, test_settings());
    assert_eq!(bus.connection_state(), ConnectionState::Connected);

    proxy.refuse(true);
    proxy.cut();
    eventually(WAIT, "the bus to say it is reconnecting", || {
        matches!(bus.connection_state(), ConnectionState::Reconnecting { .. })
    })
    .await;

    proxy.refuse(false);
    eventually(WAIT, "the bus to say it is connected again", || {
        bus.connection_state() == ConnectionState::Connected
    })
    .await;
    bus.shutdown().await;
    assert_eq!(bus.connection_state(), ConnectionState::Closed);
}
