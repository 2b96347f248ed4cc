//! What this node answers on NodeLinks: Raft RPCs, writes forwarded to the leader, joins and
//! leaves here; IM operations for users homed here, session handovers and the pushes go to
//! the node's actors through [`LocalService`] (implemented above the cluster, by the node's
//! wiring, so that `cluster` depends on neither `im` nor `router`).

use std::collections::BTreeSet;
use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};

use proto::jid::Jid;

use super::link::LinkService;
use super::messages::{ImReply, ImRequest, Push, Reply, Request};
use super::routing_table::{ClusterCommand, NodeId};
use super::shards::ShardId;
use crate::route::session::{HandedOver, Token};

/// What the node's actors answer on NodeLinks.
pub trait LocalService: Send + Sync + 'static {
    /// An IM operation for a user whose shard this node leads (`Request::Im`), served by this
    /// node's own account shards (never forwarded further).
    fn im(&self, req: ImRequest) -> impl std::future::Future<Output = ImReply> + Send;
    /// This node's sessions of accounts in `shard` (of `count`): (full JID, available).
    fn shard_sessions(
        &self,
        shard: ShardId,
        count: u16,
    ) -> impl std::future::Future<Output = Vec<(Jid, bool)>> + Send;
    /// XEP-0198 §5: a client resumes on node `from` the session bound here as `jid`.
    fn take_over_session(
        &self,
        from: NodeId,
        jid: Jid,
        token: Token,
        client_h: u32,
    ) -> impl std::future::Future<Output = Option<HandedOver>> + Send;
    /// A one-way push from node `from`.
    fn push(&self, from: NodeId, push: Push);
}

pub struct ClusterService<L> {
    pub cluster: super::Cluster,
    /// The node's actors.
    pub local: L,
}

impl<L> ClusterService<L> {
    async fn join(&self, node: NodeId, addr: String) -> Result<(), String> {
        let raft = &self.cluster.raft;
        let leader = raft.current_leader().await;
        if leader != Some(self.cluster.me) {
            // Pass it on to the leader, which alone can change the membership.
            let link = leader.and_then(|l| self.cluster.link(l));
            let Some(link) = link else {
                return Err("no leader known".into());
            };
            return match link
                .request(
                    Request::Join { node, addr },
                    std::time::Duration::from_secs(20),
                )
                .await
            {
                Ok(Reply::Done(r)) => r,
                Ok(_) => Err("unexpected reply".into()),
                Err(e) => Err(e.to_string()),
            };
        }
        raft.add_learner(node, BasicNode { addr }, true)
            .await
            .map_err(|e| e.to_string())?;
        raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node])), false)
            .await
            .map_err(|e| e.to_string())?;
        // A node that left before may come back: shards may be placed on it again.
        self.cluster
            .write(ClusterCommand::SetDraining {
                node,
                draining: false,
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

impl<L: LocalService> LinkService for ClusterService<L> {
    async fn request(self: Arc<Self>, from: NodeId, req: Request) -> Reply {
        let raft = &self.cluster.raft;
        match req {
            Request::AppendEntries(rpc) => Reply::AppendEntries(raft.append_entries(rpc).await),
            Request::Vote(rpc) => Reply::Vote(raft.vote(rpc).await),
            Request::InstallSnapshot(rpc) => {
                Reply::InstallSnapshot(raft.install_snapshot(rpc).await)
            }
            Request::Write(cmd) => Reply::Write(match raft.client_write(cmd).await {
                Ok(r) => {
                    super::announce_commit(raft).await;
                    Ok(r.data)
                }
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                    Err("forward to leader".into())
                }
                Err(e) => Err(e.to_string()),
            }),
            Request::Join { node, addr } => {
                tracing::info!(node, %addr, via = from, "cluster: join request");
                Reply::Done(self.join(node, addr).await)
            }
            Request::Leave { node } => Reply::Done(
                self.cluster
                    .remove_member(node)
                    .await
                    .map_err(|e| e.to_string()),
            ),
            Request::Im(req) => Reply::Im(self.local.im(req).await),
            Request::Shard { shard, rpc } => match self.cluster.shards.rpc(shard, rpc).await {
                Some(reply) => Reply::Shard(reply),
                None => Reply::Done(Err(format!("no shard {shard}"))),
            },
            Request::ShardStatus => Reply::ShardStatus(self.cluster.shards.status()),
            Request::ShardSessions { shard, count } => {
                Reply::ShardSessions(self.local.shard_sessions(shard, count).await)
            }
            Request::Ping => Reply::Pong,
            Request::TakeOverSession {
                jid,
                token,
                client_h,
            } => Reply::TakeOverSession(
                self.local
                    .take_over_session(from, jid, token, client_h)
                    .await,
            ),
        }
    }

    fn push(&self, from: NodeId, push: Push) {
        self.local.push(from, push);
    }
}
