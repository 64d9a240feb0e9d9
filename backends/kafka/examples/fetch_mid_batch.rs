//! Minimal raw-rdkafka reproduction of a broker quirk: produce 10 records
//! in one batch to a 1-partition topic, then read from offset 0, 1, 2 and 5
//! with a plain assigned consumer and print how many records come back.
//! A Kafka broker returns 10, 9, 8 and 5; tansu 0.6.0 (memory storage)
//! returns nothing for an offset inside a record batch.
//!
//! `cargo run -p busline-kafka --example fetch_mid_batch [bootstrap|mock]`
//! (default 127.0.0.1:9092; `mock`: librdkafka's mock cluster, for
//! comparison).

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

#[tokio::main]
async fn main() {
    let target = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9092".into());
    let topic = format!("quirk-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mock = (target == "mock").then(|| MockCluster::new(1).unwrap());
    let bootstrap = mock.as_ref().map_or(target, |m| m.bootstrap_servers());
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &bootstrap);
    match &mock {
        Some(m) => m.create_topic(&topic, 1, 1).unwrap(),
        None => {
            let admin: AdminClient<DefaultClientContext> = config.create().unwrap();
            admin
                .create_topics(
                    [&NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
                    &AdminOptions::new(),
                )
                .await
                .unwrap();
        }
    }
    let producer: FutureProducer = config.clone().set("linger.ms", "50").create().unwrap();
    // Enqueued together, so they travel (and are stored) as one batch.
    let payloads: Vec<String> = (0..10).map(|i| format!("record {i}")).collect();
    let reports: Vec<_> = payloads
        .iter()
        .map(|p| {
            producer
                .send_result(FutureRecord::<(), _>::to(&topic).payload(p))
                .map_err(|(e, _)| e)
                .unwrap()
        })
        .collect();
    for r in reports {
        let d = r.await.unwrap().map_err(|(e, _)| e).unwrap();
        print!("[{}@{}] ", d.partition, d.offset);
    }
    println!("produced 10 records to {topic}");
    for start in [0, 1, 2, 5] {
        let consumer: BaseConsumer = config
            .clone()
            .set("group.id", format!("{topic}-{start}"))
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(start))
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && got.len() < 10 - start as usize {
            if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                got.push(rdkafka::Message::offset(&m.unwrap()));
            }
        }
        println!(
            "from offset {start}: {} records (expected {}) {got:?}",
            got.len(),
            10 - start
        );
    }
}
