//! The admin HTTP endpoint (`admin_listen`, default 127.0.0.1:9644):
//! `/metrics` in the OpenMetrics text format (what Prometheus scrapes), `/health`, `/ready`,
//! `/debug/latency` (percentiles of each stage of produce and fetch), and a JSON
//! API over the cluster, nodes, topics, groups and reassignments, described
//! by `docs/admin-api.yaml` (also served at `/openapi.yaml`).
//!
//! Runs on shard 0's executor, served by hyper's HTTP/1 server over
//! glommio's sockets. It reads the other shards only through the control
//! mesh (their reports), and never holds a borrow across an `.await`.
//!
//! What a client can cost: at most `MAX_CONNECTIONS` connections (more are
//! closed at once), each closed after `CONNECTION_LIFETIME`, and request
//! bodies of at most `MAX_BODY` bytes.

pub mod api;

use std::cell::Cell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use kafka_protocol::messages::BrokerId;
use serde_json::{json, Value};
use smol_hyper::rt::FuturesIo;
use tracing::{debug, error, info};

use crate::handlers::admin::reassign;
use crate::metrics::encode;
use crate::shard::Shard;

const MAX_CONNECTIONS: usize = 64;
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
const MAX_BODY: usize = 64 << 10;

/// The OpenAPI description of the JSON API.
pub const OPENAPI: &str = include_str!("../../../docs/admin-api.yaml");

