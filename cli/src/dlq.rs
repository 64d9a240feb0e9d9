//! `busline dlq`: a group's dead letters, listed, shown, replayed, purged.
//!
//! Every subcommand reads `<topic>.<group>.dlq` as the group itself (the
//! only reader that sees exactly what is still dead on every broker: a
//! Kafka DLQ topic keeps replayed letters, a RabbitMQ queue has one set of
//! readers), holds what it read unsettled, and then settles each letter:
//! listed and kept ones go back to the DLQ at once.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use busline_core::{
    dead_letter_topic, BrowseOptions, Bus, BusConfig, DeadLetterBatch, DeadLetterReason, HeldLetter,
    LetterAction,
};
use clap::{ArgGroup, Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::exit::{chain, code, CliError, Exit};
use crate::render;
use crate::{connect, Global};

/// The dead-letter subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// A table of the group's dead letters: id, type, reason, attempts,
    /// when it failed, the error. Unreadable letters are listed too.
    List(ListArgs),
    /// One dead letter whole: envelope, dead-letter attributes, payload.
    Show(ShowArgs),
    /// Move dead letters back to their topic, for this group alone.
    Replay(ReplayArgs),
    /// Remove dead letters for good (asks first).
    Purge(PurgeArgs),
}

/// Which DLQ, and how much of it to read.
#[derive(Debug, Args)]
pub(crate) struct Dlq {
    /// The topic the group consumes.
    topic: String,
    /// The group whose dead letters to read.
    group: String,
    /// Read at most this many letters.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// Stop reading after this long without a further letter.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    idle: Duration,
}

/// `dlq list`.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    dlq: Dlq,
    /// One JSON object per letter and line instead of a table.
    #[arg(long)]
    json: bool,
}

/// `dlq show`.
#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    #[command(flatten)]
    dlq: Dlq,
    /// The event id of the letter.
    id: String,
}

/// Which letters a replay or purge takes.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("selection").required(true).multiple(true).args(["ids", "reason", "all"])))]
pub(crate) struct Selection {
    /// The letter with this event id; repeatable.
    #[arg(long = "id", value_name = "ID")]
    ids: Vec<String>,
    /// Letters dead-lettered for this reason (e.g. permanent_error,
    /// max_attempts_exceeded, or `unreadable` for envelopes that cannot be
    /// read); with --id, letters that match both.
    #[arg(long, value_parser = parse_reason)]
    reason: Option<ReasonFilter>,
    /// Every letter read.
    #[arg(long, conflicts_with_all = ["ids", "reason"])]
    all: bool,
}

/// `dlq replay`.
#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    #[command(flatten)]
    dlq: Dlq,
    #[command(flatten)]
    selection: Selection,
    /// Print what would be replayed and leave the DLQ as it is.
    #[arg(long)]
    dry_run: bool,
}

/// `dlq purge`.
#[derive(Debug, Args)]
pub(crate) struct PurgeArgs {
    #[command(flatten)]
    dlq: Dlq,
    #[command(flatten)]
    selection: Selection,
    /// Do not ask (needed when stdin is not a terminal).
    #[arg(long, short = 'y')]
    yes: bool,
}

/// A reason to select letters by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReasonFilter {
    Reason(DeadLetterReason),
    /// The envelope cannot be read, so it carries no reason.
    Unreadable,
}

fn parse_reason(text: &str) -> Result<ReasonFilter, String> {
    if text == "unreadable" {
        return Ok(ReasonFilter::Unreadable);
    }
    text.parse().map(ReasonFilter::Reason)
}

impl Selection {
    fn takes(&self, held: &HeldLetter) -> bool {
        if self.all {
            return true;
        }
        let by_id = self.ids.is_empty() || self.ids.iter().any(|want| has_id(held, want));
        let by_reason = match self.reason {
            None => true,
            Some(ReasonFilter::Unreadable) => held.event().is_err(),
            Some(ReasonFilter::Reason(reason)) => held.letter().is_some_and(|l| l.reason == reason),
        };
        by_id && by_reason
    }

