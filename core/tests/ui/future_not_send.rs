use busline_core::*;

#[derive(serde::Serialize, serde::Deserialize)]
struct Ping;

impl Event for Ping {
    const TYPE: &'static str = "ping";
}

// An `Rc` held across an await: the future cannot move between threads.
async fn not_send(_event: DomainEvent<Ping>) {
    let shared = std::rc::Rc::new(1);
    std::future::ready(()).await;
    drop(shared);
}

fn register(bus: Bus) {
    let _ = Router::new(bus, "g").on("pings", not_send);
}

fn main() {}
