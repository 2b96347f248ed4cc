//! Instant messaging (RFC 6121): rosters, presence subscriptions, presence broadcast to
//! contacts and offline storage. The state of an account lives in one of a fixed number of
//! RosterActor shards (chosen by a hash of the bare JID), each owning its sled trees; the
//! same actors can later answer other nodes.

pub mod messages;
mod offline;
mod presence;
mod roster;
mod subscription;

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use actix::prelude::*;
use proto::jid::Jid;
use storage::{OfflineStore, RosterStore};

use crate::router::Router;
use messages::*;

pub use roster::NS_ROSTER;

/// Limits on what an account can accumulate.
#[derive(Debug, Clone, Copy)]
pub struct ImLimits {
    pub max_roster_items: usize,
    pub max_offline_messages: usize,
}

/// The addresses of every RosterActor shard.
#[derive(Clone)]
pub struct RosterShards(Arc<Vec<Addr<RosterActor>>>);

impl RosterShards {
    pub fn new(shards: Vec<Addr<RosterActor>>) -> Self {
        RosterShards(Arc::new(shards))
    }

    pub fn all(&self) -> impl Iterator<Item = &Addr<RosterActor>> {
        self.0.iter()
    }

    /// The shard that owns `bare`'s state.
    pub fn for_user(&self, bare: &Jid) -> &Addr<RosterActor> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bare.hash(&mut h);
        &self.0[(h.finish() % self.0.len() as u64) as usize]
    }
}

pub struct RosterActor {
    router: Addr<Router>,
    /// All shards (this one included), attached once every shard has started.
    shards: Option<RosterShards>,
    rosters: RosterStore,
    offline: OfflineStore,
    limits: ImLimits,
    domains: Arc<Vec<String>>,
    /// Numbers the ids of roster pushes.
    push_seq: u64,
}

impl RosterActor {
    pub fn new(
        router: Addr<Router>,
        rosters: RosterStore,
        offline: OfflineStore,
        limits: ImLimits,
        domains: Arc<Vec<String>>,
    ) -> Self {
        RosterActor {
            router,
            shards: None,
            rosters,
            offline,
            limits,
            domains,
            push_seq: 0,
        }
    }
}

impl Actor for RosterActor {
    type Context = Context<Self>;
}

/// Hand every shard the list of all shards (they forward to each other).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AttachShards(pub RosterShards);

impl Handler<AttachShards> for RosterActor {
    type Result = ();
    fn handle(&mut self, msg: AttachShards, _: &mut Context<Self>) {
        self.shards = Some(msg.0);
    }
}

impl Handler<RosterIq> for RosterActor {
    type Result = MessageResult<RosterIq>;
    fn handle(&mut self, msg: RosterIq, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.roster_iq(&msg.from, &msg.iq))
    }
}

impl Handler<OutboundSubscription> for RosterActor {
    type Result = ();
    fn handle(&mut self, msg: OutboundSubscription, _: &mut Context<Self>) {
        self.outbound_subscription(msg);
    }
}

impl Handler<InboundSubscription> for RosterActor {
    type Result = ();
    fn handle(&mut self, msg: InboundSubscription, _: &mut Context<Self>) {
        self.inbound_subscription(msg);
    }
}

impl Handler<PresenceBroadcast> for RosterActor {
    type Result = ();
    fn handle(&mut self, msg: PresenceBroadcast, _: &mut Context<Self>) {
        self.presence_broadcast(msg);
    }
}

impl Handler<StoreOffline> for RosterActor {
    type Result = Result<(), proto::error::StanzaErrorCondition>;
    fn handle(&mut self, msg: StoreOffline, _: &mut Context<Self>) -> Self::Result {
        self.store_offline(&msg.user, msg.stanza)
    }
}
