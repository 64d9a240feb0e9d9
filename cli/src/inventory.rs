//! `busline topics` and `busline groups <topic>`: what the broker holds and
//! how far behind each group is, as the broker tells it ("-" where it does
//! not).

use std::process::ExitCode;

use busline_core::{dead_letter_topic, Bus, GroupInfo, InspectError, InspectErrorKind, TopicInfo};
use clap::Args;
use serde_json::json;

use crate::connect::connect;
use crate::exit::{chain, CliError, Exit};
use crate::Global;

/// `busline topics`.
#[derive(Debug, Args)]
pub(crate) struct TopicsArgs {
    /// One JSON object per topic instead of a table.
    #[arg(long)]
    json: bool,
}

/// `busline groups`.
#[derive(Debug, Args)]
pub(crate) struct GroupsArgs {
    /// The topic.
    topic: String,
    /// One JSON object per group instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn topics(global: &Global, args: TopicsArgs) -> Result<ExitCode, CliError> {
    let (bus, _) = connect(global).await?;
    let outcome = bus.list_topics().await;
    bus.shutdown().await;
    let topics = outcome.map_err(inspect_error)?;
    if args.json {
        for t in &topics {
            println!("{}", topic_json(t));
        }
    } else if topics.is_empty() {
        println!("no topics");
    } else {
        let rows: Vec<[String; 3]> = topics
            .iter()
            .map(|t| [t.topic.clone(), figure(t.messages), figure(t.partitions)])
            .collect();
        print!(
            "{}",
            crate::render::table(&["TOPIC", "MESSAGES", "PARTITIONS"], &rows)
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn groups(global: &Global, args: GroupsArgs) -> Result<ExitCode, CliError> {
    let (bus, _) = connect(global).await?;
    let outcome = groups_with_letters(&bus, &args.topic).await;
    bus.shutdown().await;
    let groups = outcome.map_err(inspect_error)?;
    if args.json {
        for (g, letters) in &groups {
            let mut line = group_json(g);
            line["dead_letters"] = json!(letters);
            println!("{line}");
        }
    } else if groups.is_empty() {
        println!("no groups on {}", args.topic);
    } else {
        let rows: Vec<[String; 5]> = groups
            .iter()
            .map(|(g, letters)| {
                [
                    g.group.clone(),
                    figure(g.lag),
                    figure(g.in_flight),
                    figure(g.members),
                    figure(*letters),
                ]
            })
            .collect();
        print!(
            "{}",
            crate::render::table(&["GROUP", "LAG", "IN FLIGHT", "MEMBERS", "DEAD LETTERS"], &rows)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The groups of `topic`, each with the letters waiting in its DLQ: its
/// lag on `<topic>.<group>.dlq` (replay and purge read there as the group).
async fn groups_with_letters(bus: &Bus, topic: &str) -> Result<Vec<(GroupInfo, Option<u64>)>, InspectError> {
    let groups = bus.list_groups(topic).await?;
    let mut out = Vec::with_capacity(groups.len());
    for g in groups {
        let letters = match bus.list_groups(&dead_letter_topic(topic, &g.group)).await {
            Ok(readers) => readers
                .into_iter()
                .find(|r| r.group == g.group)
                .and_then(|r| r.lag),
            // A group made by something other than busline has no DLQ.
            Err(e) if e.kind() == InspectErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        out.push((g, letters));
    }
    Ok(out)
}

fn figure<T: ToString>(n: Option<T>) -> String {
    n.map_or_else(|| "-".to_owned(), |n| n.to_string())
}

fn topic_json(t: &TopicInfo) -> serde_json::Value {
    json!({ "topic": t.topic, "messages": t.messages, "partitions": t.partitions })
}

fn group_json(g: &GroupInfo) -> serde_json::Value {
    json!({ "group": g.group, "lag": g.lag, "in_flight": g.in_flight, "members": g.members })
}

fn inspect_error(e: InspectError) -> CliError {
    let exit = match e.kind() {
        InspectErrorKind::NotFound => Exit::NotFound,
        _ => Exit::Failed,
    };
    CliError::new(exit, chain(&e))
}
