//! A typed handler behind an object-safe face: decoding, version checks and
//! upcasting happen here, so the dispatch loop knows no event type.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

use busline_codecs::{CodecError, CodecRegistry};
use futures::future::BoxFuture;
use futures::FutureExt;

use super::{Context, EventService, Gate, HandlerError};
use crate::{DeadLetterReason, Event, Handled, Payload, RawEvent, RetryPolicy, RouterObserver};

/// Why an event was refused before its handler ran: dead-letter it now.
pub(crate) type Refusal = (DeadLetterReason, String);

pub(crate) trait Route: Send + Sync + 'static {
    /// Decodes the event for the handler and returns the handler's future.
    fn prepare(
        &self,
        raw: RawEvent,
        codecs: &CodecRegistry,
        ctx: Context,
        witnesses: &Arc<[Arc<dyn RouterObserver>]>,
    ) -> Result<BoxFuture<'static, Result<(), HandlerError>>, Refusal>;

    /// The route's own retry policy, where it overrides the router's.
    fn retry(&self) -> Option<&Arc<RetryPolicy>>;

    /// The handler's consumption gate, if it has one.
    fn gate(&self) -> Option<Gate>;
}

/// Decodes an older version of `E` and converts it.
pub(crate) type Upcast<E> = Arc<dyn Fn(&RawEvent, &CodecRegistry) -> Result<E, CodecError> + Send + Sync>;

/// Upcasters by target type, each a `HashMap<u32, Upcast<E>>` keyed by the
/// old version.
#[derive(Default)]
pub(crate) struct Upcasters(HashMap<TypeId, Box<dyn Any + Send + Sync>>);

impl Upcasters {
    pub(crate) fn insert<Old: Event, New: Event>(
        &mut self,
        convert: impl Fn(Old) -> New + Send + Sync + 'static,
    ) {
        let upcast: Upcast<New> = Arc::new(move |raw, codecs| {
            codecs
                .decode::<Old>(&raw.data.content_type, &raw.data.bytes)
                .map(&convert)
        });
        self.0
            .entry(TypeId::of::<New>())
            .or_insert_with(|| Box::new(HashMap::<u32, Upcast<New>>::new()))
            .downcast_mut::<HashMap<u32, Upcast<New>>>()
            .expect("upcasters are keyed by their target type")
            .insert(Old::VERSION, upcast);
    }

    pub(crate) fn for_type<E: Event>(&self) -> HashMap<u32, Upcast<E>> {
        self.0
            .get(&TypeId::of::<E>())
            .and_then(|m| m.downcast_ref::<HashMap<u32, Upcast<E>>>())
            .cloned()
            .unwrap_or_default()
    }
}

pub(crate) struct TypedRoute<E: Event, H> {
    pub(crate) handler: Arc<H>,
    pub(crate) upcasters: HashMap<u32, Upcast<E>>,
    pub(crate) retry: Option<Arc<RetryPolicy>>,
}

fn refusal(err: CodecError) -> Refusal {
    match err {
        CodecError::UnknownContentType(_) => (DeadLetterReason::UnknownContentType, err.to_string()),
        _ => (DeadLetterReason::UndecodablePayload, err.to_string()),
    }
}

impl<E: Event, H: EventService<E>> Route for TypedRoute<E, H> {
    fn prepare(
        &self,
        raw: RawEvent,
        codecs: &CodecRegistry,
        ctx: Context,
        witnesses: &Arc<[Arc<dyn RouterObserver>]>,
    ) -> Result<BoxFuture<'static, Result<(), HandlerError>>, Refusal> {
        // A copy only where an observer asked for handled events (tests).
        let mut seen = (!witnesses.is_empty()).then(|| raw.clone());
        let data: E = if raw.version == E::VERSION {
            codecs
                .decode(&raw.data.content_type, &raw.data.bytes)
                .map_err(refusal)?
        } else if let Some(upcast) = self.upcasters.get(&raw.version) {
            upcast(&raw, codecs).map_err(refusal)?
        } else {
            let why = if raw.version > E::VERSION {
                "newer than"
            } else {
                "older than, with no upcaster to,"
            };
            return Err((
                DeadLetterReason::UnsupportedVersion,
                format!(
                    "`{}` version {} is {why} the handled version {}",
                    raw.event_type,
                    raw.version,
                    E::VERSION
                ),
            ));
        };
        let Some(mut seen) = seen.take() else {
            let mut event = raw.map_data(|_| data);
            event.version = E::VERSION;
            return Ok(self.handler.call(event, ctx).boxed());
        };
        if seen.version != E::VERSION {
            // The copy is for observers only: an upcast value the codec
            // cannot encode again must not refuse an event its handler can
            // take, so the observers then see the event as it arrived.
            match codecs.encode(&data) {
                Ok(bytes) => {
                    seen.version = E::VERSION;
                    seen.data = Payload {
                        content_type: codecs.content_type().into(),
                        bytes: bytes.into(),
                    };
                }
                Err(e) => tracing::warn!(
                    event_type = %seen.event_type,
                    error = %crate::ErrorChain(&e),
                    "the upcast event could not be encoded for the router's observers"
                ),
            }
        }
        let (witnesses, topic, group) = (witnesses.clone(), ctx.topic_arc(), ctx.group_arc());
        let mut event = raw.map_data(|_| data);
        event.version = E::VERSION;
        let call = self.handler.call(event, ctx);
        Ok(async move {
            let result = call.await;
            if result.is_ok() {
                let handled = Handled {
                    topic: &topic,
                    group: &group,
                    event: &seen,
                };
                for witness in witnesses.iter() {
                    witness.on_handled(&handled);
                }
            }
            result
        }
        .boxed())
    }

    fn retry(&self) -> Option<&Arc<RetryPolicy>> {
        self.retry.as_ref()
    }

    fn gate(&self) -> Option<Gate> {
        self.handler.gate()
    }
}
