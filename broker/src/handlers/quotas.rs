//! DescribeClientQuotas, answered as Kafka answers it on a cluster with no
//! client quotas: the filter is checked as Kafka checks it, and no entity
//! matches. The broker does not enforce quotas, so it keeps none
//! (AlterClientQuotas is not advertised).
//!
//! Runs on the shard that received the request; no state, no I/O.

use std::collections::HashSet;

use kafka_protocol::messages::{DescribeClientQuotasRequest, DescribeClientQuotasResponse};
use kafka_protocol::ResponseError;

use super::str_bytes;

const MATCH_EXACT: i8 = 0;
const MATCH_DEFAULT: i8 = 1;
const MATCH_SPECIFIED: i8 = 2;

/// Kafka's checks of a quota filter (ClientQuotasImage.describe).
fn check_filter(req: &DescribeClientQuotasRequest) -> Result<(), (ResponseError, String)> {
    let invalid = |m: String| Err((ResponseError::InvalidRequest, m));
    let mut types = HashSet::new();
    for c in &req.components {
        let t = c.entity_type.as_str();
        if t.is_empty() {
            return invalid("Invalid empty entity type.".into());
        }
        if !types.insert(t.to_string()) {
            return invalid(format!(
                "Entity type {t} cannot appear more than once in the filter."
            ));
        }
        if !matches!(t, "user" | "client-id" | "ip") {
            return Err((
                ResponseError::UnsupportedVersion,
                format!("Unsupported entity type {t}"),
            ));
        }
        match (c.match_type, c._match.is_some()) {
            (MATCH_EXACT, false) => {
                return invalid(
                    "Request specified MATCH_TYPE_EXACT, but set match string to null.".into(),
                )
            }
            (MATCH_DEFAULT, true) => {
                return invalid(
                    "Request specified MATCH_TYPE_DEFAULT, but also specified a match string."
                        .into(),
                )
            }
            (MATCH_SPECIFIED, true) => {
                return invalid(
                    "Request specified MATCH_TYPE_SPECIFIED, but also specified a match string."
                        .into(),
                )
            }
            (MATCH_EXACT | MATCH_DEFAULT | MATCH_SPECIFIED, _) => {}
            (other, _) => {
                return Err((
                    ResponseError::UnsupportedVersion,
                    format!("Unknown match type {other}"),
                ))
            }
        }
    }
    if types.contains("ip") && (types.contains("user") || types.contains("client-id")) {
        return invalid(
            "Invalid entity filter component combination. IP filter component should not be used with user or clientId filter component.".into(),
        );
    }
    Ok(())
}

pub fn describe_client_quotas(req: DescribeClientQuotasRequest) -> DescribeClientQuotasResponse {
    let mut resp = DescribeClientQuotasResponse::default();
    match check_filter(&req) {
        Ok(()) => {
            resp.error_message = None;
            resp.entries = Some(Vec::new());
        }
        Err((e, m)) => {
            resp.error_code = e.code();
            resp.error_message = Some(str_bytes(&m));
            resp.entries = None;
        }
    }
    resp
}
