//! What this node's actors answer on NodeLinks ([`LocalService`]): IM operations go to its
//! own account shards, session handovers and the other pushes to the Router. It sits above
//! `cluster`, `im` and `router`, so that the cluster (which serves the links) depends on
//! neither.

use actix::Addr;
use proto::jid::Jid;

use crate::cluster::messages::{ImReply, ImRequest, Push};
use crate::cluster::shards::ShardId;
use crate::cluster::{LocalService, NodeId};
use crate::im::AccountShards;
use crate::route::session::{HandedOver, Token};
use crate::router::messages::{FromNode, TakeOverSession};
use crate::router::Router;

pub struct NodeActors {
    pub router: Addr<Router>,
    /// This node's own account shards (`AccountShard` actors) (never forwarded further).
    pub im: AccountShards,
}

impl LocalService for NodeActors {
    fn im(&self, req: ImRequest) -> impl std::future::Future<Output = ImReply> + Send {
        crate::im::remote::serve(&self.im, req)
    }

    fn shard_sessions(
        &self,
        shard: ShardId,
        count: u16,
    ) -> impl std::future::Future<Output = Vec<(Jid, bool)>> + Send {
        super::shard_handover::local_sessions(&self.router, shard, count)
    }

    async fn take_over_session(
        &self,
        from: NodeId,
        jid: Jid,
        token: Token,
        client_h: u32,
    ) -> Option<HandedOver> {
        self.router
            .send(TakeOverSession {
                jid,
                token,
                client_h,
                for_node: Some(from),
            })
            .await
            .ok()
            .and_then(Result::ok)
    }

    fn push(&self, from: NodeId, push: Push) {
        match push {
            Push::Im(req) => crate::im::remote::serve_push(&self.im, from, req, false),
            Push::ImForwarded(req) => crate::im::remote::serve_push(&self.im, from, req, true),
            push => self.router.do_send(FromNode { node: from, push }),
        }
    }
}
