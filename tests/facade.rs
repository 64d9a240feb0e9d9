//! The facade: connecting by URL and configuration, and typed events across
//! codecs, on the memory backend.

use std::time::Duration;

use busline::{BusConfig, ConfigError, Context, DomainEvent, Event, HandlerError, Router};
use busline_testkit::support::{unique, Collector, WAIT};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Shipped {
    order_id: String,
    parcels: u32,
}

impl Event for Shipped {
    const TYPE: &'static str = "order.shipped";
}

#[tokio::test]
async fn same_memory_url_is_the_same_broker() {
    let url = format!("memory://{}", unique("facade"));
    let (publisher, consumer) = (
        busline::connect_url(&url).await.unwrap(),
        busline::connect_url(&url).await.unwrap(),
    );
    let other = busline::connect_url(&format!("{url}-other")).await.unwrap();
    let topic = unique("orders");
    let seen = Collector::<String>::new();
    let sink = seen.clone();
    let router = Router::new(consumer.clone(), "shipping")
        .on(&topic, move |_ctx: Context, e: DomainEvent<Shipped>| {
            let sink = sink.clone();
            async move {
                sink.push(e.data.order_id);
                Ok::<_, HandlerError>(())
            }
        })
        .start()
        .await
        .unwrap();
    other
        .publish(
            &topic,
            Shipped {
                order_id: "elsewhere".into(),
                parcels: 1,
            },
        )
        .await
        .unwrap();
    publisher
        .publish(
            &topic,
            Shipped {
                order_id: "o-1".into(),
                parcels: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        seen.wait_len(1, WAIT, "the shipped event").await,
        vec!["o-1".to_owned()]
    );
    router.shutdown().await.unwrap();
}

#[tokio::test]
async fn urls_without_a_backend_are_typed_errors() {
    #[cfg(not(feature = "kafka"))]
    match busline::connect_url("kafka://127.0.0.1:9092").await.unwrap_err() {
        ConfigError::UnsupportedScheme { scheme, hint } => {
            assert_eq!(scheme, "kafka");
            assert!(hint.contains("`kafka` feature"), "{hint}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        busline::connect_url("redis://127.0.0.1").await.unwrap_err(),
        ConfigError::UnsupportedScheme { .. }
    ));
    assert!(matches!(
        busline::connect_url("localhost:5672").await.unwrap_err(),
        ConfigError::InvalidUrl { .. }
    ));
    let bad_codec = BusConfig {
        codec: "yaml".into(),
        ..BusConfig::from_url("memory://")
    };
    assert!(matches!(
        busline::connect(&bad_codec).await.unwrap_err(),
        ConfigError::UnknownCodec(_)
    ));
}

#[tokio::test]
async fn secrets_stay_out_of_errors() {
    // Port 1 on loopback refuses at once: with the rabbitmq feature the
    // connection fails, without it the scheme does; neither error may show
    // the password.
    let config = BusConfig::from_url("amqp://app:hunter2@127.0.0.1:1/prod");
    let err = busline::connect(&config)
        .await
        .expect_err("nothing listens on port 1");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
    assert!(!format!("{config:?}").contains("hunter2"));
}

#[tokio::test]
async fn msgpack_publisher_json_consumer() {
    let url = format!("memory://{}", unique("codec"));
    let mut config = BusConfig::from_url(&url).with_service("packer");
    config.codec = "msgpack".into();
    let publisher = busline::connect(&config).await.unwrap();
    let consumer = busline::connect_url(&url).await.unwrap();
    assert_eq!(publisher.codecs().content_type(), "application/msgpack");
    assert_eq!(consumer.codecs().content_type(), "application/json");
    let topic = unique("orders");
    let seen = Collector::<(Shipped, String)>::new();
    let sink = seen.clone();
    let router = Router::new(consumer.clone(), "shipping")
        .on(&topic, move |_ctx: Context, e: DomainEvent<Shipped>| {
            let sink = sink.clone();
            async move {
                sink.push((e.data, e.source.to_string()));
                Ok::<_, HandlerError>(())
            }
        })
        .start()
        .await
        .unwrap();
    publisher
        .publish(
            &topic,
            Shipped {
                order_id: "o-9".into(),
                parcels: 3,
            },
        )
        .await
        .unwrap();
    let got = seen.wait_len(1, WAIT, "the msgpack event").await;
    assert_eq!(
        got[0],
        (
            Shipped {
                order_id: "o-9".into(),
                parcels: 3
            },
            "packer".to_owned()
        )
    );
    router.shutdown().await.unwrap();
}

#[tokio::test]
async fn config_from_toml_drives_router_defaults() {
    let url = format!("memory://{}", unique("toml"));
    let config = BusConfig::from_toml_str(&format!(
        "url = \"{url}\"\nservice = \"billing\"\n[retry]\nmax_attempts = 2\ninitial_backoff = \"10ms\"\n\
         [consumer]\nhandler_timeout = \"1s\"\n[memory]\nqueue_capacity = 1000\n"
    ))
    .unwrap();
    let bus = busline::connect(&config).await.unwrap();
    assert_eq!(bus.settings().retry.max_attempts, 2);
    assert_eq!(
        bus.settings().consumer.handler_timeout,
        Some(Duration::from_secs(1))
    );
    let topic = unique("orders");
    let router = Router::new(bus.clone(), "billing")
        .on(&topic, |_ctx: Context, _e: DomainEvent<Shipped>| async {
            Err::<(), _>(HandlerError::retryable("always"))
        })
        .start()
        .await
        .unwrap();
    bus.publish(
        &topic,
        Shipped {
            order_id: "o-1".into(),
            parcels: 1,
        },
    )
    .await
    .unwrap();
    busline_testkit::support::eventually(WAIT, "the dead letter after two attempts", || {
        router.stats().dead_lettered == 1
    })
    .await;
    let stats = router.shutdown().await.unwrap();
    assert_eq!(
        (stats.retried, stats.dead_lettered),
        (1, 1),
        "max_attempts = 2 from the TOML"
    );
}
