//! The durable dedup store on a real PostgreSQL (feature `postgres`). The
//! URL comes from `BUSLINE_TEST_POSTGRES_URL`, default
//! `postgres://postgres:postgres@127.0.0.1:5432/test`.
#![cfg(feature = "postgres")]

use std::sync::Arc;
use std::time::Duration;

use busline_core::{Context, DomainEvent, HandlerError, Router};
use busline_layers::{default_stack, DedupStore, PostgresDedupStore, RouterExt};
use busline_testkit::events::Ping;
use busline_testkit::support::{eventually, unique, Collector, WAIT};
use busline_testkit::TestHarness;

fn url() -> String {
    std::env::var("BUSLINE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/test".to_owned())
}

fn table() -> String {
    unique("busline_dedup").replace('-', "_")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marks_survive_a_restart() {
    let table = table();
    let event = DomainEvent::new(Ping::new(1));
    let handled = Collector::new();

    // First "process": handles the event, marks it.
    {
        let store = Arc::new(PostgresDedupStore::connect(&url(), &table).await.unwrap());
        let h = TestHarness::new();
        let hd = handled.clone();
        let router = Router::new(h.bus(), "billing")
            .with_stack(default_stack().with_dedup(store.clone()))
            .on("orders", move |_c: Context, e: DomainEvent<Ping>| {
                hd.push(e.id.clone());
                async { Ok::<_, HandlerError>(()) }
            })
            .start()
            .await
            .unwrap();
        h.bus().publish_event("orders", event.clone()).await.unwrap();
        h.wait_for_handled::<Ping>(WAIT).await;
        router.shutdown().await.unwrap();
        assert!(store.seen("billing", &event.id).await.unwrap());
    } // store, its connection and the bus are gone

    // Second "process": a fresh connection still skips the duplicate.
    let store = Arc::new(PostgresDedupStore::connect(&url(), &table).await.unwrap());
    let h = TestHarness::new();
    let hd = handled.clone();
    let router = Router::new(h.bus(), "billing")
        .with_stack(default_stack().with_dedup(store.clone()))
        .on("orders", move |_c: Context, e: DomainEvent<Ping>| {
            hd.push(e.id.clone());
            async { Ok::<_, HandlerError>(()) }
        })
        .start()
        .await
        .unwrap();
    h.bus().publish_event("orders", event.clone()).await.unwrap();
    h.bus().publish("orders", Ping::new(2)).await.unwrap();
    eventually(WAIT, "both settled", || {
        let s = router.stats();
        s.handled + s.skipped == 2
    })
    .await;
    let stats = router.shutdown().await.unwrap();
    assert_eq!((stats.handled, stats.skipped), (1, 1));
    assert_eq!(
        handled.len(),
        2,
        "the event once, before the restart, and the new one"
    );
    assert!(
        !store.seen("shipping", &event.id).await.unwrap(),
        "marks are per group"
    );

    assert_eq!(
        store.purge_older_than(Duration::from_secs(3600)).await.unwrap(),
        0
    );
    assert_eq!(store.purge_older_than(Duration::ZERO).await.unwrap(), 2);
    assert!(!store.seen("billing", &event.id).await.unwrap());
    drop_table(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_names_are_checked() {
    for bad in ["Robert'); DROP TABLE x;--", "1abc", "", "a.b.c"] {
        assert!(PostgresDedupStore::connect(&url(), bad).await.is_err(), "{bad}");
    }
}