    /// Ids asked for by --id that are not among `held`.
    fn missing(&self, held: &[HeldLetter]) -> Vec<String> {
        self.ids
            .iter()
            .filter(|id| !held.iter().any(|h| has_id(h, id)))
            .cloned()
            .collect()
    }
}

pub(crate) async fn run(global: &Global, command: DlqCommand) -> Result<ExitCode, CliError> {
    let (bus, config) = connect::connect(global).await?;
    let result = match command {
        DlqCommand::List(args) => list(&bus, &config, args).await,
        DlqCommand::Show(args) => show(&bus, &config, args).await,
        DlqCommand::Replay(args) => replay(&bus, &config, args).await,
        DlqCommand::Purge(args) => purge(&bus, &config, args).await,
    };
    bus.shutdown().await;
    result
}

async fn browse(bus: &Bus, config: &BusConfig, dlq: &Dlq) -> Result<DeadLetterBatch, CliError> {
    let name = dead_letter_topic(&dlq.topic, &dlq.group);
    let spinner = ProgressBar::new_spinner().with_message(format!("reading {name}"));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let options = BrowseOptions::default()
        .limit(dlq.limit)
        .first_wait(connect::first_wait(config).max(dlq.idle))
        .idle_timeout(dlq.idle);
    // Reading ends by itself when the DLQ is idle; the bound is for a broker
    // that stops answering halfway.
    let deadline = options.first_wait + options.idle_timeout * 2 + Duration::from_secs(60);
    let batch =
        tokio::time::timeout(deadline, bus.browse_dead_letters(&dlq.topic, &dlq.group, options)).await;
    spinner.finish_and_clear();
    match batch {
        Ok(Ok(batch)) => {
            if batch.len() == dlq.limit {
                eprintln!(
                    "busline: read the first {} letters of {name}; --limit reads more",
                    dlq.limit
                );
            }
            Ok(batch)
        }
        Ok(Err(e)) => Err(CliError::failed(format!("reading {name}: {}", chain(&e)))),
        Err(_) => Err(CliError::failed(format!(
            "reading {name}: the broker stopped answering ({}s)",
            deadline.as_secs()
        ))),
    }
}

