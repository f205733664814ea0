//! DescribeClientQuotas and AlterClientQuotas: the filter and the
//! alterations are checked as Kafka checks them (`crate::quota`), quotas
//! are kept in the metadata image, and changes go through the controller.
//!
//! Runs on the shard that received the request; reads the image, and goes
//! to shard 0 (through `Control`) only to alter.

use std::collections::HashSet;
use std::rc::Rc;

use kafka_protocol::messages::alter_client_quotas_response::{
    EntityData as AlterEntity, EntryData as AlterEntry,
};
use kafka_protocol::messages::describe_client_quotas_response::{EntityData, EntryData, ValueData};
use kafka_protocol::messages::{
    AlterClientQuotasRequest, AlterClientQuotasResponse, DescribeClientQuotasRequest,
    DescribeClientQuotasResponse,
};
use kafka_protocol::ResponseError;

use super::str_bytes;
use crate::metadata::{Command, CommandError};
use crate::quota::ClientQuotas;
use crate::shard::Shard;

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

pub fn describe_client_quotas(
    quotas: &ClientQuotas,
    req: DescribeClientQuotasRequest,
) -> DescribeClientQuotasResponse {
    let mut resp = DescribeClientQuotasResponse::default();
    resp.error_message = None;
    if let Err((e, m)) = check_filter(&req) {
        resp.error_code = e.code();
        resp.error_message = Some(str_bytes(&m));
        resp.entries = None;
        return resp;
    }
    let mut exact = Vec::new();
    let mut specified = Vec::new();
    for c in &req.components {
        let t = c.entity_type.to_string();
        match c.match_type {
            MATCH_EXACT => exact.push((t, c._match.as_ref().map(|m| m.to_string()))),
            MATCH_DEFAULT => exact.push((t, None)),
            _ => specified.push(t),
        }
    }
    let entries = quotas
        .describe(&exact, &specified, req.strict)
        .map(|(entity, values)| {
            let mut e = EntryData::default();
            e.entity = entity
                .iter()
                .map(|(t, n)| {
                    let mut d = EntityData::default();
                    d.entity_type = str_bytes(t);
                    d.entity_name = n.as_deref().map(str_bytes);
                    d
                })
                .collect();
            e.values = values
                .iter()
                .map(|(k, v)| {
                    let mut d = ValueData::default();
                    d.key = str_bytes(k);
                    d.value = *v;
                    d
                })
                .collect();
            e
        })
        .collect();
    resp.entries = Some(entries);
    resp
}

/// One entry of an AlterClientQuotas request as a command; a second entry
/// for an entity already named is refused, as Kafka refuses it.
fn alter_command(
    entry: &kafka_protocol::messages::alter_client_quotas_request::EntryData,
    seen: &mut HashSet<Vec<(String, Option<String>)>>,
) -> Result<Command, CommandError> {
    let entity: Vec<(String, Option<String>)> = entry
        .entity
        .iter()
        .map(|e| {
            (
                e.entity_type.to_string(),
                e.entity_name.as_ref().map(|n| n.to_string()),
            )
        })
        .collect();
    let mut sorted = entity.clone();
    sorted.sort();
    if !seen.insert(sorted) {
        return Err(CommandError::new(
            ResponseError::InvalidRequest,
            "Ignoring duplicate entity",
        ));
    }
    let ops = entry
        .ops
        .iter()
        .map(|o| (o.key.to_string(), (!o.remove).then_some(o.value)))
        .collect();
    Ok(Command::AlterClientQuotas { entity, ops })
}

pub async fn alter_client_quotas(
    shard: &Rc<Shard>,
    req: AlterClientQuotasRequest,
) -> AlterClientQuotasResponse {
    let mut seen = HashSet::new();
    let checked = req
        .entries
        .iter()
        .map(|e| alter_command(e, &mut seen))
        .collect();
    let results = shard
        .control()
        .submit_checked(checked, req.validate_only)
        .await;
    let mut resp = AlterClientQuotasResponse::default();
    for (entry, result) in req.entries.iter().zip(results) {
        let mut out = AlterEntry::default();
        out.entity = entry
            .entity
            .iter()
            .map(|e| {
                let mut d = AlterEntity::default();
                d.entity_type = e.entity_type.clone();
                d.entity_name = e.entity_name.clone();
                d
            })
            .collect();
        match result {
            Ok(_) => out.error_message = None,
            Err(e) => {
                out.error_code = e.code;
                out.error_message = Some(str_bytes(&e.message));
            }
        }
        resp.entries.push(out);
    }
    resp
}
