use busline_core::*;

#[derive(serde::Serialize, serde::Deserialize)]
struct Ping;

impl Event for Ping {
    const TYPE: &'static str = "ping";
}

// busline 0.1's order: the event first, the context after it.
async fn old_order(_event: DomainEvent<Ping>, _ctx: Context) {}

fn register(bus: Bus) {
    let _ = Router::new(bus, "g").on("pings", old_order);
}

fn main() {}