fn letter_json(held: &HeldLetter) -> Value {
    match held.event() {
        Err(error) => {
            let mut out = json!({ "id": raw_id(held), "unreadable": error.to_string() });
            if let Some(received) = held.received() {
                out["received"] = render::received_json(received);
            }
            out
        }
        Ok(event) => {
            let letter = held.letter();
            json!({
                "id": event.id.as_str(),
                "type": event.event_type.as_str(),
                "reason": letter.map(|l| l.reason.as_str()),
                "attempts": letter.map(|l| l.attempts),
                "failed_at": letter.map(|l| l.failed_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                "error": letter.map(|l| l.error.as_str()),
            })
        }
    }
}

/// The id an unreadable letter's own header gives, if any: a name for it,
/// not a trusted attribute.
fn raw_id(held: &HeldLetter) -> Option<String> {
    held.received()
        .and_then(|r| render::raw_attribute(r, "id"))
        .map(render::bytes_text)
}

/// Whether `id` names `held`: its envelope's id, or for an unreadable
/// letter the id header it carries.
fn has_id(held: &HeldLetter, id: &str) -> bool {
    held.id() == Some(id) || (held.event().is_err() && raw_id(held).as_deref() == Some(id))
}

/// Each unreadable letter as received, below the table: the table has no
/// room for what the operator needs to find its producer.
fn unreadable_details(letters: &[&HeldLetter]) -> String {
    let mut out = String::new();
    for held in letters {
        let Err(error) = held.event() else { continue };
        out.push_str(&format!(
            "unreadable {}: {}\n",
            raw_id(held).unwrap_or_else(|| "(no id header)".into()),
            render::cut(&error.to_string(), 200)
        ));
        match held.received() {
            Some(received) => out.push_str(&format!("{}\n", render::received_pretty(received))),
            None => out.push_str("  (this backend kept nothing of it)\n"),
        }
    }
    out
}

fn table(letters: &[&HeldLetter]) -> String {
    let rows: Vec<[String; 6]> = letters
        .iter()
        .map(|held| match held.event() {
            Err(error) => [
                raw_id(held).map_or_else(|| "-".into(), |id| render::cut(&id, 40)),
                "-".into(),
                "unreadable".into(),
                "-".into(),
                "-".into(),
                render::cut(&error.to_string(), 60),
            ],
            Ok(event) => {
                let letter = held.letter();
                [
                    event.id.to_string(),
                    event.event_type.to_string(),
                    letter.map_or("-".into(), |l| l.reason.to_string()),
                    letter.map_or("-".into(), |l| l.attempts.to_string()),
                    letter.map_or("-".into(), |l| {
                        l.failed_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    }),
                    letter.map_or("no dead-letter attributes".into(), |l| render::cut(&l.error, 60)),
                ]
            }
        })
        .collect();
    render::table(&["ID", "TYPE", "REASON", "ATTEMPTS", "FAILED AT", "ERROR"], &rows)
}

async fn list(bus: &Bus, config: &BusConfig, args: ListArgs) -> Result<ExitCode, CliError> {
    let batch = browse(bus, config, &args.dlq).await?;
    let held: Vec<&HeldLetter> = batch.letters().iter().collect();
    if args.json {
        for letter in &held {
            println!("{}", letter_json(letter));
        }
    } else if held.is_empty() {
        println!(
            "no dead letters in {}",
            dead_letter_topic(&args.dlq.topic, &args.dlq.group)
        );
    } else {
        print!("{}", table(&held));
        print!("{}", unreadable_details(&held));
        let unreadable = held.iter().filter(|h| h.event().is_err()).count();
        println!(
            "{} dead letters in {} ({unreadable} unreadable)",
            held.len(),
            dead_letter_topic(&args.dlq.topic, &args.dlq.group)
        );
    }
    batch.release().await;
    Ok(ExitCode::SUCCESS)
}

async fn show(bus: &Bus, config: &BusConfig, args: ShowArgs) -> Result<ExitCode, CliError> {
    let batch = browse(bus, config, &args.dlq).await?;
    let found = batch.letters().iter().find(|h| has_id(h, &args.id));
    let shown = match found.map(|held| (held, held.event())) {
        Some((held, Ok(event))) => {
            let mut whole = render::event_json(event);
            whole["dead_letter"] = letter_json(held);
            whole["dlq_delivery_attempt"] = held.delivery_attempt().into();
            println!("{}", serde_json::to_string_pretty(&whole).unwrap_or_default());
            true
        }
        Some((held, Err(_))) => {
            let mut whole = letter_json(held);
            whole["dlq_delivery_attempt"] = held.delivery_attempt().into();
            println!("{}", serde_json::to_string_pretty(&whole).unwrap_or_default());
            true
        }
        None => false,
    };
    let dlq = dead_letter_topic(&args.dlq.topic, &args.dlq.group);
    batch.release().await;
    if shown {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(CliError::not_found(format!(
            "no dead letter with id {} in {dlq}",
            args.id
        )))
    }
}

async fn replay(bus: &Bus, config: &BusConfig, args: ReplayArgs) -> Result<ExitCode, CliError> {
    let batch = browse(bus, config, &args.dlq).await?;
    let missing = args.selection.missing(batch.letters());
    let chosen: Vec<&HeldLetter> = batch
        .letters()
        .iter()
        .filter(|h| args.selection.takes(h))
        .collect();
    if args.dry_run {
        if !chosen.is_empty() {
            print!("{}", table(&chosen));
        }
        println!("would replay {} of {} dead letters", chosen.len(), batch.len());
        batch.release().await;
        return finish(&missing);
    }
    let chosen = chosen.len();
    let selection = &args.selection;
    let report = settle(bus, batch, chosen, |held| {
        if selection.takes(held) {
            LetterAction::Replay
        } else {
            LetterAction::Keep
        }
    })
    .await?;
    println!(
        "replayed {}, kept {}, unreadable {}, misplaced {} (attributes name another topic or group)",
        report.moved, report.kept, report.unreadable, report.misplaced
    );
    warn_log_order(config, &report);
    finish(&missing)
}

async fn purge(bus: &Bus, config: &BusConfig, args: PurgeArgs) -> Result<ExitCode, CliError> {
    if !args.yes && !std::io::stdin().is_terminal() {
        return Err(CliError::usage(
            "purge asks before it deletes; pass --yes when stdin is not a terminal",
        ));
    }
    let batch = browse(bus, config, &args.dlq).await?;
    let missing = args.selection.missing(batch.letters());
    let chosen = batch.letters().iter().filter(|h| args.selection.takes(h)).count();
    let dlq = dead_letter_topic(&args.dlq.topic, &args.dlq.group);
    if chosen == 0 {
        batch.release().await;
        println!("nothing to purge in {dlq}");
        return finish(&missing);
    }
    if !args.yes
        && !confirm(&format!(
            "remove {chosen} of {} dead letters from {dlq} for good?",
            batch.len()
        ))
    {
        batch.release().await;
        println!("purged nothing");
        return Ok(ExitCode::SUCCESS);
    }
    let selection = &args.selection;
    let report = settle(bus, batch, chosen, |held| {
        if selection.takes(held) {
            LetterAction::Discard
        } else {
            LetterAction::Keep
        }
    })
    .await?;
    println!("purged {}, kept {}", report.discarded, report.kept);
    warn_log_order(config, &report);
    finish(&missing)
}

async fn settle(
    bus: &Bus,
    batch: DeadLetterBatch,
    chosen: usize,
    decide: impl FnMut(&HeldLetter) -> LetterAction,
) -> Result<busline_core::ReplayReport, CliError> {
    let bar = ProgressBar::new(batch.len() as u64).with_message(format!("{chosen} chosen"));
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} letters settled, {msg}") {
        bar.set_style(style);
    }
    let report = batch.settle(bus, decide, || bar.inc(1)).await;
    bar.finish_and_clear();
    report.map_err(|e| {
        CliError::failed(format!(
            "stopped: {}; the letters not yet moved stay in the DLQ",
            chain(&e)
        ))
    })
}

