//! openraft's network: Raft RPCs as NodeLink requests, for the metadata group and for each
//! IM data shard (the [`RaftWire`] of a group says how its RPCs travel).

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftTypeConfig};

use super::link::{LinkError, NodeLinks, PeerLink};
use super::messages::{Reply, Request, ShardRpc, ShardRpcReply};
use super::shards::{ShardId, ShardTypes};
use super::types::{ClusterTypes, NodeId};

type AppendResult = Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>;
type VoteResult = Result<VoteResponse<NodeId>, RaftError<NodeId>>;
type SnapshotResult =
    Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>;

/// How one Raft group's RPCs are wrapped into NodeLink requests and unwrapped from replies.
pub trait RaftWire: RaftTypeConfig<NodeId = NodeId, Node = BasicNode> {
    /// Which group of this type (the shard number; nothing for the metadata group).
    type Group: Copy + Send + Sync + 'static;
    fn append(group: Self::Group, rpc: AppendEntriesRequest<Self>) -> Request;
    fn vote(group: Self::Group, rpc: VoteRequest<NodeId>) -> Request;
    fn snapshot(group: Self::Group, rpc: InstallSnapshotRequest<Self>) -> Request;
    fn append_reply(reply: Reply) -> Option<AppendResult>;
    fn vote_reply(reply: Reply) -> Option<VoteResult>;
    fn snapshot_reply(reply: Reply) -> Option<SnapshotResult>;
}

impl RaftWire for ClusterTypes {
    type Group = ();
    fn append(_: (), rpc: AppendEntriesRequest<Self>) -> Request {
        Request::AppendEntries(rpc)
    }
    fn vote(_: (), rpc: VoteRequest<NodeId>) -> Request {
        Request::Vote(rpc)
    }
    fn snapshot(_: (), rpc: InstallSnapshotRequest<Self>) -> Request {
        Request::InstallSnapshot(rpc)
    }
    fn append_reply(reply: Reply) -> Option<AppendResult> {
        match reply {
            Reply::AppendEntries(r) => Some(r),
            _ => None,
        }
    }
    fn vote_reply(reply: Reply) -> Option<VoteResult> {
        match reply {
            Reply::Vote(r) => Some(r),
            _ => None,
        }
    }
    fn snapshot_reply(reply: Reply) -> Option<SnapshotResult> {
        match reply {
            Reply::InstallSnapshot(r) => Some(r),
            _ => None,
        }
    }
}

impl RaftWire for ShardTypes {
    type Group = ShardId;
    fn append(shard: ShardId, rpc: AppendEntriesRequest<Self>) -> Request {
        Request::Shard {
            shard,
            rpc: ShardRpc::AppendEntries(rpc),
        }
    }
    fn vote(shard: ShardId, rpc: VoteRequest<NodeId>) -> Request {
        Request::Shard {
            shard,
            rpc: ShardRpc::Vote(rpc),
        }
    }
    fn snapshot(shard: ShardId, rpc: InstallSnapshotRequest<Self>) -> Request {
        Request::Shard {
            shard,
            rpc: ShardRpc::InstallSnapshot(rpc),
        }
    }
    fn append_reply(reply: Reply) -> Option<AppendResult> {
        match reply {
            Reply::Shard(ShardRpcReply::AppendEntries(r)) => Some(r),
            _ => None,
        }
    }
    fn vote_reply(reply: Reply) -> Option<VoteResult> {
        match reply {
            Reply::Shard(ShardRpcReply::Vote(r)) => Some(r),
            _ => None,
        }
    }
    fn snapshot_reply(reply: Reply) -> Option<SnapshotResult> {
        match reply {
            Reply::Shard(ShardRpcReply::InstallSnapshot(r)) => Some(r),
            _ => None,
        }
    }
}

pub struct LinkNetwork<C: RaftWire> {
    pub links: Arc<NodeLinks>,
    pub group: C::Group,
}

impl<C: RaftWire> RaftNetworkFactory<C> for LinkNetwork<C> {
    type Network = PeerRaftClient<C>;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerRaftClient<C> {
        PeerRaftClient {
            target,
            group: self.group,
            link: self.links.peer(target, &node.addr),
            _types: PhantomData,
        }
    }
}

/// Takes a group's answer out of a NodeLink reply (`None`: some other reply).
type Unwrap<T, E> = fn(Reply) -> Option<Result<T, RaftError<NodeId, E>>>;

pub struct PeerRaftClient<C: RaftWire> {
    target: NodeId,
    group: C::Group,
    link: Arc<PeerLink>,
    _types: PhantomData<fn() -> C>,
}