/// Starts the endpoint on this (shard 0's) executor, if configured. A
/// port that cannot be bound is logged and the broker serves Kafka
/// without it.
pub fn start(shard: &Rc<Shard>) {
    let listen = shard.config.admin_listen.clone();
    if listen.is_empty() {
        return;
    }
    let addr: SocketAddr = match listen.parse() {
        Ok(a) => a,
        Err(e) => {
            error!("admin API not started: admin_listen {listen:?}: {e}");
            return;
        }
    };
    let listener = match glommio::net::TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            error!(
                "admin API not started: cannot listen on {addr}: {e} (set admin_listen to a free \
                 address, or to \"\" to turn it off); Kafka clients are served regardless"
            );
            return;
        }
    };
    info!("admin API and /metrics on http://{addr}");
    let shard = shard.clone();
    glommio::spawn_local(async move {
        let open = Rc::new(Cell::new(0usize));
        loop {
            let stream = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    debug!("admin accept failed: {e}");
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            if open.get() >= MAX_CONNECTIONS {
                debug!("admin API: {MAX_CONNECTIONS} connections open, closing a new one");
                continue;
            }
            open.set(open.get() + 1);
            let (shard, open) = (shard.clone(), open.clone());
            glommio::spawn_local(async move {
                let service = hyper::service::service_fn(move |req| {
                    let shard = shard.clone();
                    async move { Ok::<_, Infallible>(route(&shard, req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(FuturesIo::new(stream), service);
                let limit = async {
                    glommio::timer::sleep(CONNECTION_LIFETIME).await;
                    Ok(())
                };
                if let Err(e) = futures_lite::future::or(conn, limit).await {
                    debug!("admin connection: {e}");
                }
                open.set(open.get() - 1);
            })
            .detach();
        }
    })
    .detach();
}

type Answer = Response<Full<Bytes>>;

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Answer {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn json_answer(status: StatusCode, v: &Value) -> Answer {
    respond(status, "application/json", v.to_string())
}

fn problem(status: StatusCode, error: &str, message: impl Into<String>) -> Answer {
    json_answer(
        status,
        &json!({ "error": error, "message": message.into() }),
    )
}

/// 405, with the `Allow` header RFC 9110 asks for.
fn not_allowed(method: &Method, path: &str, allow: &'static str) -> Answer {
    let mut r = problem(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        format!("{method} is not allowed on {path} (allowed: {allow})"),
    );
    r.headers_mut().insert(
        hyper::header::ALLOW,
        hyper::header::HeaderValue::from_static(allow),
    );
    r
}

/// Path segments after the leading `/`, percent-decoded.
fn segments(path: &str) -> Vec<String> {
    path.trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect()
}

async fn route(shard: &Rc<Shard>, req: Request<Incoming>) -> Answer {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let segs = segments(&path);
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let get = method == Method::GET;
    match (segs.as_slice(), get) {
        (["health"], true) => json_answer(StatusCode::OK, &json!({ "status": "ok" })),
        (["ready"], true) => {
            let reports = shard.control().reports().await;
            let (ready, body) = api::ready(&shard.config, &reports);
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json_answer(status, &body)
        }
        (["metrics"], true) => {
            let control = shard.control();
            let reports = control.reports().await;
            let quorum = control.quorum().await;
            respond(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                encode::encode(&reports, quorum.as_ref()),
            )
        }
        (["debug", "latency"], true) => {
            let reports = shard.control().reports().await;
            json_answer(StatusCode::OK, &api::latency(&reports))
        }
        (["openapi.yaml"], true) => respond(StatusCode::OK, "application/yaml", OPENAPI),
        (["v1", "cluster"], true) => {
            let control = shard.control();
            let reports = control.reports().await;
            let quorum = control.quorum().await;
            let body = api::cluster(&shard.config, &shard.image(), &reports, quorum.as_ref());
            json_answer(StatusCode::OK, &body)
        }
        (["v1", "nodes"], true) => {
            let reports = shard.control().reports().await;
            json_answer(StatusCode::OK, &api::nodes(&shard.image(), &reports))
        }
        (["v1", "topics"], true) => json_answer(StatusCode::OK, &api::topics(&shard.image())),
        (["v1", "topics", name], true) => {
            let reports = shard.control().reports().await;
            match api::topic(&shard.image(), &reports, name) {
                Some(v) => json_answer(StatusCode::OK, &v),
                None => problem(
                    StatusCode::NOT_FOUND,
                    "UNKNOWN_TOPIC_OR_PARTITION",
                    format!("topic {name} does not exist"),
                ),
            }
        }
        (["v1", "groups"], true) => {
            let reports = shard.control().reports().await;
            json_answer(StatusCode::OK, &api::groups(&reports))
        }
        (["v1", "groups", id], true) => {
            let reports = shard.control().reports().await;
            match api::group(&reports, id) {
                Some(v) => json_answer(StatusCode::OK, &v),
                None => problem(
                    StatusCode::NOT_FOUND,
                    "GROUP_ID_NOT_FOUND",
                    format!("group {id} does not exist"),
                ),
            }
        }
        (["v1", "drain"], false) if method == Method::POST => {
            // What SIGTERM does: partitions move to other brokers (or, alone,
            // the WAL is uploaded), then the process exits.
            tracing::warn!("drain requested through the admin API: shutting down");
            crate::shutdown::request();
            json_answer(StatusCode::ACCEPTED, &json!({ "status": "draining" }))
        }
        // Moves finish before they are answered, so none is ever ongoing.
        (["v1", "reassignments"], true) => json_answer(StatusCode::OK, &json!([])),
        (["v1", "reassignments"], false) if method == Method::POST => {
            start_reassignment(shard, req).await
        }
        (["v1", "reassignments", topic, partition], false) if method == Method::DELETE => {
            match partition.parse::<i32>() {
                Ok(p) => match reassign(shard, topic, p, None).await {
                    Ok(()) => json_answer(StatusCode::OK, &json!({})),
                    Err((e, msg)) => kafka_problem(e, msg),
                },
                Err(_) => problem(
                    StatusCode::BAD_REQUEST,
                    "INVALID_REQUEST",
                    format!("partition {partition:?} is not a number"),
                ),
            }
        }
        (
            ["health" | "ready" | "metrics" | "openapi.yaml"]
            | ["debug", "latency"]
            | ["v1", "cluster" | "nodes" | "topics" | "groups"]
            | ["v1", "topics" | "groups", _],
            _,
        ) => not_allowed(&method, &path, "GET"),
        (["v1", "reassignments"], _) => not_allowed(&method, &path, "GET, POST"),
        (["v1", "drain"], _) => not_allowed(&method, &path, "POST"),
        (["v1", "reassignments", _, _], _) => not_allowed(&method, &path, "DELETE"),
        _ => problem(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no such endpoint: {path}"),
        ),
    }
}

/// A Kafka error as an HTTP problem: unknown things are 404, the caller's
/// mistakes 400, the rest 409.
fn kafka_problem(e: kafka_protocol::ResponseError, message: String) -> Answer {
    use kafka_protocol::ResponseError as E;
    let status = match e {
        E::UnknownTopicOrPartition | E::NoReassignmentInProgress => StatusCode::NOT_FOUND,
        E::InvalidReplicaAssignment | E::InvalidRequest => StatusCode::BAD_REQUEST,
        _ => StatusCode::CONFLICT,
    };
    problem(status, &error_name(e), message)
}

fn error_name(e: kafka_protocol::ResponseError) -> String {
    crate::metrics::errors::kafka_name(e.code())
}

async fn start_reassignment(shard: &Rc<Shard>, req: Request<Incoming>) -> Answer {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "INVALID_REQUEST",
                format!("request body: {e} (at most {MAX_BODY} bytes)"),
            )
        }
    };
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Move {
        topic: String,
        partition: i32,
        node_id: i32,
    }
    let m: Move = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                format!("expected {{\"topic\", \"partition\", \"node_id\"}}: {e}"),
            )
        }
    };
    let started = Instant::now();
    match reassign(shard, &m.topic, m.partition, Some(&[BrokerId(m.node_id)])).await {
        Ok(()) => json_answer(
            StatusCode::OK,
            &json!({
                "topic": m.topic,
                "partition": m.partition,
                "leader": m.node_id,
                "took_ms": started.elapsed().as_millis() as u64,
            }),
        ),
        Err((e, msg)) => kafka_problem(e, msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_are_kafkas() {
        use kafka_protocol::ResponseError as E;
        assert_eq!(
            error_name(E::UnknownTopicOrPartition),
            "UNKNOWN_TOPIC_OR_PARTITION"
        );
        assert_eq!(error_name(E::NotLeaderOrFollower), "NOT_LEADER_OR_FOLLOWER");
    }

    #[test]
    fn path_segments_are_decoded() {
        assert_eq!(
            segments("/v1/groups/a%2Fb%20c/"),
            vec!["v1", "groups", "a/b c"]
        );
        assert!(segments("/").is_empty());
    }
}
