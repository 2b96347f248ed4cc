//! openraft's network: Raft RPCs as NodeLink requests.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;

use super::link::{LinkError, NodeLinks, PeerLink};
use super::messages::{Reply, Request};
use super::types::{ClusterTypes, NodeId};

pub struct LinkNetwork {
    pub links: Arc<NodeLinks>,
}

impl RaftNetworkFactory<ClusterTypes> for LinkNetwork {
    type Network = PeerRaftClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerRaftClient {
        PeerRaftClient {
            target,
            link: self.links.peer(target, &node.addr),
        }
    }
}

pub struct PeerRaftClient {
    target: NodeId,
    link: Arc<PeerLink>,
}

#[derive(Debug, thiserror::Error)]
#[error("unexpected reply from node {0}")]
struct UnexpectedReply(NodeId);

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl PeerRaftClient {
    async fn call<E: std::error::Error>(
        &self,
        req: Request,
        option: &RPCOption,
    ) -> Result<Reply, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>> {
        // Leave openraft room to see the timeout as ours, not its own.
        let ttl = option.hard_ttl().max(Duration::from_millis(50));
        self.link.request(req, ttl).await.map_err(|e| match e {
            LinkError::Timeout(_) | LinkError::Lost(_) => RPCError::Network(NetworkError::new(&e)),
            _ => RPCError::Unreachable(Unreachable::new(&e)),
        })
    }

    fn unexpected<E: std::error::Error>(
        &self,
    ) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
        RPCError::Network(NetworkError::new(&UnexpectedReply(self.target)))
    }
}

impl RaftNetwork<ClusterTypes> for PeerRaftClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<ClusterTypes>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        match self.call(Request::AppendEntries(rpc), &option).await? {
            Reply::AppendEntries(Ok(r)) => Ok(r),
            Reply::AppendEntries(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<ClusterTypes>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        match self.call(Request::InstallSnapshot(rpc), &option).await? {
            Reply::InstallSnapshot(Ok(r)) => Ok(r),
            Reply::InstallSnapshot(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        match self.call(Request::Vote(rpc), &option).await? {
            Reply::Vote(Ok(r)) => Ok(r),
            Reply::Vote(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(self.unexpected()),
        }
    }
}