#[derive(Debug, thiserror::Error)]
#[error("unexpected reply from node {0}")]
struct UnexpectedReply(NodeId);

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl<C: RaftWire> PeerRaftClient<C> {
    /// `entries`: how many log entries the request carries (AppendEntries), so that one too
    /// large for a NodeLink frame is retried by openraft in smaller batches.
    async fn call<T, E: std::error::Error>(
        &self,
        req: Request,
        option: &RPCOption,
        unwrap: Unwrap<T, E>,
        entries: Option<u64>,
    ) -> RpcResult<T, E> {
        // Leave openraft room to see the timeout as ours, not its own.
        let ttl = option.hard_ttl().max(Duration::from_millis(50));
        let reply = self
            .link
            .request(req, ttl)
            .await
            .map_err(|e| match (e, entries) {
                // Bounded by bytes (`cluster.max_frame_bytes`), not only by openraft's entry
                // count: half as many entries next time, down to one (which openraft then
                // treats as unreachable).
                (e @ LinkError::TooLarge(..), Some(n)) => {
                    tracing::warn!(target = self.target, entries = n, error = %e,
                    "raft: AppendEntries over the frame limit; retrying in smaller batches");
                    RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint((n / 2).max(1)))
                }
                (e @ (LinkError::Timeout(_) | LinkError::Lost(_)), _) => {
                    RPCError::Network(NetworkError::new(&e))
                }
                (e, _) => RPCError::Unreachable(Unreachable::new(&e)),
            })?;
        match unwrap(reply) {
            Some(Ok(r)) => Ok(r),
            Some(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            None => Err(RPCError::Network(NetworkError::new(&UnexpectedReply(
                self.target,
            )))),
        }
    }
}

impl<C: RaftWire> RaftNetwork<C> for PeerRaftClient<C> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let entries = rpc.entries.len() as u64;
        self.call(
            C::append(self.group, rpc),
            &option,
            C::append_reply,
            Some(entries),
        )
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<C>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(
            C::snapshot(self.group, rpc),
            &option,
            C::snapshot_reply,
            None,
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.call(C::vote(self.group, rpc), &option, C::vote_reply, None)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::link::{LinkLimits, LinkSecret, LinkService};
    use crate::cluster::messages::Push;
    use crate::cluster::routing_table::{AccountChange, ClusterCommand};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
    use tokio::net::TcpListener;

    struct Pong;
    impl LinkService for Pong {
        async fn request(self: Arc<Self>, _from: NodeId, _req: Request) -> Reply {
            Reply::Pong
        }
        fn push(&self, _from: NodeId, _push: Push) {}
    }

    fn entries(n: u64, bytes: usize) -> Vec<Entry<ClusterTypes>> {
        (1..=n)
            .map(|i| Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
                payload: EntryPayload::Normal(ClusterCommand::Accounts(vec![
                    AccountChange::Create {
                        jid: format!("u{i}@example.net"),
                        record: "r".repeat(bytes),
                    },
                ])),
            })
            .collect()
    }

    /// AppendEntries are bounded by bytes: one over the frame limit comes back as openraft's
    /// `PayloadTooLarge` with half the entries as hint, so openraft resends in smaller
    /// batches instead of failing the follower.
    #[tokio::test]
    async fn an_append_over_the_frame_limit_asks_openraft_for_smaller_batches() {
        let secret = LinkSecret::new("network-test-secret-01");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let limits = LinkLimits {
            max_frame_bytes: 100_000,
            max_pending_handshakes: 4,
        };
        let follower = NodeLinks::new(2, &addr, secret.clone(), limits);
        tokio::spawn(follower.serve(listener, Arc::new(Pong)));
        let leader = NodeLinks::new(1, "127.0.0.1:0", secret, limits);
        let mut factory = LinkNetwork::<ClusterTypes> {
            links: leader.clone(),
            group: (),
        };
        let mut client = factory.new_client(2, &BasicNode::new(&addr)).await;
        for _ in 0..100 {
            if leader.existing(2).is_some_and(|l| l.is_connected()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let append = |entries| AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            entries,
            leader_commit: None,
        };
        let option = RPCOption::new(Duration::from_secs(5));
        match client
            .append_entries(append(entries(8, 20_000)), option.clone())
            .await
        {
            Err(RPCError::PayloadTooLarge(e)) => assert_eq!(e.entries_hint(), 4),
            other => panic!("expected PayloadTooLarge, got {other:?}"),
        }
        // Four of them fit: they reach the peer (whose answer is not an AppendEntries one).
        match client
            .append_entries(append(entries(4, 20_000)), option)
            .await
        {
            Err(RPCError::Network(_)) => {}
            other => panic!("expected the peer's (unexpected) answer, got {other:?}"),
        }
    }
}
