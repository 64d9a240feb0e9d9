//! What librdkafka's errors mean in busline's error kinds.

use busline_core::PublishErrorKind;
use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};

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
}
