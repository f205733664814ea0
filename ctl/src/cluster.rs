//! `brokerctl cluster info`: cluster id, controller and nodes, from
//! DescribeCluster when the broker serves it, else from Metadata.
//! `brokerctl cluster health`: the broker's admin API (`/health`, `/ready`,
//! `/v1/cluster`).
//!
//! Read-only; this module never changes the cluster.

use clap::Subcommand;
use kafka_protocol::messages::{DescribeClusterRequest, MetadataResponse};
use serde_json::{json, Value};

use crate::client::Client;
use crate::error::{CtlError, Result};
use crate::output::{key_values, Output, Table};

/// DescribeCluster v1+: ask for the brokers' endpoints.
const ENDPOINT_BROKERS: i8 = 1;

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Cluster id, controller and nodes.
    Info,
    /// Liveness, readiness and the metadata quorum, from the broker's admin
    /// API (not the Kafka protocol). Exit code 1 when not ready.
    Health {
        /// The admin API's address (the broker's `admin_listen`).
        #[arg(long, default_value = "127.0.0.1:9644", env = "BROKERCTL_ADMIN")]
        admin: String,
    },
}

struct Node {
    id: i32,
    host: String,
    port: i32,
    rack: Option<String>,
}

struct ClusterInfo {
    cluster_id: Option<String>,
    controller: i32,
    nodes: Vec<Node>,
    source: &'static str,
}

pub fn run(client: &mut Client, out: &Output, cmd: ClusterCmd) -> Result<()> {
    match cmd {
        ClusterCmd::Info => info(client, out),
        ClusterCmd::Health { admin } => health(&admin, out),
    }
}

/// `cluster health`: needs no Kafka connection, only the admin API.
pub fn health(admin: &str, out: &Output) -> Result<()> {
    let (_, live) = crate::admin_http::get_json(admin, "/health")?;
    let (status, ready) = crate::admin_http::get_json(admin, "/ready")?;
    let (_, cluster) = crate::admin_http::get_json(admin, "/v1/cluster")?;
    let is_ready = status == 200 && ready["ready"] == true;
    if out.json {
        out.json(&json!({ "health": live, "ready": ready, "cluster": cluster }));
    } else {
        let waiting: Vec<&str> = ready["waiting"]
            .as_array()
            .map(|w| w.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let q = &cluster["controller"];
        let text = key_values(&[
            ("HEALTH", live["status"].as_str().unwrap_or("-").to_string()),
            (
                "READY",
                if is_ready {
                    "yes".into()
                } else {
                    format!("no: {}", waiting.join("; "))
                },
            ),
            (
                "CLUSTER",
                cluster["cluster_id"].as_str().unwrap_or("-").to_string(),
            ),
            ("CONTROLLER LEADER", q["leader"].to_string()),
            ("RAFT TERM", q["term"].to_string()),
            ("METADATA INDEX", q["last_applied_index"].to_string()),
            ("TOPICS", cluster["topics"].to_string()),
            ("PARTITIONS", cluster["partitions"].to_string()),
        ]);
        out.text(&text);
    }
    if is_ready {
        Ok(())
    } else {
        Err(CtlError::Failed(format!(
            "{admin}: the broker is not ready"
        )))
    }
}

fn describe_cluster(client: &mut Client) -> Result<ClusterInfo> {
    let version = client.version_on::<DescribeClusterRequest>(None)?;
    let mut req = DescribeClusterRequest::default();
    if version >= 1 {
        req.endpoint_type = ENDPOINT_BROKERS;
    }
    let resp = client.call(None, &req)?;
    CtlError::check(
        || "DescribeCluster".into(),
        resp.error_code,
        resp.error_message.as_deref(),
    )?;
    Ok(ClusterInfo {
        cluster_id: Some(resp.cluster_id.to_string()),
        controller: resp.controller_id.0,
        nodes: resp
            .brokers
            .iter()
            .map(|b| Node {
                id: b.broker_id.0,
                host: b.host.to_string(),
                port: b.port,
                rack: b.rack.as_ref().map(|r| r.to_string()),
            })
            .collect(),
        source: "DescribeCluster",
    })
}

fn from_metadata(meta: &MetadataResponse) -> ClusterInfo {
    ClusterInfo {
        cluster_id: meta.cluster_id.as_ref().map(|c| c.to_string()),
        controller: meta.controller_id.0,
        nodes: meta
            .brokers
            .iter()
            .map(|b| Node {
                id: b.node_id.0,
                host: b.host.to_string(),
                port: b.port,
                rack: b.rack.as_ref().map(|r| r.to_string()),
            })
            .collect(),
        source: "Metadata",
    }
}

fn info(client: &mut Client, out: &Output) -> Result<()> {
    let mut info = if client.version_on::<DescribeClusterRequest>(None).is_ok() {
        describe_cluster(client)?
    } else {
        from_metadata(&client.metadata(Some(&[]))?)
    };
    info.nodes.sort_by_key(|n| n.id);
    if out.json {
        let nodes: Vec<Value> = info
            .nodes
            .iter()
            .map(|n| json!({"id": n.id, "host": n.host, "port": n.port, "rack": n.rack}))
            .collect();
        out.json(&json!({
            "cluster_id": info.cluster_id,
            "controller_id": info.controller,
            "nodes": nodes,
            "source": info.source,
        }));
        return Ok(());
    }
    let mut text = key_values(&[
        ("CLUSTER", info.cluster_id.unwrap_or_else(|| "-".into())),
        ("CONTROLLER", info.controller.to_string()),
    ]);
    text.push('\n');
    let mut t = Table::new(&["ID", "HOST", "PORT", "RACK"]);
    for n in info.nodes {
        let rack = n.rack.unwrap_or_else(|| "-".into());
        t.row(vec![n.id.to_string(), n.host, n.port.to_string(), rack]);
    }
    text.push_str(&t.render());
    out.text(&text);
    Ok(())
}
