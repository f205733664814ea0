//! ApiVersions: the versions and features this broker serves
//! (`net::versions`), and from v5 KIP-1242's check that the client reached
//! the node it meant. A client that names a cluster and node gets
//! REBOOTSTRAP_REQUIRED when either is not this shard's, and
//! INVALID_REQUEST when it names only one of them, as Kafka's
//! `KafkaApis.handleApiVersionsRequest` answers. From v3 the client's
//! software name and version must be Kafka's pattern
//! (`[a-zA-Z0-9](?:[a-zA-Z0-9\-.]*[a-zA-Z0-9])?`, KIP-511), else
//! INVALID_REQUEST, as `ApiVersionsRequest.isValid` decides.
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
    if version >= 3
        && !(is_software_token(&req.client_software_name)
            && is_software_token(&req.client_software_version))
    {
        return Some(ResponseError::InvalidRequest);
    }
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

/// Kafka's `SOFTWARE_NAME_VERSION_PATTERN`: letters and digits, with `-`
/// and `.` inside.
fn is_software_token(s: &str) -> bool {
    let b = s.as_bytes();
    let (Some(first), Some(last)) = (b.first(), b.last()) else {
        return false;
    };
    first.is_ascii_alphanumeric()
        && last.is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'.')
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
            .with_client_software_name(StrBytes::from_static_str("kgo"))
            .with_client_software_version(StrBytes::from_static_str("v1.22.3"))
            .with_cluster_id(cluster.map(|c| StrBytes::from_string(c.to_string())))
            .with_node_id(BrokerId(node))
    }

    #[test]
    fn software_name_and_version_checked_from_v3() {
        let with = |name: &'static str, version: &'static str| {
            req(None, -1)
                .with_client_software_name(StrBytes::from_static_str(name))
                .with_client_software_version(StrBytes::from_static_str(version))
        };
        for (name, version) in [
            ("apache-kafka-java", "4.4.0"),
            ("librdkafka", "2.16.1"),
            ("a", "1"),
        ] {
            assert_eq!(refusal(&with(name, version), 3, "abc", 1), None);
        }
        for (name, version) in [
            ("", "1.0"),
            ("kafka client", "1.0"),
            ("-kafka", "1.0"),
            ("kafka", "1.0-"),
            ("kafka", "1.0+build"),
            ("kafka", ""),
        ] {
            let r = with(name, version);
            assert_eq!(
                refusal(&r, 3, "abc", 1),
                Some(ResponseError::InvalidRequest),
                "{name:?} {version:?}"
            );
            // Before v3 the fields are not on the wire.
            assert_eq!(refusal(&r, 2, "abc", 1), None);
        }
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
