//! RPCs between the controllers of a metadata quorum of several processes:
//! Raft's AppendEntries, Vote and InstallSnapshot, a controller's commands
//! sent to the quorum's leader (which alone plans and commits), and broker
//! heartbeats to the leader.
//!
//! A frame is a 4-byte big-endian length and a JSON body; a connection
//! carries one request and its response at a time. Runs on the controller
//! thread's tokio runtime, never on a shard. A frame above `MAX_FRAME`, or
//! one that does not parse, closes the connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::TypeConfig;
use crate::metadata::{Command, CommandResult};

/// The largest frame read (a snapshot chunk, a batch of log entries).
pub const MAX_FRAME: usize = 64 << 20;
/// Connecting to a peer gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Serialize, Deserialize)]
pub enum RpcRequest {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// Commands for the leader to plan and commit.
    Submit {
        cmds: Vec<Command>,
        dry_run: bool,
    },
    /// A broker is alive. `session` (random per process) and `seq` (per
    /// heartbeat) order them; `clean`: the partitions it leads that are all
    /// in objects and that it will not write before a later heartbeat
    /// leaves them out (`crate::clean`), with their leader epochs.
    Heartbeat {
        broker_id: i32,
        #[serde(default)]
        session: u64,
        #[serde(default)]
        seq: u64,
        #[serde(default)]
        clean: Vec<(uuid::Uuid, i32, i32)>,
    },
    /// A broker-only process asks to follow the log as a learner.
    Join {
        id: u64,
        addr: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RpcResponse {
    Append(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    Snapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    /// One result per command, and the log index that holds them (wait
    /// until it is applied to see them).
    Submitted {
        results: Vec<CommandResult>,
        index: Option<u64>,
    },
    /// The learner was added (it receives the log from now on).
    Joined,
    /// `fenced`: the broker's nodes are fenced; it must register again.
    /// `version`: the metadata the leader has applied.
    Heartbeat {
        fenced: bool,
        version: u64,
    },
    /// Not the leader (any more), or the request could not be served.
    Refused(String),
}

pub async fn write_frame<T: Serialize>(stream: &mut TcpStream, msg: &T) -> std::io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    stream.write_all(&frame).await
}

pub async fn read_frame<T: for<'de> Deserialize<'de>>(
    stream: &mut TcpStream,
) -> std::io::Result<T> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "frame of {len} bytes is above {MAX_FRAME}"
        )));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map_err(std::io::Error::other)
}

/// A connection to one peer controller, made when first needed and again
/// after any error.
pub struct Peer {
    target: u64,
    addr: String,
    conn: Option<TcpStream>,
}

impl Peer {
    pub fn new(target: u64, addr: String) -> Peer {
        Peer {
            target,
            addr,
            conn: None,
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends `req` and reads its response, within `ttl`.
    pub async fn call(&mut self, req: &RpcRequest, ttl: Duration) -> std::io::Result<RpcResponse> {
        let result = tokio::time::timeout(ttl, self.call_once(req)).await;
        let result = result.unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer from controller {} in {ttl:?}", self.target),
            ))
        });
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    async fn call_once(&mut self, req: &RpcRequest) -> std::io::Result<RpcResponse> {
        if self.conn.is_none() {
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr))
                .await
                .map_err(|_| {
                    std::io::Error::other(format!("connect to {} timed out", self.addr))
                })??;
            stream.set_nodelay(true)?;
            self.conn = Some(stream);
        }
        let conn = self.conn.as_mut().expect("connected above");
        write_frame(conn, req).await?;
        read_frame(conn).await
    }

    fn unreachable<E: std::error::Error>(&self, e: std::io::Error) -> RPCError<u64, BasicNode, E> {
        RPCError::Unreachable(Unreachable::new(&e))
    }

    fn remote<E: std::error::Error>(&self, e: E) -> RPCError<u64, BasicNode, E> {
        RPCError::RemoteError(RemoteError::new(self.target, e))
    }
}

