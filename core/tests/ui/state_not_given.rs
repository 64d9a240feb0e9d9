use busline_core::*;

#[derive(serde::Serialize, serde::Deserialize)]
struct Ping;

impl Event for Ping {
    const TYPE: &'static str = "ping";
}

#[derive(Clone)]
struct Db;

async fn store(State(_db): State<Db>, _event: DomainEvent<Ping>) {}

// No `with_state(Db)` before the handler that takes it.
fn register(bus: Bus) {
    let _ = Router::new(bus, "g").on("pings", store);
}

fn main() {}
