//! `busline publish`: one event with a JSON payload.

use std::io::Read;
use std::process::ExitCode;

use busline_core::{EventId, Payload, RawEvent};
use clap::Args;

use crate::exit::{chain, CliError};
use crate::{connect, Global};

/// Beyond the backends' own publish timeouts, so the tool never hangs.
const PUBLISH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// What to publish.
#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    /// The topic.
    topic: String,
    /// The event type, e.g. order.created.
    #[arg(long = "type", value_name = "TYPE")]
    event_type: String,
    /// The schema version of the payload.
    #[arg(long, default_value_t = 1)]
    version: u32,
    /// The ordering key (Kafka partition key).
    #[arg(long)]
    key: Option<String>,
    /// The payload: JSON text, @file to read a file, or - for stdin.
    #[arg(long, default_value = "{}", value_name = "JSON|@FILE|-")]
    data: String,
    /// The event's `source` (default: the configured service name).
    #[arg(long)]
    source: Option<String>,
    /// The event id (default: a new UUID v7).
    #[arg(long)]
    id: Option<String>,
    /// The correlation id (default: the event's id).
    #[arg(long)]
    correlation_id: Option<String>,
    /// A further CloudEvents attribute, NAME=VALUE; repeatable.
    #[arg(long = "ext", value_name = "NAME=VALUE", value_parser = parse_pair)]
    extensions: Vec<(String, String)>,
}

pub(crate) fn parse_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got `{text}`")),
    }
}

pub(crate) async fn run(global: &Global, args: PublishArgs) -> Result<ExitCode, CliError> {
    let payload = read_data(&args.data)?;
    let (bus, config) = connect::connect(global).await?;
    let mut event = RawEvent::of_type(args.event_type, args.version, Payload::json(payload));
    if let Some(id) = args.id {
        event = event.with_id(EventId::from(id));
    }
    if let Some(correlation) = args.correlation_id {
        event.correlation_id = EventId::from(correlation);
    }
    event.key = args.key.map(Into::into);
    event.source = args.source.unwrap_or(config.service).into();
    event.extensions.extend(args.extensions);
    let id = event.id.clone();
    let published = tokio::time::timeout(PUBLISH_DEADLINE, bus.publish_raw(&args.topic, event)).await;
    bus.shutdown().await;
    match published {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(CliError::failed(format!(
                "publish to {}: {}",
                args.topic,
                chain(&e)
            )))
        }
        Err(_) => {
            return Err(CliError::failed(format!(
                "publish to {}: not confirmed within {}s; it may or may not have been written",
                args.topic,
                PUBLISH_DEADLINE.as_secs()
            )))
        }
    }
    println!("{id}");
    Ok(ExitCode::SUCCESS)
}

/// The payload's bytes, checked to be JSON: a typo must not reach a topic.
fn read_data(data: &str) -> Result<Vec<u8>, CliError> {
    let bytes = if data == "-" {
        let mut buffer = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buffer)
            .map_err(|e| CliError::usage(format!("cannot read stdin: {e}")))?;
        buffer
    } else if let Some(path) = data.strip_prefix('@') {
        std::fs::read(path).map_err(|e| CliError::usage(format!("cannot read {path}: {e}")))?
    } else {
        data.as_bytes().to_vec()
    };
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .map_err(|e| CliError::usage(format!("--data is not JSON: {e}")))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_split_at_the_first_equals_sign() {
        assert_eq!(parse_pair("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(parse_pair("=b").is_err());
        assert!(parse_pair("ab").is_err());
    }

    #[test]
    fn data_must_be_json() {
        assert!(read_data("{\"a\":1}").is_ok());
        assert!(read_data("{a:1}").is_err());
    }
}
