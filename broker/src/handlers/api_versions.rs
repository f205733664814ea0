//! ApiVersions: the versions and features this broker serves
//! (`net::versions`), and from v5 KIP-1242's check that the client reached
//! the node it meant. A client that names a cluster and node gets
//! REBOOTSTRAP_REQUIRED when either is not this shard's, and
//! INVALID_REQUEST when it names only one of them, as Kafka's
//! `KafkaApis.handleApiVersionsRequest` answers.
//!
//! Runs on the shard that received the request, SASL exchange included; no
//! state, no I/O.

use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::ResponseError;

/// The error a v5+ request's cluster and node get, if any.
pub fn refusal(
    req: &ApiVersionsRequest,
    version: i16,
    cluster_id: &str,
    node_id: i32,
) -> Option<ResponseError> {
    if version < 5 {
        return None;
    }
    match (&req.cluster_id, req.node_id.0) {
        (None, -1) => None,
        (None, _) | (Some(_), -1) => Some(ResponseError::InvalidRequest),
        (Some(c), n) if c.as_str() != cluster_id || n != node_id => {
            Some(ResponseError::RebootstrapRequired)
        }
        _ => None,
    }
}

pub fn handle(
    req: &ApiVersionsRequest,
    version: i16,
    cluster_id: &str,
    node_id: i32,
) -> ApiVersionsResponse {
    match refusal(req, version, cluster_id, node_id) {
        // Kafka's error answer: the code alone, no versions.
        Some(e) => ApiVersionsResponse::default().with_error_code(e.code()),
        None => net::versions::api_versions_response(0, version),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::BrokerId;
    use kafka_protocol::protocol::StrBytes;

    fn req(cluster: Option<&str>, node: i32) -> ApiVersionsRequest {
        ApiVersionsRequest::default()
            .with_cluster_id(cluster.map(|c| StrBytes::from_string(c.to_string())))
            .with_node_id(BrokerId(node))
    }

    #[test]
    fn cluster_and_node_checked_from_v5() {
        let check = |r: &ApiVersionsRequest, v| refusal(r, v, "abc", 1001);
        assert_eq!(check(&req(None, -1), 5), None);
        assert_eq!(check(&req(Some("abc"), 1001), 5), None);
        assert_eq!(
            check(&req(Some("abc"), 1000), 5),
            Some(ResponseError::RebootstrapRequired)
        );
        assert_eq!(
            check(&req(Some("xyz"), 1001), 5),
            Some(ResponseError::RebootstrapRequired)
        );
        assert_eq!(
            check(&req(Some("abc"), -1), 5),
            Some(ResponseError::InvalidRequest)
        );
        assert_eq!(
            check(&req(None, 1001), 5),
            Some(ResponseError::InvalidRequest)
        );
        // Before v5 the fields are not on the wire.
        assert_eq!(check(&req(Some("xyz"), 7), 4), None);
        let refused = handle(&req(Some("xyz"), 1001), 5, "abc", 1001);
        assert_eq!(
            refused.error_code,
            ResponseError::RebootstrapRequired.code()
        );
        assert!(refused.api_keys.is_empty());
        assert!(!handle(&req(None, -1), 5, "abc", 1001).api_keys.is_empty());
    }
}
