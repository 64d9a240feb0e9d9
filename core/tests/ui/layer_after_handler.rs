use busline_core::*;

#[derive(serde::Serialize, serde::Deserialize)]
struct Ping;

impl Event for Ping {
    const TYPE: &'static str = "ping";
}

async fn handle(_ping: DomainEvent<Ping>) {}

// A router-wide layer after a handler: it could not wrap that handler.
fn register(bus: Bus) {
    let _ = Router::new(bus, "g").on("pings", handle).layer(Identity);
}

fn main() {}