fn unexpected(what: &str, got: &RpcResponse) -> std::io::Error {
    std::io::Error::other(format!("answer to {what} was {got:?}"))
}

/// Raft's client side: one `Peer` per target. A voter is reached at the
/// address `controller_quorum_voters` gives it now, not the one the
/// quorum's membership recorded when the quorum was formed: voters may
/// move to other ports across a restart (every process given the new
/// list). A learner is reached where it said it listens when it joined.
pub struct Network {
    voters: Arc<HashMap<u64, String>>,
}

impl Network {
    pub fn new(voters: &[(u64, String)]) -> Self {
        Network {
            voters: Arc::new(voters.iter().cloned().collect()),
        }
    }

    /// The address to call `target` at.
    pub fn addr_of(&self, target: u64, node: &BasicNode) -> String {
        self.voters
            .get(&target)
            .cloned()
            .unwrap_or_else(|| node.addr.clone())
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        Peer::new(target, self.addr_of(target, node))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        match self.call(&RpcRequest::Append(rpc), option.hard_ttl()).await {
            Ok(RpcResponse::Append(Ok(r))) => Ok(r),
            Ok(RpcResponse::Append(Err(e))) => Err(self.remote(e)),
            Ok(other) => Err(self.unreachable(unexpected("append", &other))),
            Err(e) => Err(self.unreachable(e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        match self
            .call(&RpcRequest::Snapshot(rpc), option.hard_ttl())
            .await
        {
            Ok(RpcResponse::Snapshot(Ok(r))) => Ok(r),
            Ok(RpcResponse::Snapshot(Err(e))) => Err(self.remote(e)),
            Ok(other) => Err(self.unreachable(unexpected("snapshot", &other))),
            Err(e) => Err(self.unreachable(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        match self.call(&RpcRequest::Vote(rpc), option.hard_ttl()).await {
            Ok(RpcResponse::Vote(Ok(r))) => Ok(r),
            Ok(RpcResponse::Vote(Err(e))) => Err(self.remote(e)),
            Ok(other) => Err(self.unreachable(unexpected("vote", &other))),
            Err(e) => Err(self.unreachable(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voters_are_called_at_their_configured_address() {
        let n = Network::new(&[(1, "127.0.0.1:2000".into())]);
        let recorded = BasicNode::new("127.0.0.1:1000");
        assert_eq!(n.addr_of(1, &recorded), "127.0.0.1:2000");
        // A learner: where it joined from.
        assert_eq!(
            n.addr_of(7, &BasicNode::new("127.0.0.1:1007")),
            "127.0.0.1:1007"
        );
    }

    #[test]
    fn frames_round_trip_and_oversized_ones_are_refused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let req: RpcRequest = read_frame(&mut s).await.unwrap();
                assert!(matches!(req, RpcRequest::Heartbeat { broker_id: 7, .. }));
                write_frame(
                    &mut s,
                    &RpcResponse::Heartbeat {
                        fenced: true,
                        version: 3,
                    },
                )
                .await
                .unwrap();
                let (mut s, _) = listener.accept().await.unwrap();
                let e = read_frame::<RpcRequest>(&mut s).await.unwrap_err();
                assert!(e.to_string().contains("above"), "{e}");
            });
            let mut peer = Peer::new(1, addr.to_string());
            let got = peer
                .call(
                    &RpcRequest::Heartbeat {
                        broker_id: 7,
                        session: 1,
                        seq: 1,
                        clean: vec![],
                    },
                    Duration::from_secs(5),
                )
                .await
                .unwrap();
            assert!(matches!(
                got,
                RpcResponse::Heartbeat {
                    fenced: true,
                    version: 3
                }
            ));
            let mut raw = TcpStream::connect(addr).await.unwrap();
            raw.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
            server.await.unwrap();
        });
    }
}
