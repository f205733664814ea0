//! Delegation tokens, SCRAM credentials, and SASL requests that come
//! outside an exchange, answered as Kafka answers them. A token request is
//! not allowed over an unauthenticated channel
//! (DELEGATION_TOKEN_REQUEST_NOT_ALLOWED) and, over a SASL one, finds token
//! authentication disabled (no token secret). SCRAM credentials are checked
//! as Kafka checks them and kept in the metadata (AlterUserScramCredentials,
//! DescribeUserScramCredentials); SASL/SCRAM authenticates with them
//! (`crate::sasl`).
//!
//! Runs on the shard that received the request; its only state is the
//! metadata image, its only I/O the controller's commit.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;

use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse,
    CreateDelegationTokenRequest, CreateDelegationTokenResponse, DescribeDelegationTokenResponse,
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
    ExpireDelegationTokenResponse, RenewDelegationTokenResponse, SaslAuthenticateResponse,
    SaslHandshakeResponse,
};
use kafka_protocol::ResponseError;

use super::str_bytes;
use crate::controller::records::ScramCredential;
use crate::metadata::{Command, CommandError, ScramUpsertion};
use crate::shard::Shard;

/// SCRAM-SHA-256 and SCRAM-SHA-512, Kafka's mechanism numbers.
const MECHANISMS: [i8; 2] = [1, 2];
/// Kafka's bounds on SCRAM iterations (`ScramMechanism`).
const MIN_ITERATIONS: i32 = 4096;
const MAX_ITERATIONS: i32 = 16384;

/// Kafka's answer to a delegation-token request: not allowed over an
/// unauthenticated (PLAINTEXT) connection; over a SASL one, disabled, as
/// Kafka without `delegation.token.secret.key` answers.
fn token_error(principal: Option<&str>) -> i16 {
    match principal {
        None => ResponseError::DelegationTokenRequestNotAllowed.code(),
        Some(_) => ResponseError::DelegationTokenAuthDisabled.code(),
    }
}

pub fn create_delegation_token(
    req: CreateDelegationTokenRequest,
    principal: Option<&str>,
) -> CreateDelegationTokenResponse {
    let mut resp = CreateDelegationTokenResponse::default();
    resp.error_code = token_error(principal);
    // Kafka names the owner (the request's, else the requester: ANONYMOUS
    // on a PLAINTEXT listener) even when it refuses.
    let requester = str_bytes(principal.unwrap_or("ANONYMOUS"));
    match req.owner_principal_name.filter(|n| !n.is_empty()) {
        Some(name) => {
            resp.principal_type = req
                .owner_principal_type
                .unwrap_or_else(|| str_bytes("User"));
            resp.principal_name = name;
        }
        None => {
            resp.principal_type = str_bytes("User");
            resp.principal_name = requester.clone();
        }
    }
    resp.token_requester_principal_type = str_bytes("User");
    resp.token_requester_principal_name = requester;
    resp
}

pub fn renew_delegation_token(principal: Option<&str>) -> RenewDelegationTokenResponse {
    let mut resp = RenewDelegationTokenResponse::default();
    resp.error_code = token_error(principal);
    resp
}

pub fn expire_delegation_token(principal: Option<&str>) -> ExpireDelegationTokenResponse {
    let mut resp = ExpireDelegationTokenResponse::default();
    resp.error_code = token_error(principal);
    resp
}

pub fn describe_delegation_token(principal: Option<&str>) -> DescribeDelegationTokenResponse {
    let mut resp = DescribeDelegationTokenResponse::default();
    resp.error_code = token_error(principal);
    resp
}

/// SaslHandshake outside an exchange: on a PLAINTEXT connection, or on a
/// SASL one that has authenticated already (no re-authentication, as
/// Kafka with `connections.max.reauth.ms` 0).
pub fn sasl_handshake_out_of_place() -> SaslHandshakeResponse {
    let mut resp = SaslHandshakeResponse::default();
    resp.error_code = ResponseError::IllegalSaslState.code();
    resp
}

