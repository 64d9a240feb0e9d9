use busline_core::*;

#[derive(serde::Serialize, serde::Deserialize)]
struct Ping;

impl Event for Ping {
    const TYPE: &'static str = "ping";
}

// A handler returns `()` or `Result<(), impl Into<HandlerError>>`.
async fn counts(_event: DomainEvent<Ping>) -> u32 {
    1
}

fn register(bus: Bus) {
    let _ = Router::new(bus, "g").on("pings", counts);
}

fn main() {}
