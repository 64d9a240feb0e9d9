//! Topics and groups as JetStream reports them: a busline topic is a
//! stream whose name is an escaped topic capturing exactly `<name>.>`; a
//! group is a durable consumer on it whose name is an escaped group.
//! Streams and consumers other programs made (KV buckets, object stores,
//! hand-made streams) are left out rather than shown under a wrong name.

use std::time::Duration;

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::{Context, ErrorCode};
use busline_core::{GroupInfo, InspectError, InspectErrorKind, TopicInfo};
use futures::TryStreamExt;

use crate::naming::{unescape, TopicNames};

/// The whole listing's deadline: each JetStream request has the client's
/// own, but a listing pages through many.
const LISTING_DEADLINE: Duration = Duration::from_secs(30);

/// `listing`, or a `Timeout` error made by `fail` past [`LISTING_DEADLINE`].
async fn within_deadline<T>(
    listing: impl std::future::Future<Output = Result<T, InspectError>>,
    fail: impl Fn(InspectErrorKind, String) -> InspectError,
) -> Result<T, InspectError> {
    tokio::time::timeout(LISTING_DEADLINE, listing)
        .await
        .unwrap_or_else(|_| {
            Err(fail(
                InspectErrorKind::Timeout,
                format!("no answer within {LISTING_DEADLINE:?}"),
            ))
        })
}

pub(crate) async fn topics(js: &Context) -> Result<Vec<TopicInfo>, InspectError> {
    let fail = |kind, e: String| InspectError::topics(kind).with_source(e);
    let listing = async {
        let mut topics = Vec::new();
        let mut streams = js.streams();
        while let Some(info) = streams
            .try_next()
            .await
            .map_err(|e| fail(InspectErrorKind::Other, e.to_string()))?
        {
            let Some(topic) = unescape(&info.config.name) else {
                continue;
            };
            if info.config.subjects != [format!("{}.>", info.config.name)] {
                continue;
            }
            topics.push(TopicInfo::new(topic).with_messages(Some(info.state.messages)));
        }
        topics.sort_by(|a, b| a.topic.cmp(&b.topic));
        Ok(topics)
    };
    within_deadline(listing, fail).await
}

pub(crate) async fn groups(js: &Context, topic: &str) -> Result<Vec<GroupInfo>, InspectError> {
    let fail = |kind, e: String| InspectError::groups(kind, topic).with_source(e);
    let names =
        TopicNames::of(topic).ok_or_else(|| fail(InspectErrorKind::NotFound, "empty topic".into()))?;
    let listing = async {
        let stream = js.get_stream(&names.stream).await.map_err(|e| match e.kind() {
            GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND => fail(
                InspectErrorKind::NotFound,
                format!("no stream `{}`", names.stream),
            ),
            _ => fail(InspectErrorKind::Other, e.to_string()),
        })?;
        let subjects = &stream.cached_info().config.subjects;
        if *subjects != [names.wildcard()] {
            return Err(fail(
                InspectErrorKind::NotFound,
                format!(
                    "stream `{}` captures {subjects:?}, not {:?}: busline did not make it",
                    names.stream,
                    names.wildcard()
                ),
            ));
        }
        let mut groups = Vec::new();
        let mut consumers = stream.consumers();
        while let Some(info) = consumers
            .try_next()
            .await
            .map_err(|e| fail(InspectErrorKind::Other, e.to_string()))?
        {
            // Ephemeral consumers (no durable name) are no group.
            if info.config.durable_name.is_none() {
                continue;
            }
            let Some(group) = unescape(&info.name) else {
                continue;
            };
            groups.push(
                GroupInfo::new(group)
                    .with_lag(Some(info.num_pending))
                    .with_in_flight(Some(info.num_ack_pending as u64))
                    .with_members(Some(u32::try_from(info.num_waiting).unwrap_or(u32::MAX))),
            );
        }
        groups.sort_by(|a, b| a.group.cmp(&b.group));
        Ok(groups)
    };
    within_deadline(listing, fail).await
}
