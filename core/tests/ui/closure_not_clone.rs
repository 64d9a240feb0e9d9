use busline_core::*;

#[derive(serde::Serialize, serde::Deserialize)]
struct Ping;

impl Event for Ping {
    const TYPE: &'static str = "ping";
}

struct Connection;

// The closure owns a value that cannot be cloned, so it cannot be called
// once per event.
fn register(bus: Bus) {
    let conn = Connection;
    let _ = Router::new(bus, "g").on("pings", move |_event: DomainEvent<Ping>| {
        let _conn = &conn;
        async {}
    });
}

fn main() {}
