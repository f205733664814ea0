//! The error codes a response carries, for `broker_kafka_errors_total`:
//! top-level codes and the per-topic, per-partition or per-group codes of
//! the APIs clients use most. Each non-zero code is counted once per entry
//! that carries it (a Produce with three failed partitions counts three).
//!
//! Pure: reads a response, never changes it.

use kafka_protocol::messages::ResponseKind;

/// Calls `f` with every non-zero error code in `resp`.
pub fn for_each_error(resp: &ResponseKind, mut f: impl FnMut(i16)) {
    let mut e = |code: i16| {
        if code != 0 {
            f(code)
        }
    };
    match resp {
        ResponseKind::Produce(r) => r
            .responses
            .iter()
            .flat_map(|t| &t.partition_responses)
            .for_each(|p| e(p.error_code)),
        ResponseKind::Fetch(r) => {
            e(r.error_code);
            r.responses
                .iter()
                .flat_map(|t| &t.partitions)
                .for_each(|p| e(p.error_code));
        }
        ResponseKind::ListOffsets(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| e(p.error_code)),
        ResponseKind::OffsetForLeaderEpoch(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| e(p.error_code)),
        ResponseKind::Metadata(r) => r.topics.iter().for_each(|t| e(t.error_code)),
        ResponseKind::OffsetCommit(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| e(p.error_code)),
        ResponseKind::TxnOffsetCommit(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| e(p.error_code)),
        ResponseKind::OffsetFetch(r) => {
            e(r.error_code);
            r.topics
                .iter()
                .flat_map(|t| &t.partitions)
                .for_each(|p| e(p.error_code));
            for g in &r.groups {
                e(g.error_code);
                g.topics
                    .iter()
                    .flat_map(|t| &t.partitions)
                    .for_each(|p| e(p.error_code));
            }
        }
        ResponseKind::FindCoordinator(r) => {
            e(r.error_code);
            r.coordinators.iter().for_each(|c| e(c.error_code));
        }
        ResponseKind::JoinGroup(r) => e(r.error_code),
        ResponseKind::SyncGroup(r) => e(r.error_code),
        ResponseKind::Heartbeat(r) => e(r.error_code),
        ResponseKind::LeaveGroup(r) => {
            e(r.error_code);
            r.members.iter().for_each(|m| e(m.error_code));
        }
        ResponseKind::ConsumerGroupHeartbeat(r) => e(r.error_code),
        ResponseKind::StreamsGroupHeartbeat(r) => e(r.error_code),
        ResponseKind::StreamsGroupTopologyDescriptionUpdate(r) => e(r.error_code),
        ResponseKind::DescribeGroups(r) => r.groups.iter().for_each(|g| e(g.error_code)),
        ResponseKind::ListGroups(r) => e(r.error_code),
        ResponseKind::ApiVersions(r) => e(r.error_code),
        ResponseKind::InitProducerId(r) => e(r.error_code),
        ResponseKind::AddOffsetsToTxn(r) => e(r.error_code),
        ResponseKind::EndTxn(r) => e(r.error_code),
        ResponseKind::AddPartitionsToTxn(r) => {
            e(r.error_code);
            r.results_by_topic_v3_and_below
                .iter()
                .flat_map(|t| &t.results_by_partition)
                .for_each(|p| e(p.partition_error_code));
            for t in &r.results_by_transaction {
                t.topic_results
                    .iter()
                    .flat_map(|t| &t.results_by_partition)
                    .for_each(|p| e(p.partition_error_code));
            }
        }
        ResponseKind::CreateTopics(r) => r.topics.iter().for_each(|t| e(t.error_code)),
        ResponseKind::DeleteTopics(r) => r.responses.iter().for_each(|t| e(t.error_code)),
        ResponseKind::CreatePartitions(r) => r.results.iter().for_each(|t| e(t.error_code)),
        ResponseKind::DeleteRecords(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| e(p.error_code)),
        ResponseKind::DescribeConfigs(r) => r.results.iter().for_each(|c| e(c.error_code)),
        ResponseKind::IncrementalAlterConfigs(r) => {
            r.responses.iter().for_each(|c| e(c.error_code))
        }
        ResponseKind::AlterConfigs(r) => r.responses.iter().for_each(|c| e(c.error_code)),
        ResponseKind::UnregisterBroker(r) => e(r.error_code),
        ResponseKind::UnregisterController(r) => e(r.error_code),
        _ => {}
    }
}

/// Kafka's name of an error code (`UNKNOWN_TOPIC_OR_PARTITION`), or the
/// number for a code this build does not know.
pub fn kafka_name(code: i16) -> String {
    let Some(e) = kafka_protocol::ResponseError::try_from_code(code) else {
        return code.to_string();
    };
    let camel = format!("{e:?}");
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::produce_response::{
        PartitionProduceResponse, TopicProduceResponse,
    };
    use kafka_protocol::messages::ProduceResponse;

    #[test]
    fn every_failed_partition_counts_and_successes_do_not() {
        let parts = [0i16, 6, 6, 2]
            .iter()
            .map(|&c| PartitionProduceResponse::default().with_error_code(c))
            .collect();
        let resp = ResponseKind::Produce(ProduceResponse::default().with_responses(vec![
            TopicProduceResponse::default().with_partition_responses(parts),
        ]));
        let mut seen = Vec::new();
        for_each_error(&resp, |c| seen.push(c));
        assert_eq!(seen, vec![6, 6, 2]);
    }
}