pub fn sasl_authenticate_out_of_place() -> SaslAuthenticateResponse {
    let mut resp = SaslAuthenticateResponse::default();
    resp.error_code = ResponseError::IllegalSaslState.code();
    resp.error_message = Some(str_bytes(
        "SaslAuthenticate outside a SASL exchange on this connection",
    ));
    resp
}

pub fn describe_user_scram_credentials(
    scram: &BTreeMap<String, BTreeMap<i8, ScramCredential>>,
    req: DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    let mut resp = DescribeUserScramCredentialsResponse::default();
    let users: Vec<String> = req
        .users
        .unwrap_or_default()
        .into_iter()
        .map(|u| u.name.to_string())
        .collect();
    let infos = |creds: &BTreeMap<i8, ScramCredential>| {
        creds
            .iter()
            .map(|(m, c)| {
                CredentialInfo::default()
                    .with_mechanism(*m)
                    .with_iterations(c.iterations)
            })
            .collect()
    };
    if users.is_empty() {
        // None asked for: every user that has a credential.
        resp.results = scram
            .iter()
            .map(|(u, creds)| {
                DescribeUserScramCredentialsResult::default()
                    .with_user(str_bytes(u))
                    .with_credential_infos(infos(creds))
            })
            .collect();
        return resp;
    }
    let mut seen = HashSet::new();
    let duplicates: HashSet<&String> = users.iter().filter(|u| !seen.insert(*u)).collect();
    let mut listed = HashSet::new();
    resp.results = users
        .iter()
        .filter(|u| listed.insert(*u))
        .map(|u| {
            if let Some(creds) = scram.get(u).filter(|_| !duplicates.contains(u)) {
                return DescribeUserScramCredentialsResult::default()
                    .with_user(str_bytes(u))
                    .with_credential_infos(infos(creds));
            }
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

/// One command per user of an AlterUserScramCredentials request, in the
/// order users first appear, or the error Kafka gives that user (then none
/// of its changes is made).
fn alteration_commands(
    req: &AlterUserScramCredentialsRequest,
) -> Vec<(String, Result<Command, CommandError>)> {
    let mut order: Vec<String> = Vec::new();
    let mut ops: HashMap<String, (Vec<ScramUpsertion>, Vec<i8>)> = HashMap::new();
    let mut errors: HashMap<String, CommandError> = HashMap::new();
    let mut pairs = HashSet::new();
    let mut note = |user: &str, mechanism: i8, iterations: Option<i32>| -> Option<CommandError> {
        let fail = |e: ResponseError, m: &str| Some(CommandError::new(e, m));
        if !pairs.insert((user.to_string(), mechanism)) {
            return fail(
                ResponseError::DuplicateResource,
                "A user credential cannot be altered twice in the same request",
            );
        }
        if user.is_empty() {
            return fail(
                ResponseError::UnacceptableCredential,
                "Username must not be empty",
            );
        }
        if !MECHANISMS.contains(&mechanism) {
            return fail(
                ResponseError::UnsupportedSaslMechanism,
                "Unknown SCRAM mechanism",
            );
        }
        match iterations {
            Some(i) if i < MIN_ITERATIONS => {
                fail(ResponseError::UnacceptableCredential, "Too few iterations")
            }
            Some(i) if i > MAX_ITERATIONS => {
                fail(ResponseError::UnacceptableCredential, "Too many iterations")
            }
            _ => None,
        }
    };
    for d in &req.deletions {
        let user = d.name.to_string();
        if !ops.contains_key(&user) {
            order.push(user.clone());
        }
        let entry = ops.entry(user.clone()).or_default();
        match note(&user, d.mechanism, None) {
            Some(e) => {
                errors.entry(user).or_insert(e);
            }
            None => entry.1.push(d.mechanism),
        }
    }
    for u in &req.upsertions {
        let user = u.name.to_string();
        if !ops.contains_key(&user) {
            order.push(user.clone());
        }
        let entry = ops.entry(user.clone()).or_default();
        let mut err = note(&user, u.mechanism, Some(u.iterations));
        if err.is_none() && (u.salt.is_empty() || u.salted_password.is_empty()) {
            err = Some(CommandError::new(
                ResponseError::UnacceptableCredential,
                "A SCRAM credential needs a salt and a salted password",
            ));
        }
        match err {
            Some(e) => {
                errors.entry(user).or_insert(e);
            }
            None => entry.0.push((
                u.mechanism,
                u.iterations,
                u.salt.to_vec(),
                u.salted_password.to_vec(),
            )),
        }
    }
    order
        .into_iter()
        .map(|user| {
            let result = match errors.remove(&user) {
                Some(e) => Err(e),
                None => {
                    let (upsertions, deletions) = ops.remove(&user).unwrap_or_default();
                    Ok(Command::AlterScramCredentials {
                        user: user.clone(),
                        upsertions,
                        deletions,
                    })
                }
            };
            (user, result)
        })
        .collect()
}

pub async fn alter_user_scram_credentials(
    shard: &Rc<Shard>,
    req: AlterUserScramCredentialsRequest,
) -> AlterUserScramCredentialsResponse {
    let (users, checked): (Vec<String>, Vec<_>) = alteration_commands(&req).into_iter().unzip();
    let results = shard.control().submit_checked(checked, false).await;
    let mut resp = AlterUserScramCredentialsResponse::default();
    resp.results = users
        .iter()
        .zip(results)
        .map(|(user, r)| {
            let out = AlterUserScramCredentialsResult::default().with_user(str_bytes(user));
            match r {
                Ok(_) => out,
                Err(e) => out
                    .with_error_code(e.code)
                    .with_error_message(Some(str_bytes(&e.message))),
            }
        })
        .collect();
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::alter_user_scram_credentials_request::{
        ScramCredentialDeletion, ScramCredentialUpsertion,
    };

    fn upsert(user: &str, mechanism: i8, iterations: i32) -> ScramCredentialUpsertion {
        ScramCredentialUpsertion::default()
            .with_name(str_bytes(user))
            .with_mechanism(mechanism)
            .with_iterations(iterations)
            .with_salt(bytes::Bytes::from_static(b"salt"))
            .with_salted_password(bytes::Bytes::from_static(&[1; 32]))
    }

    #[test]
    fn each_user_is_checked_as_kafka_checks_it() {
        let req = AlterUserScramCredentialsRequest::default()
            .with_deletions(vec![ScramCredentialDeletion::default()
                .with_name(str_bytes("dup"))
                .with_mechanism(1)])
            .with_upsertions(vec![
                upsert("alice", 1, 4096),
                upsert("alice", 2, 8192),
                upsert("dup", 1, 4096),
                upsert("few", 1, 4095),
                upsert("many", 2, 16385),
                upsert("", 1, 4096),
                upsert("md5", 3, 4096),
            ]);
        let got: Vec<(String, Result<usize, i16>)> = alteration_commands(&req)
            .into_iter()
            .map(|(u, r)| {
                let r = r.map(|c| match c {
                    Command::AlterScramCredentials {
                        upsertions,
                        deletions,
                        ..
                    } => upsertions.len() + deletions.len(),
                    _ => 0,
                });
                (u, r.map_err(|e| e.code))
            })
            .collect();
        let unacceptable = ResponseError::UnacceptableCredential.code();
        assert_eq!(
            got,
            vec![
                ("dup".into(), Err(ResponseError::DuplicateResource.code())),
                ("alice".into(), Ok(2)),
                ("few".into(), Err(unacceptable)),
                ("many".into(), Err(unacceptable)),
                ("".into(), Err(unacceptable)),
                (
                    "md5".into(),
                    Err(ResponseError::UnsupportedSaslMechanism.code())
                ),
            ]
        );
    }
}
