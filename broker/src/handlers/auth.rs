//! Delegation tokens and SCRAM credentials, answered as Kafka answers them
//! on a PLAINTEXT listener with no SCRAM users: a token request is not
//! allowed over an unauthenticated channel (DELEGATION_TOKEN_REQUEST_NOT_
//! ALLOWED), and a user asked for has no credentials (RESOURCE_NOT_FOUND).
//! The broker has no SASL, so it keeps no credentials to alter
//! (AlterUserScramCredentials is not advertised).
//!
//! Runs on the shard that received the request; no state, no I/O.

use std::collections::HashSet;

use kafka_protocol::messages::describe_user_scram_credentials_response::DescribeUserScramCredentialsResult;
use kafka_protocol::messages::{
    CreateDelegationTokenRequest, CreateDelegationTokenResponse, DescribeDelegationTokenResponse,
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
    ExpireDelegationTokenResponse, RenewDelegationTokenResponse,
};
use kafka_protocol::ResponseError;

use super::str_bytes;

const NOT_ALLOWED: ResponseError = ResponseError::DelegationTokenRequestNotAllowed;

pub fn create_delegation_token(req: CreateDelegationTokenRequest) -> CreateDelegationTokenResponse {
    let mut resp = CreateDelegationTokenResponse::default();
    resp.error_code = NOT_ALLOWED.code();
    // Kafka names the owner (the request's, else the requester: ANONYMOUS
    // on a PLAINTEXT listener) even when it refuses.
    match req.owner_principal_name.filter(|n| !n.is_empty()) {
        Some(name) => {
            resp.principal_type = req
                .owner_principal_type
                .unwrap_or_else(|| str_bytes("User"));
            resp.principal_name = name;
        }
        None => {
            resp.principal_type = str_bytes("User");
            resp.principal_name = str_bytes("ANONYMOUS");
        }
    }
    resp.token_requester_principal_type = str_bytes("User");
    resp.token_requester_principal_name = str_bytes("ANONYMOUS");
    resp
}

pub fn renew_delegation_token() -> RenewDelegationTokenResponse {
    let mut resp = RenewDelegationTokenResponse::default();
    resp.error_code = NOT_ALLOWED.code();
    resp
}

pub fn expire_delegation_token() -> ExpireDelegationTokenResponse {
    let mut resp = ExpireDelegationTokenResponse::default();
    resp.error_code = NOT_ALLOWED.code();
    resp
}

pub fn describe_delegation_token() -> DescribeDelegationTokenResponse {
    let mut resp = DescribeDelegationTokenResponse::default();
    resp.error_code = NOT_ALLOWED.code();
    resp
}

pub fn describe_user_scram_credentials(
    req: DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    let mut resp = DescribeUserScramCredentialsResponse::default();
    let users: Vec<String> = req
        .users
        .unwrap_or_default()
        .into_iter()
        .map(|u| u.name.to_string())
        .collect();
    let mut seen = HashSet::new();
    let duplicates: HashSet<&String> = users.iter().filter(|u| !seen.insert(*u)).collect();
    let mut listed = HashSet::new();
    resp.results = users
        .iter()
        .filter(|u| listed.insert(*u))
        .map(|u| {
            let (error, message) = if duplicates.contains(u) {
                (
                    ResponseError::DuplicateResource,
                    format!("Cannot describe SCRAM credentials for the same user twice in a single request: {u}"),
                )
            } else {
                (
                    ResponseError::ResourceNotFound,
                    format!("Attempt to describe a user credential that does not exist: {u}"),
                )
            };
            DescribeUserScramCredentialsResult::default()
                .with_user(str_bytes(u))
                .with_error_code(error.code())
                .with_error_message(Some(str_bytes(&message)))
        })
        .collect();
    resp
}
