//! Transaction markers for partitions led by another broker: the
//! coordinator sends Kafka's own WriteTxnMarkers request (v1) to the node
//! leading them, as a Kafka coordinator does, and reads a result per
//! partition. One short-lived connection per call.
//!
//! Runs on the coordinator's shard; never blocks (glommio sockets), and
//! gives up after `TIMEOUT` (the caller retries, as it does for markers on
//! its own broker).

use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{
    ApiKey, ProducerId, RequestHeader, ResponseHeader, WriteTxnMarkersRequest,
    WriteTxnMarkersResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::ResponseError;

use super::MarkerReq;
use crate::handlers::topic_name;
use crate::metadata::MetadataImage;

const VERSION: i16 = 1;
const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest response read (a result per partition is a few bytes).
const MAX_RESPONSE: usize = 16 << 20;

/// Writes `reqs` on the broker at `addr`; one result per request, in order.
pub async fn write_markers(
    image: &MetadataImage,
    addr: &str,
    reqs: &[MarkerReq],
) -> Vec<Result<(), ResponseError>> {
    let call = async { call(image, addr, reqs).await };
    let timeout = async {
        glommio::timer::sleep(TIMEOUT).await;
        Err(ResponseError::RequestTimedOut)
    };
    match futures_lite::future::or(call, timeout).await {
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
            .with_topics(vec![WritableTxnMarkerTopic::default()
                .with_name(topic_name(&t.name))
                .with_partition_indexes(vec![m.key.1])]);
        req.markers.push(marker);
    }
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0; 4]);
    let key = ApiKey::WriteTxnMarkers;
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(VERSION)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("txn-coordinator")))
        .encode(&mut buf, key.request_header_version(VERSION))
        .map_err(|_| ResponseError::UnknownServerError)?;
    req.encode(&mut buf, VERSION)
        .map_err(|_| ResponseError::UnknownServerError)?;
    let len = (buf.len() - 4) as u32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    let mut stream = glommio::net::TcpStream::connect(addr)
        .await
        .map_err(|_| ResponseError::NetworkException)?;
    stream.write_all(&buf).await.map_err(net_err)?;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.map_err(net_err)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_RESPONSE {
        return Err(ResponseError::CorruptMessage);
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.map_err(net_err)?;
    let mut body = bytes::Bytes::from(body);
    ResponseHeader::decode(&mut body, key.response_header_version(VERSION))
        .map_err(|_| ResponseError::CorruptMessage)?;
    let resp = WriteTxnMarkersResponse::decode(&mut body, VERSION)
        .map_err(|_| ResponseError::CorruptMessage)?;
    let _ = body.remaining();
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
                Some(c) => {
                    Err(ResponseError::try_from_code(c)
                        .unwrap_or(ResponseError::UnknownServerError))
                }
                None if name.is_none() => Err(ResponseError::UnknownTopicOrPartition),
                None => Err(ResponseError::UnknownServerError),
            }
        })
        .collect())
}

fn net_err(_: std::io::Error) -> ResponseError {
    ResponseError::NetworkException
}
