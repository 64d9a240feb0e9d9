//! `busline tail`: a topic's events as they arrive, on a group of its own.

use std::process::ExitCode;
use std::time::Duration;

use busline_core::{Bus, RawEvent, StartFrom, SubscribeErrorKind, SubscribeOptions};
use clap::{Args, ValueEnum};
use futures::StreamExt;

use crate::exit::{chain, code, CliError, Exit};
use crate::publish::parse_pair;
use crate::render;
use crate::{connect, Global};

const SUBSCRIBE_DEADLINE: Duration = Duration::from_secs(60);

/// What to tail.
#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    /// The topic (a DLQ too: <topic>.<group>.dlq).
    topic: String,
    /// The name of tail's own group (default: busline-tail-<random>). Never
    /// a group a service consumes from: tail acknowledges what it reads.
    #[arg(long)]
    group: Option<String>,
    /// Keep tail's own group on the broker on exit, to resume from where it
    /// stopped (a group named with --group is always kept).
    #[arg(long)]
    keep_group: bool,
    /// Where a new group starts: events published from now on, or every
    /// event the topic still holds (Kafka, NATS; a RabbitMQ queue only
    /// holds what arrives after it exists).
    #[arg(long, value_enum, default_value_t = From::Latest)]
    from: From,
    /// Only events whose attribute matches, NAME=VALUE (type, key, source,
    /// id, correlation_id or an extension; a trailing * matches a prefix);
    /// repeatable, all must match.
    #[arg(long = "filter", value_name = "NAME=VALUE", value_parser = parse_pair)]
    filters: Vec<(String, String)>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
    /// Stop after this many events (that pass the filters).
    #[arg(long)]
    count: Option<usize>,
    /// Stop after this long; exit 4 if --count was given and not reached.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    timeout: Option<Duration>,
}

/// Where a new group starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum From {
    /// Events published from now on.
    Latest,
    /// Every event the topic still holds.
    Earliest,
}

pub(crate) async fn run(global: &Global, args: TailArgs) -> Result<ExitCode, CliError> {
    let (bus, _config) = connect::connect(global).await?;
    let throwaway = args.group.is_none();
    let group = args
        .group
        .clone()
        .unwrap_or_else(|| format!("busline-tail-{}", crate::connect::random_suffix()));
    let start = match args.from {
        From::Latest => StartFrom::New,
        From::Earliest => StartFrom::Earliest,
    };
    if start == StartFrom::Earliest && !bus.capabilities().replay_from_start {
        eprintln!("busline: this broker cannot replay a topic from its start; tailing from now on");
    }
    let options = SubscribeOptions::default().max_in_flight(16).start_from(start);
    // Joining a Kafka group takes seconds; a broker that never answers must
    // not hang the tool.
    let joining = tokio::time::timeout(SUBSCRIBE_DEADLINE, bus.subscribe(&args.topic, &group, options)).await;
    let mut events = match joining {
        Ok(joined) => {
            joined.map_err(|e| CliError::failed(format!("subscribe to {}: {}", args.topic, chain(&e))))?
        }
        Err(_) => {
            return Err(CliError::failed(format!(
                "subscribe to {}: no answer within {}s",
                args.topic,
                SUBSCRIBE_DEADLINE.as_secs()
            )))
        }
    };
    // The line scripts wait for before they publish.
    eprintln!("busline: tailing {} as group {group}; Ctrl-C to stop", args.topic);

    let deadline = args.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut seen = 0usize;
    let mut outcome = Ok(());
    let mut stop = std::pin::pin!(crate::exit::interrupted());
    loop {
        if args.count.is_some_and(|n| seen >= n) {
            break;
        }
        let next = tokio::select! {
            next = events.next() => next,
            _ = &mut stop => break,
            _ = sleep_until(deadline) => break,
        };
        let Some(next) = next else {
            outcome = Err(CliError::failed(format!(
                "the subscription to {} ended",
                args.topic
            )));
            break;
        };
        let delivery = match next {
            Ok(delivery) => delivery,
            Err(e) => {
                outcome = Err(CliError::failed(format!(
                    "consuming {}: {}",
                    args.topic,
                    chain(&e)
                )));
                break;
            }
        };
        match delivery.event() {
            Ok(event) if matches(event, &args.filters) => {
                seen += 1;
                print_event(&args, event);
            }
            Ok(_) => {}
            Err(error) if args.filters.is_empty() => {
                seen += 1;
                if args.json {
                    println!(
                        "{}",
                        render::unreadable_json(&args.topic, error, delivery.received())
                    );
                } else {
                    println!("unreadable message on {}: {error}", args.topic);
                    if let Some(received) = delivery.received() {
                        println!("{}", render::received_pretty(received));
                    }
                }
            }
            Err(_) => {}
        }
        // tail's own group: what it has shown is done with.
        let _ = delivery.ack().await;
    }
    drop(events);
    if throwaway && !args.keep_group {
        remove(&bus, &args.topic, &group).await;
    }
    bus.shutdown().await;
    outcome?;
    if args.count.is_some_and(|n| seen < n) {
        eprintln!("busline: saw {seen} of {} events", args.count.unwrap_or(0));
        return Ok(code(Exit::NotFound));
    }
    Ok(ExitCode::SUCCESS)
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn print_event(args: &TailArgs, event: &RawEvent) {
    if args.json {
        let mut line = render::event_json(event);
        line["topic"] = args.topic.clone().into();
        println!("{line}");
    } else {
        println!("{}", render::event_pretty(&args.topic, event));
    }
}

async fn remove(bus: &Bus, topic: &str, group: &str) {
    match tokio::time::timeout(Duration::from_secs(15), bus.remove_group(topic, group)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.kind() == SubscribeErrorKind::Unsupported => {
            eprintln!("busline: this backend cannot remove groups; group {group} stays on {topic}")
        }
        Ok(Err(e)) => eprintln!("busline: group {group} stays on {topic}: {}", chain(&e)),
        Err(_) => eprintln!("busline: group {group} stays on {topic}: removing it did not finish in 15s"),
    }
}

/// Whether `event` passes every filter.
fn matches(event: &RawEvent, filters: &[(String, String)]) -> bool {
    filters.iter().all(|(name, want)| {
        let have = match name.as_str() {
            "type" => Some(event.event_type.as_str()),
            "key" => event.key.as_deref(),
            "source" => Some(event.source.as_str()),
            "id" => Some(event.id.as_str()),
            "correlation_id" => Some(event.correlation_id.as_str()),
            other => event.extensions.get(other).map(String::as_str),
        };
        have.is_some_and(|have| match want.strip_suffix('*') {
            Some(prefix) => have.starts_with(prefix),
            None => have == want,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use busline_core::Payload;

    #[test]
    fn filters_match_attributes_exactly_or_by_prefix() {
        let mut event = RawEvent::of_type("order.created", 1, Payload::json(&b"{}"[..]));
        event.key = Some("o-1".into());
        event.extensions.insert("tenant".into(), "acme".into());
        let f = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        assert!(matches(&event, &f(&[("type", "order.created")])));
        assert!(matches(&event, &f(&[("type", "order.*"), ("key", "o-1")])));
        assert!(matches(&event, &f(&[("tenant", "acme")])));
        assert!(!matches(&event, &f(&[("type", "order.paid")])));
        assert!(!matches(&event, &f(&[("missing", "x")])));
        assert!(!matches(&event, &f(&[("type", "order.created"), ("key", "o-2")])));
    }
}
