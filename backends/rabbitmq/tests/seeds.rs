//! A URL that lists several seed brokers (a cluster): busline connects to
//! the first that answers, and when the broker it is connected to goes
//! away, publishers and consumers reconnect to another seed. The "cluster"
//! here is the test broker behind two addresses: a TCP proxy in front of
//! it, which the test stops, and the broker itself.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use busline_core::{Bus, BusConfig, ConfigError, SubscribeOptions};
use busline_rabbitmq::RabbitConfig;
use busline_testkit::events::Ping;
use busline_testkit::proxy::{upstream_of, Proxy};
use busline_testkit::support::{within, WAIT};
use busline_testkit::test_settings;
use common::{unique, RabbitFixture};
use futures::StreamExt;

/// `url` (`amqp://user:pass@host:port/vhost`) with its host replaced by
/// the seed list `seeds`.
fn with_seeds(url: &str, seeds: &[SocketAddr]) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (auth, rest) = rest.rsplit_once('@').map_or(("", rest), |(a, r)| (a, r));
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let at = if auth.is_empty() { "" } else { "@" };
    let hosts: Vec<String> = seeds.iter().map(SocketAddr::to_string).collect();
    format!("{scheme}://{auth}{at}{}{path}", hosts.join(","))
}

/// A local port nothing listens on (bound, then released).
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().unwrap()
}

async fn next_seq(sub: &mut busline_core::Subscription, what: &str) -> u64 {
    let delivery = within(WAIT, what, sub.next())
        .await
        .expect("the subscription goes on")
        .expect("a delivery");
    let event = delivery.event().expect("an envelope");
    let seq = serde_json::from_slice::<Ping>(&event.data.bytes)
        .expect("a Ping")
        .seq;
    delivery.ack().await.expect("ack");
    seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_through_a_later_seed_when_the_first_is_down() {
    let fixture = RabbitFixture::new().await;
    let url = with_seeds(
        &fixture.broker.url,
        &[closed_port(), upstream_of(&fixture.broker.url)],
    );
    let mut config = BusConfig::from_url(url.as_str());
    config.rabbitmq = BusConfig::from_toml_str("[rabbitmq]\nconnect_timeout = \"5s\"")
        .unwrap()
        .rabbitmq;
    let bus = within(
        WAIT,
        "connecting through the second seed",
        busline_rabbitmq::connect(&config),
    )
    .await
    .expect("the second seed answers");
    let (topic, group) = (unique("seeds"), unique("g"));
    let mut sub = bus
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .unwrap();
    bus.publish(&topic, Ping::new(7)).await.unwrap();
    assert_eq!(next_seq(&mut sub, "the event through the second seed").await, 7);
    bus.shutdown().await;

    // Every seed down: one error naming each, without the password.
    let dead = with_seeds(
        "amqp://guest:hunter2@127.0.0.1:1/%2f",
        &[closed_port(), closed_port()],
    );
    let err = busline_rabbitmq::connect(&BusConfig::from_url(dead.as_str()))
        .await
        .unwrap_err();
    assert!(matches!(err, ConfigError::Connect { .. }), "{err}");
    let text = format!("{err} {err:?}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_and_consumers_move_to_the_next_seed_when_their_broker_goes() {
    let fixture = RabbitFixture::new().await;
    let upstream = upstream_of(&fixture.broker.url);
    let proxy = Proxy::start(upstream).await;
    let url = with_seeds(&fixture.broker.url, &[proxy_addr(&proxy, &fixture), upstream]);
    let config = RabbitConfig {
        reconnect_max_backoff: Duration::from_secs(1),
        ..RabbitConfig::default()
    };
    let rabbit = busline_rabbitmq::RabbitBus::connect(&url, "seeds-failover", config)
        .await
        .expect("busline connects through the first seed, the proxy");
    let bus = Bus::new(rabbit, test_settings());
    let (topic, group) = (unique("seeds"), unique("g"));
    let mut sub = bus
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .unwrap();
    bus.publish(&topic, Ping::new(1)).await.unwrap();
    assert_eq!(next_seq(&mut sub, "the event through the proxy").await, 1);

    // The first seed goes away: its connections close, its port refuses.
    drop(proxy);
    within(WAIT, "a publish confirmed through the second seed", async {
        loop {
            if bus.publish(&topic, Ping::new(2)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    // The ack of event 1 went out just before the first seed's connections
    // closed; AMQP does not confirm acks, so it may have been lost with
    // them, and the broker then delivers event 1 again (at-least-once). It
    // must come marked as a redelivery, and event 2 must follow.
    loop {
        let delivery =
            busline_testkit::support::within(WAIT, "the consumer resuming on the second seed", sub.next())
                .await
                .expect("the subscription goes on")
                .expect("a delivery");
        let event = delivery.event().expect("an envelope");
        let seq = serde_json::from_slice::<Ping>(&event.data.bytes)
            .expect("a Ping")
            .seq;
        let attempt = delivery.attempt();
        delivery.ack().await.expect("ack");
        match seq {
            2 => break,
            1 => assert!(attempt > 1, "event 1 came again as a first delivery"),
            other => panic!("unexpected event {other}"),
        }
    }
    bus.shutdown().await;
}

/// The proxy's address (its URL's host and port).
fn proxy_addr(proxy: &Proxy, fixture: &RabbitFixture) -> SocketAddr {
    upstream_of(&proxy.url_for(&fixture.broker.url))
}

/// A seed that accepts connections and then says nothing (a hung broker)
/// while the publisher's deadline is shorter than `connect_timeout`: each
/// publish gives up inside the attempt on that seed, and the next attempt
/// must begin with the seed after it, or no publish would ever reach a
/// broker that answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_seed_cut_short_by_a_deadline_is_skipped_next_time() {
    let fixture = RabbitFixture::new().await;
    let upstream = upstream_of(&fixture.broker.url);
    let first = Proxy::start(upstream).await;
    let hanging = Proxy::start(upstream).await;
    hanging.freeze();
    let url = with_seeds(
        &fixture.broker.url,
        &[
            proxy_addr(&first, &fixture),
            proxy_addr(&hanging, &fixture),
            upstream,
        ],
    );
    let config = RabbitConfig {
        connect_timeout: Duration::from_secs(60),
        operation_timeout: Duration::from_secs(1),
        confirm_timeout: Duration::from_secs(5),
        reconnect_max_backoff: Duration::from_secs(1),
        ..RabbitConfig::default()
    };
    let rabbit = busline_rabbitmq::RabbitBus::connect(&url, "seeds-hanging", config)
        .await
        .expect("busline connects through the first seed");
    let bus = Bus::new(rabbit, test_settings());
    let topic = unique("seeds");
    bus.provision(&topic, &unique("g")).await.unwrap();
    bus.publish(&topic, Ping::new(1)).await.unwrap();

    // The first seed goes away; the next in line hangs.
    drop(first);
    within(WAIT, "a publish confirmed past the hanging seed", async {
        loop {
            if bus.publish(&topic, Ping::new(2)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    bus.shutdown().await;
}