/// A Kafka DLQ is a log: its group commits an offset only when every
/// letter before it is decided, so a letter moved or purged behind a kept
/// one in its partition is read again next time (seen on tansu: purged by
/// id behind a kept letter, listed again by the next `dlq list`).
fn warn_log_order(config: &BusConfig, report: &busline_core::ReplayReport) {
    let kafka = matches!(config.url.scheme().as_str(), "kafka" | "kafkas");
    let left = report.kept + report.unreadable + report.misplaced;
    if kafka && left > 0 && report.moved + report.discarded > 0 {
        eprintln!(
            "busline: on Kafka, letters replayed or purged behind a kept one in their partition are read \
             again by the next dlq command (a replay may then run twice); work in DLQ order, or use --all"
        );
    }
}

fn finish(missing: &[String]) -> Result<ExitCode, CliError> {
    if missing.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("busline: not found in the DLQ: {}", missing.join(", "));
        Ok(code(Exit::NotFound))
    }
}

fn confirm(question: &str) -> bool {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim(), "y" | "Y" | "yes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_parse_by_their_wire_names() {
        assert_eq!(
            parse_reason("permanent_error").unwrap(),
            ReasonFilter::Reason(DeadLetterReason::PermanentError)
        );
        assert_eq!(parse_reason("unreadable").unwrap(), ReasonFilter::Unreadable);
        assert!(parse_reason("broken").is_err());
    }
}
