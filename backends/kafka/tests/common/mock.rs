//! librdkafka's mock cluster on a thread of its own (the handle is not
//! `Send`), with broker outages on request.

use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::types::RDKafkaApiKey;
use rdkafka::types::RDKafkaRespErr;

enum Command {
    Down(i32, mpsc::Sender<Result<(), String>>),
    Up(i32, mpsc::Sender<Result<(), String>>),
    Errors(
        RDKafkaApiKey,
        Vec<RDKafkaRespErr>,
        mpsc::Sender<Result<(), String>>,
    ),
    ClearErrors(RDKafkaApiKey, mpsc::Sender<Result<(), String>>),
}

/// An in-process Kafka cluster; stopped when dropped.
pub struct MockKafka {
    bootstrap: String,
    commands: Mutex<Option<mpsc::Sender<Command>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MockKafka {
    /// A cluster of `brokers` brokers.
    pub fn start(brokers: i32) -> Self {
        let (tx, rx) = mpsc::channel::<Command>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let cluster = MockCluster::new(brokers).expect("a mock cluster");
            ready_tx.send(cluster.bootstrap_servers()).unwrap();
            while let Ok(cmd) = rx.recv() {
                match cmd {
                    Command::Down(id, reply) => {
                        let _ = reply.send(cluster.broker_down(id).map_err(|e| e.to_string()));
                    }
                    Command::Up(id, reply) => {
                        let _ = reply.send(cluster.broker_up(id).map_err(|e| e.to_string()));
                    }
                    Command::Errors(api, errors, reply) => {
                        cluster.request_errors(api, &errors);
                        let _ = reply.send(Ok(()));
                    }
                    Command::ClearErrors(api, reply) => {
                        cluster.clear_request_errors(api);
                        let _ = reply.send(Ok(()));
                    }
                }
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

    fn send(&self, make: impl FnOnce(mpsc::Sender<Result<(), String>>) -> Command) -> Result<(), String> {
        let (reply, answer) = mpsc::channel();
        let guard = self.commands.lock().unwrap();
        guard
            .as_ref()
            .ok_or("cluster stopped")?
            .send(make(reply))
            .map_err(|e| e.to_string())?;
        drop(guard);
        answer.recv().map_err(|e| e.to_string())?
    }

    /// Takes broker `id` down (connections cut, none accepted).
    pub fn broker_down(&self, id: i32) -> Result<(), String> {
        self.send(|r| Command::Down(id, r))
    }

    /// Brings broker `id` back.
    pub fn broker_up(&self, id: i32) -> Result<(), String> {
        self.send(|r| Command::Up(id, r))
    }

    /// The next `errors.len()` requests of `api` (from any client) fail with
    /// these errors, in order.
    pub fn request_errors(&self, api: RDKafkaApiKey, errors: Vec<RDKafkaRespErr>) -> Result<(), String> {
        self.send(|r| Command::Errors(api, errors, r))
    }

    /// Drops the errors still queued for `api`.
    pub fn clear_request_errors(&self, api: RDKafkaApiKey) -> Result<(), String> {
        self.send(|r| Command::ClearErrors(api, r))
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
