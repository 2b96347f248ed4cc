//! What this node answers on NodeLinks: Raft RPCs, writes forwarded to the leader, joins and
//! leaves, IM operations for users homed here; and the pushes handed to the Router.

use std::collections::BTreeSet;
use std::sync::Arc;

use actix::Addr;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};

use super::link::LinkService;
use super::messages::{Push, Reply, Request};
use super::routing_table::{ClusterCommand, NodeId};
use crate::im::RosterShards;
use crate::router::messages::FromNode;
use crate::router::Router;

pub struct ClusterService {
    pub cluster: super::Cluster,
    pub router: Addr<Router>,
    /// This node's own RosterActor shards (never forwarded further).
    pub im: RosterShards,
}

impl ClusterService {
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

impl LinkService for ClusterService {
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
            Request::Im(req) => Reply::Im(crate::im::remote::serve(&self.im, req).await),
            Request::Shard { shard, rpc } => match self.cluster.shards.rpc(shard, rpc).await {
                Some(reply) => Reply::Shard(reply),
                None => Reply::Done(Err(format!("no shard {shard}"))),
            },
            Request::ShardStatus => Reply::ShardStatus(self.cluster.shards.status()),
            Request::ShardSessions { shard, count } => Reply::ShardSessions(
                crate::im::handover::local_sessions(&self.router, shard, count).await,
            ),
            Request::Ping => Reply::Pong,
        }
    }

    fn push(&self, from: NodeId, push: Push) {
        match push {
            Push::Im(req) => crate::im::remote::serve_push(&self.im, from, req, false),
            Push::ImForwarded(req) => crate::im::remote::serve_push(&self.im, from, req, true),
            push => self.router.do_send(FromNode { node: from, push }),
        }
    }
}
