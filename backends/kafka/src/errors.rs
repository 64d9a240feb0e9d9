//! What librdkafka's errors mean in busline's error kinds.

use busline_core::{PublishError, PublishErrorKind};
use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};

/// Whether a failed produce was refused for the record's size (by the
/// producer's `message.max.bytes` or by the broker).
pub(crate) fn is_too_large(e: &PublishError) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<KafkaError>())
        .and_then(KafkaError::rdkafka_error_code)
        .is_some_and(|c| matches!(c, Code::MessageSizeTooLarge | Code::MessageBatchTooLarge))
}

/// The kind of a failed produce.
pub(crate) fn publish_kind(e: &KafkaError) -> PublishErrorKind {
    match e.rdkafka_error_code() {
        Some(Code::MessageTimedOut | Code::RequestTimedOut | Code::OperationTimedOut) => {
            PublishErrorKind::Timeout
        }
        Some(
            Code::BrokerTransportFailure
            | Code::AllBrokersDown
            | Code::Resolve
            | Code::NetworkException
            | Code::BrokerNotAvailable
            | Code::LeaderNotAvailable
            | Code::NotLeaderForPartition
            | Code::NotEnoughReplicas
            | Code::NotEnoughReplicasAfterAppend,
        ) => PublishErrorKind::Connection,
        Some(Code::PurgeQueue | Code::PurgeInflight) => PublishErrorKind::Closed,
        Some(Code::UnknownTopicOrPartition | Code::UnknownTopic | Code::UnknownPartition) => {
            PublishErrorKind::Unroutable
        }
        Some(
            Code::MessageSizeTooLarge
            | Code::InvalidMessageSize
            | Code::InvalidMessage
            | Code::InvalidRecord
            | Code::InvalidRequiredAcks
            | Code::TopicAuthorizationFailed
            | Code::ClusterAuthorizationFailed
            | Code::InvalidProducerEpoch
            | Code::OutOfOrderSequenceNumber
            | Code::DuplicateSequenceNumber,
        ) => PublishErrorKind::Rejected,
        _ => PublishErrorKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn produce_errors_have_kinds() {
        let kind = |c| publish_kind(&KafkaError::MessageProduction(c));
        assert_eq!(kind(Code::MessageTimedOut), PublishErrorKind::Timeout);
        assert_eq!(kind(Code::AllBrokersDown), PublishErrorKind::Connection);
        assert_eq!(kind(Code::MessageSizeTooLarge), PublishErrorKind::Rejected);
        assert_eq!(kind(Code::PurgeQueue), PublishErrorKind::Closed);
    }

    #[test]
    fn size_refusals_are_told_apart() {
        let error = |c| {
            PublishError::new(PublishErrorKind::Rejected, "t").with_source(KafkaError::MessageProduction(c))
        };
        assert!(is_too_large(&error(Code::MessageSizeTooLarge)));
        assert!(!is_too_large(&error(Code::PolicyViolation)));
        assert!(!is_too_large(&PublishError::new(PublishErrorKind::Rejected, "t")));
    }
}
