//! `busline doctor`: one event through every path busline uses, on a
//! scratch topic, each step with its verdict and time.

use std::future::Future;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use busline_core::{
    Bus, DeadLetterReason, Delivery, Payload, RawEvent, ReplayOptions, StartFrom, SubscribeErrorKind,
    SubscribeOptions, Subscription,
};
use clap::Args;
use futures::StreamExt;

use crate::exit::{chain, code, CliError, Exit};
use crate::{connect, Global};

/// How long each step may take.
#[derive(Debug, Args)]
pub(crate) struct DoctorArgs {
    /// Give up a step after this long.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    step_timeout: Duration,
}

/// The steps' printed verdicts, and whether all passed.
struct Report {
    failed: bool,
}

impl Report {
    /// Runs `step` within `limit` and prints its line; `None` once a step
    /// failed, so the steps after it are skipped.
    async fn step<T>(
        &mut self,
        name: &str,
        limit: Duration,
        step: impl Future<Output = Result<(T, String), String>>,
    ) -> Option<T> {
        if self.failed {
            println!("  skip  {name}");
            return None;
        }
        let started = Instant::now();
        let outcome = match tokio::time::timeout(limit, step).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("no answer within {}", humantime::format_duration(limit))),
        };
        let took = started.elapsed().as_millis();
        match outcome {
            Ok((value, detail)) => {
                println!("  ok    {name:<12} {took:>6} ms  {detail}");
                Some(value)
            }
            Err(error) => {
                println!("  FAIL  {name:<12} {took:>6} ms  {error}");
                self.failed = true;
                None
            }
        }
    }
}

pub(crate) async fn run(global: &Global, args: DoctorArgs) -> Result<ExitCode, CliError> {
    let config = connect::config(global)?;
    println!("busline doctor on {}", config.url.redacted());
    let started = Instant::now();
    let bus = match connect::connect_config(&config, global.connect_timeout).await {
        Ok(bus) => bus,
        Err(e) => {
            println!(
                "  FAIL  {:<12} {:>6} ms  {}",
                "connect",
                started.elapsed().as_millis(),
                e.message()
            );
            return Ok(code(Exit::Connect));
        }
    };
    let caps = bus.capabilities();
    println!(
        "  ok    {:<12} {:>6} ms  persistent: {}, order per key: {}, replay from start: {}",
        "connect",
        started.elapsed().as_millis(),
        caps.persistent,
        caps.order_per_key,
        caps.replay_from_start
    );
    let suffix = crate::connect::random_suffix();
    let topic = format!("busline-doctor-{suffix}");
    // A group of its own too: Kafka deletes a consumer group whole, so a
    // group shared across runs could not be removed with one topic.
    let group = format!("doctor-{suffix}");
    let group = group.as_str();
    let limit = args.step_timeout;
    let first_wait = connect::first_wait(&config);
    let mut report = Report { failed: false };

    let checks = async {
        report
            .step("provision", limit, async {
                bus.provision(&topic, group).await.map_err(|e| chain(&e))?;
                Ok(((), format!("topic {topic}, group {group}, its DLQ")))
            })
            .await?;
        let mut events = report
            .step("subscribe", limit, async {
                let options = SubscribeOptions::default().start_from(StartFrom::Earliest);
                let sub = bus
                    .subscribe(&topic, group, options)
                    .await
                    .map_err(|e| chain(&e))?;
                Ok((sub, "joined the group".to_owned()))
            })
            .await?;
        let id = report
            .step("publish", limit, async {
                let event = RawEvent::of_type(
                    "busline.doctor.ping",
                    1,
                    Payload::json(&br#"{"doctor":true}"#[..]),
                );
                let id = event.id.clone();
                bus.publish_raw(&topic, event).await.map_err(|e| chain(&e))?;
                Ok((id.clone(), format!("event {id}")))
            })
            .await?;
        let delivery = report
            .step("consume", limit, async {
                let delivery = next_with_id(&mut events, id.as_str()).await?;
                Ok((delivery, "received it".to_owned()))
            })
            .await?;
        report
            .step("dead-letter", limit, async {
                delivery
                    .dead_letter(DeadLetterReason::Manual, "busline doctor")
                    .await
                    .map_err(|e| chain(&e))?;
                Ok(((), format!("moved to {topic}.{group}.dlq")))
            })
            .await?;
        report
            .step("replay", limit + first_wait, async {
                let options = ReplayOptions::default().max(1).idle_timeout(first_wait);
                let moved = bus
                    .replay_dead_letters(&topic, group, options)
                    .await
                    .map_err(|e| chain(&e))?;
                if moved.moved != 1 {
                    return Err(format!("found no dead letter to replay ({moved:?})"));
                }
                let again = next_with_id(&mut events, id.as_str()).await?;
                again.ack().await.map_err(|e| chain(&e))?;
                Ok(((), "back on the topic, consumed and acknowledged".to_owned()))
            })
            .await?;
        drop(events);
        Some(())
    };
    checks.await;
    clean_up(&bus, &topic, group, limit).await;
    bus.shutdown().await;
    if report.failed {
        println!("some checks failed");
        return Ok(code(Exit::Failed));
    }
    println!("all checks passed");
    Ok(ExitCode::SUCCESS)
}

/// The delivery of event `id`, acknowledging anything else (the scratch
/// topic is this run's own).
async fn next_with_id(events: &mut Subscription, id: &str) -> Result<Delivery, String> {
    loop {
        let delivery = match events.next().await {
            Some(Ok(delivery)) => delivery,
            Some(Err(e)) => return Err(chain(&e)),
            None => return Err("the subscription ended".into()),
        };
        if delivery.event().is_ok_and(|e| e.id == id) {
            return Ok(delivery);
        }
        let _ = delivery.ack().await;
    }
}

/// Removes the scratch group; says so where the backend cannot.
async fn clean_up(bus: &Bus, topic: &str, group: &str, limit: Duration) {
    let started = Instant::now();
    let outcome = tokio::time::timeout(limit, bus.remove_group(topic, group)).await;
    let took = started.elapsed().as_millis();
    match outcome {
        Ok(Ok(())) => println!(
            "  ok    {:<12} {took:>6} ms  removed the group and its DLQ",
            "clean up"
        ),
        Ok(Err(e)) if e.kind() == SubscribeErrorKind::Unsupported => println!(
            "  note  {:<12} {took:>6} ms  this backend cannot remove groups; {topic} and its group stay",
            "clean up"
        ),
        Ok(Err(e)) => println!(
            "  note  {:<12} {took:>6} ms  {topic} stays: {}",
            "clean up",
            chain(&e)
        ),
        Err(_) => println!(
            "  note  {:<12} {took:>6} ms  {topic} stays: no answer",
            "clean up"
        ),
    }
}
