//! `busline`: the operator's tool for busline's event buses. Tail a topic,
//! publish an event, list, show, replay and purge a group's dead letters,
//! and check a broker end to end, on any backend by URL.

mod connect;
mod dlq;
mod doctor;
mod exit;
mod inventory;
mod publish;
mod render;
mod tail;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::exit::CliError;

/// Tail, publish, inspect and replay dead letters on a busline event bus.
///
/// The broker comes from --url, else BUSLINE_URL, else the `url` of the
/// TOML file BUSLINE_CONFIG names: memory://, amqp://user:pass@host/vhost,
/// nats://host:4222, kafka://host:9092. Secrets in the URL are never printed.
///
/// Exit codes: 0 done; 1 the broker refused or failed an operation (or a
/// doctor check failed); 2 usage; 3 cannot connect or bad configuration;
/// 4 nothing matched (no such dead letter or topic; tail saw fewer events
/// than --count before --timeout).
#[derive(Debug, Parser)]
#[command(name = "busline", version)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Args)]
struct Global {
    /// Broker URL (overrides BUSLINE_URL and the config file).
    #[arg(long, global = true, value_name = "URL")]
    url: Option<String>,
    /// Give up connecting after this long.
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    connect_timeout: Duration,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print events of a topic as they arrive, on a throwaway group of its
    /// own that is removed on exit, so it takes no event from a real group.
    Tail(tail::TailArgs),
    /// Publish one event (a JSON payload) to a topic.
    Publish(publish::PublishArgs),
    /// List, show, replay or purge the dead letters of a group.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// List the broker's topics with the messages it keeps for each.
    Topics(inventory::TopicsArgs),
    /// List the groups of a topic with their lag, events in flight,
    /// members and dead letters waiting, as far as the broker tells.
    Groups(inventory::GroupsArgs),
    /// Check a broker end to end on a scratch topic: provision, publish,
    /// consume, dead-letter, replay, clean up.
    Doctor(doctor::DoctorArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "busline", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return CliError::failed(format!("cannot start the runtime: {e}")).report(),
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => e.report(),
    }
}

async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Tail(args) => tail::run(&cli.global, args).await,
        Command::Publish(args) => publish::run(&cli.global, args).await,
        Command::Dlq(command) => dlq::run(&cli.global, command).await,
        Command::Topics(args) => inventory::topics(&cli.global, args).await,
        Command::Groups(args) => inventory::groups(&cli.global, args).await,
        Command::Doctor(args) => doctor::run(&cli.global, args).await,
        Command::Completions { .. } => unreachable!("answered before the runtime starts"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
