use busline_core::*;

#[derive(serde::Serialize, serde::Deserialize)]
struct Ping;

impl Event for Ping {
    const TYPE: &'static str = "ping";
}

// The payload where the envelope belongs.
async fn takes_the_payload(_ping: Ping) {}

fn register(bus: Bus) {
    let _ = Router::new(bus, "g").on("pings", takes_the_payload);
}

fn main() {}
