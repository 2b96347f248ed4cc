//! What a new shard leader learns from every node. The AccountShard of a shard keeps soft
//! state that is not in the shard's log: which of its accounts have an available resource
//! (answers to probes from other servers, XEP-0012) and which resources are bound (XEP-0016
//! active lists). When this node starts leading a shard, it asks every node which of their
//! sessions belong to the shard and hands the answer to the shard's actor. This is wiring
//! between the cluster, the Router and the account shards, so it lives with the node's.

use std::time::Duration;

use actix::Addr;
use proto::jid::Jid;

use crate::cluster::messages::{Reply, Request};
use crate::cluster::shards::{shard_of_jid, ShardId};
use crate::cluster::Cluster;
use crate::im::AccountShards;
use crate::router::messages::LocalRoutes;
use crate::router::Router;

/// How often leadership is checked; a new leader takes operations only after its handover,
/// so this bounds the extra wait after an election.
const CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// How long a peer may take to list its sessions.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// This node's sessions of accounts in `shard`: (full JID, available).
pub async fn local_sessions(router: &Addr<Router>, shard: ShardId, count: u16) -> Vec<(Jid, bool)> {
    let routes = router.send(LocalRoutes).await.unwrap_or_default();
    routes
        .into_iter()
        .filter_map(|r| {
            let jid = Jid::parse(&r.jid).ok()?;
            (shard_of_jid(&jid.to_bare(), count) == shard).then_some((jid, r.priority.is_some()))
        })
        .collect()
}

/// Watch for shards this node starts leading, and refill their actors' soft state.
pub async fn refill_new_leaders(cluster: Cluster, shards: AccountShards, router: Addr<Router>) {
    let count = cluster.shards.count();
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    loop {
        tick.tick().await;
        for shard in 0..count {
            let Some(term) = cluster.shards.leads(shard) else {
                continue;
            };
            if cluster.shards.serves(shard) {
                continue;
            }
            let sessions = gather(&cluster, &router, shard, count).await;
            tracing::info!(
                shard,
                term,
                sessions = sessions.len(),
                "shard: leading; sessions handed over"
            );
            // The refill is queued before any operation can reach the actor.
            shards.refill(shard, sessions);
            cluster.shards.mark_handed_over(shard, term);
        }
    }
}

async fn gather(
    cluster: &Cluster,
    router: &Addr<Router>,
    shard: ShardId,
    count: u16,
) -> Vec<(Jid, bool)> {
    // All peers at once: a dead one costs the timeout once, not once per peer.
    let mut asks = tokio::task::JoinSet::new();
    for (id, addr) in cluster.voters() {
        if id == cluster.me {
            continue;
        }
        let link = cluster.links.peer(id, &addr);
        asks.spawn(async move {
            link.request(Request::ShardSessions { shard, count }, ASK_TIMEOUT)
                .await
        });
    }
    let mut sessions = local_sessions(router, shard, count).await;
    while let Some(answer) = asks.join_next().await {
        if let Ok(Ok(Reply::ShardSessions(mut s))) = answer {
            sessions.append(&mut s);
        }
    }
    sessions
}
