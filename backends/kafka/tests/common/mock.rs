//! librdkafka's mock cluster on a thread of its own (the handle is not
//! `Send`), with broker outages on request.

use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::mocking::{MockCluster, MockCoordinator};
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::RDKafkaApiKey;
use rdkafka::types::RDKafkaRespErr;

type Cluster = MockCluster<'static, DefaultProducerContext>;

/// One operation on the cluster, run on its thread; the answer goes back
/// on the channel the closure holds.
type Op = Box<dyn FnOnce(&Cluster) + Send>;

/// An in-process Kafka cluster; stopped when dropped.
pub struct MockKafka {
    bootstrap: String,
    commands: Mutex<Option<mpsc::Sender<Op>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MockKafka {
    /// A cluster of `brokers` brokers (ids 1 to `brokers`).
    pub fn start(brokers: i32) -> Self {
        let (tx, rx) = mpsc::channel::<Op>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let cluster = MockCluster::new(brokers).expect("a mock cluster");
            ready_tx.send(cluster.bootstrap_servers()).unwrap();
            while let Ok(op) = rx.recv() {
                op(&cluster);
            }
        });
        let bootstrap = ready_rx.recv().expect("the mock cluster's address");
        Self {
            bootstrap,
            commands: Mutex::new(Some(tx)),
            thread: Some(thread),
        }
    }

    /// Its bootstrap list.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Runs `op` on the cluster's thread and returns its answer.
    fn run(&self, op: impl FnOnce(&Cluster) -> Result<(), String> + Send + 'static) -> Result<(), String> {
        let (reply, answer) = mpsc::channel();
        let guard = self.commands.lock().unwrap();
        guard
            .as_ref()
            .ok_or("cluster stopped")?
            .send(Box::new(move |c: &Cluster| {
                let _ = reply.send(op(c));
            }))
            .map_err(|e| e.to_string())?;
        drop(guard);
        answer.recv().map_err(|e| e.to_string())?
    }

    /// Takes broker `id` down (connections cut, none accepted).
    pub fn broker_down(&self, id: i32) -> Result<(), String> {
        self.run(move |c| c.broker_down(id).map_err(|e| e.to_string()))
    }

    /// Brings broker `id` back.
    pub fn broker_up(&self, id: i32) -> Result<(), String> {
        self.run(move |c| c.broker_up(id).map_err(|e| e.to_string()))
    }

    /// Makes broker `id` the leader of `partition` of `topic`; the mock
    /// bumps the partition's leader epoch, as an election does.
    pub fn partition_leader(&self, topic: &str, partition: i32, id: i32) -> Result<(), String> {
        let topic = topic.to_owned();
        self.run(move |c| {
            c.partition_leader(&topic, partition, Some(id))
                .map_err(|e| e.to_string())
        })
    }

    /// Makes broker `id` the coordinator of consumer group `group`.
    pub fn group_coordinator(&self, group: &str, id: i32) -> Result<(), String> {
        let group = group.to_owned();
        self.run(move |c| {
            c.coordinator(MockCoordinator::Group(group), id)
                .map_err(|e| e.to_string())
        })
    }

    /// The next `errors.len()` requests of `api` (from any client) fail with
    /// these errors, in order.
    pub fn request_errors(&self, api: RDKafkaApiKey, errors: Vec<RDKafkaRespErr>) -> Result<(), String> {
        self.run(move |c| {
            c.request_errors(api, &errors);
            Ok(())
        })
    }

    /// Drops the errors still queued for `api`.
    pub fn clear_request_errors(&self, api: RDKafkaApiKey) -> Result<(), String> {
        self.run(move |c| {
            c.clear_request_errors(api);
            Ok(())
        })
    }

    /// Takes every broker down for `outage` (a whole-cluster restart:
    /// connections cut, none accepted), then up again.
    pub async fn bounce(&self, outage: Duration) -> Result<(), String> {
        let id = -1;
        self.broker_down(id)?;
        tokio::time::sleep(outage).await;
        self.broker_up(id)
    }
}

impl Drop for MockKafka {
    fn drop(&mut self) {
        self.commands.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
