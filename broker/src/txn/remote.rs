//! Transaction markers for partitions led by another broker: the
//! coordinator sends Kafka's own WriteTxnMarkers request (v2, with each
//! marker's transaction version) to the node
//! leading them, as a Kafka coordinator does, and reads a result per
//! partition, on one of the shard's kept connections to that node
//! (`crate::peer`).
//!
//! Runs on the coordinator's shard; never blocks (glommio sockets), and
//! gives up after `TIMEOUT` (the caller retries, as it does for markers on
//! its own broker).

use std::time::Duration;

use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{
    ApiKey, ProducerId, WriteTxnMarkersRequest, WriteTxnMarkersResponse,
};
use kafka_protocol::ResponseError;

use super::MarkerReq;
use crate::handlers::topic_name;
use crate::metadata::MetadataImage;

const VERSION: i16 = 2;
const TIMEOUT: Duration = Duration::from_secs(10);

/// Writes `reqs` on the broker at `addr`; one result per request, in order.
pub async fn write_markers(
    image: &MetadataImage,
    addr: &str,
    reqs: &[MarkerReq],
) -> Vec<Result<(), ResponseError>> {
    match call(image, addr, reqs).await {
        Ok(results) => results,
        Err(e) => vec![Err(e); reqs.len()],
    }
}

async fn call(
    image: &MetadataImage,
    addr: &str,
    reqs: &[MarkerReq],
) -> Result<Vec<Result<(), ResponseError>>, ResponseError> {
    let mut req = WriteTxnMarkersRequest::default();
    for m in reqs {
        let Some(t) = image.topic_by_id(&m.key.0) else {
            continue;
        };
        let marker = WritableTxnMarker::default()
            .with_producer_id(ProducerId(m.producer_id))
            .with_producer_epoch(m.epoch)
            .with_transaction_result(m.commit)
            .with_coordinator_epoch(m.coordinator_epoch)
            .with_transaction_version(if m.tv2 { 2 } else { 0 })
            .with_topics(vec![WritableTxnMarkerTopic::default()
                .with_name(topic_name(&t.name))
                .with_partition_indexes(vec![m.key.1])]);
        req.markers.push(marker);
    }
    let resp: WriteTxnMarkersResponse =
        crate::peer::call(addr, ApiKey::WriteTxnMarkers, VERSION, &req, TIMEOUT).await?;
    // Results by (producer, topic, partition); each request above is one
    // marker of one partition.
    Ok(reqs
        .iter()
        .map(|m| {
            let name = image.topic_by_id(&m.key.0).map(|t| t.name.as_str());
            let code = resp
                .markers
                .iter()
                .filter(|r| r.producer_id.0 == m.producer_id)
                .flat_map(|r| r.topics.iter())
                .filter(|t| Some(t.name.as_str()) == name)
                .flat_map(|t| t.partitions.iter())
                .find(|p| p.partition_index == m.key.1)
                .map(|p| p.error_code);
            match code {
                Some(0) => Ok(()),
                Some(c) => Err(crate::handlers::error_from_code(c)),
                None if name.is_none() => Err(ResponseError::UnknownTopicOrPartition),
                None => Err(ResponseError::UnknownServerError),
            }
        })
        .collect())
}
