//! Instant messaging (RFC 6121): rosters, presence subscriptions, presence broadcast to
//! contacts and offline storage. The state of an account lives in one of a fixed number of
//! RosterActor shards (chosen by a hash of the bare JID), each owning its sled trees; the
//! same actors can later answer other nodes.

mod blocking;
mod last;
pub mod messages;
mod offline;
mod presence;
mod privacy;
mod private_xml;
pub mod remote;
mod roster;
mod subscription;
mod vcard;

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use actix::prelude::*;
use proto::jid::Jid;
use storage::{
    BlockStore, LastActivityStore, OfflineStore, PrivacyStore, PrivateStore, RosterStore,
    StorageError, Store, VCardStore,
};

use crate::cluster::link::PeerLink;
use crate::cluster::messages::{Push, Reply, Request};
use crate::cluster::Cluster;
use crate::router::Router;
use messages::*;
pub use remote::{ImError, ImMessage};

pub use blocking::NS_BLOCKING;
pub use last::NS_LAST;
pub use privacy::{PrivacyLists, NS_PRIVACY};
pub use private_xml::NS_PRIVATE;
pub use roster::NS_ROSTER;
pub use vcard::NS_VCARD;

/// Limits on what an account can accumulate.
#[derive(Debug, Clone, Copy)]
pub struct ImLimits {
    pub max_roster_items: usize,
    pub max_offline_messages: usize,
}

/// The addresses of this node's RosterActor shards and, in a cluster, the way to other
/// users' home nodes. Every IM operation goes through `tell` (one-way) or `ask`.
#[derive(Clone)]
pub struct RosterShards {
    local: Arc<Vec<Addr<RosterActor>>>,
    cluster: Option<Cluster>,
}

impl RosterShards {
    pub fn new(shards: Vec<Addr<RosterActor>>, cluster: Option<Cluster>) -> Self {
        RosterShards {
            local: Arc::new(shards),
            cluster,
        }
    }

    /// This node's shards only.
    pub fn local_only(&self) -> RosterShards {
        RosterShards {
            local: self.local.clone(),
            cluster: None,
        }
    }

    pub fn all(&self) -> impl Iterator<Item = &Addr<RosterActor>> {
        self.local.iter()
    }

    /// The shard of this node that owns `bare`'s state (if this node is its home).
    pub fn local_for_user(&self, bare: &Jid) -> &Addr<RosterActor> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bare.hash(&mut h);
        &self.local[(h.finish() % self.local.len() as u64) as usize]
    }

    /// The link to `bare`'s home node, or `None` when that is this node.
    fn home_link(&self, bare: &Jid) -> Option<Result<Arc<PeerLink>, ImError>> {
        let cluster = self.cluster.as_ref()?;
        let home = cluster.home_of(&bare.to_string());
        if home == cluster.me {
            return None;
        }
        Some(
            cluster
                .link(home)
                .ok_or_else(|| ImError::Unreachable(format!("node {home} is not a member"))),
        )
    }

    /// Send a one-way operation to `bare`'s shard, wherever it lives. Operations for one
    /// user keep their order.
    pub fn tell<M>(&self, bare: &Jid, msg: M)
    where
        M: ImMessage<Result = ()>,
        RosterActor: Handler<M>,
    {
        match self.home_link(bare) {
            None => self.local_for_user(bare).do_send(msg),
            Some(Ok(link)) => {
                if !link.push(Push::Im(msg.to_wire())) {
                    tracing::warn!(user = %bare, "im: home node unreachable; operation dropped");
                }
            }
            Some(Err(e)) => tracing::warn!(user = %bare, error = %e, "im: operation dropped"),
        }
    }

    /// Ask `bare`'s shard, wherever it lives.
    pub fn ask<M>(
        &self,
        bare: &Jid,
        msg: M,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<M::Result, ImError>>>>
    where
        M: ImMessage,
        M::Result: Send,
        RosterActor: Handler<M>,
    {
        match self.home_link(bare) {
            None => {
                let request = self.local_for_user(bare).send(msg);
                Box::pin(async move {
                    request
                        .await
                        .map_err(|e| ImError::Unreachable(e.to_string()))
                })
            }
            Some(Ok(link)) => {
                let wire = msg.to_wire();
                Box::pin(async move {
                    match link.request(Request::Im(wire), IM_TIMEOUT).await {
                        Ok(Reply::Im(reply)) => M::from_reply(reply),
                        Ok(_) => Err(ImError::BadReply),
                        Err(e) => Err(ImError::Unreachable(e.to_string())),
                    }
                })
            }
            Some(Err(e)) => Box::pin(async move { Err(e) }),
        }
    }
}

/// How long a request to a user's home node may take.
const IM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The trees the IM layer owns (sled trees are shared handles; each shard uses them only
/// for the accounts that hash to it).
#[derive(Clone)]
pub struct ImStores {
    pub rosters: RosterStore,
    pub offline: OfflineStore,
    pub blocking: BlockStore,
    pub privacy: PrivacyStore,
    pub vcards: VCardStore,
    pub private: PrivateStore,
    pub last: LastActivityStore,
}

impl ImStores {
    pub fn open(store: &Store) -> Result<ImStores, StorageError> {
        Ok(ImStores {
            rosters: store.rosters()?,
            offline: store.offline()?,
            blocking: store.blocking()?,
            privacy: store.privacy()?,
            vcards: store.vcards()?,
            private: store.private()?,
            last: store.last_activity()?,
        })
    }
}

pub struct RosterActor {
    router: Addr<Router>,
    /// All shards (this one included), attached once every shard has started.
    shards: Option<RosterShards>,
    rosters: RosterStore,
    offline: OfflineStore,
    blocking: BlockStore,
    privacy: PrivacyStore,
    vcards: VCardStore,
    private: PrivateStore,
    last: LastActivityStore,
    limits: ImLimits,
    domains: Arc<Vec<String>>,
    /// Numbers the ids of roster pushes.
    push_seq: u64,
    /// While an account IQ is handled: its sender, and the pushes it caused for that sender
    /// (they follow the reply instead of racing it through the router).
    requester: Option<Jid>,
    requester_pushes: Vec<proto::element::Element>,
    /// Accounts of this shard with an available resource (from `PresenceBroadcast`).
    online: HashSet<Jid>,
    /// Bound resources of this shard's accounts (bare JID → full JID) and the privacy list
    /// each has made active (XEP-0016 §2.4).
    bound: privacy::BoundResources,
}

impl RosterActor {
    pub fn new(
        router: Addr<Router>,
        stores: ImStores,
        limits: ImLimits,
        domains: Arc<Vec<String>>,
    ) -> Self {
        RosterActor {
            router,
            shards: None,
            rosters: stores.rosters,
            offline: stores.offline,
            blocking: stores.blocking,
            privacy: stores.privacy,
            vcards: stores.vcards,
            private: stores.private,
            last: stores.last,
            limits,
            domains,
            push_seq: 0,
            requester: None,
            requester_pushes: Vec::new(),
            online: HashSet::new(),
            bound: privacy::BoundResources::default(),
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

impl Handler<AccountIq> for RosterActor {
    type Result = MessageResult<AccountIq>;
    fn handle(&mut self, msg: AccountIq, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.account_iq(&msg.from, &msg.to, &msg.iq))
    }
}

/// Payload namespaces of IQs the account's shard answers.
const ACCOUNT_NAMESPACES: &[&str] = &[
    NS_ROSTER,
    NS_BLOCKING,
    NS_PRIVACY,
    NS_PRIVATE,
    NS_VCARD,
    NS_LAST,
];

/// Whether an IQ with this payload namespace, addressed to an account's bare JID, is for the
/// account's RosterActor.
pub fn handles(ns: &str) -> bool {
    ACCOUNT_NAMESPACES.contains(&ns)
}

/// Disco features the IM layer adds to the server's.
pub const FEATURES: &[&str] = &[NS_BLOCKING, NS_PRIVACY, NS_VCARD, NS_LAST];

/// Specifications the IM layer implements, for the support table.
pub const SUPPORT: &[crate::ext::Support] = &[
    crate::ext::Support {
        spec: "RFC 6121",
        title: "XMPP IM: rosters with versioning, subscriptions with pre-approval, presence",
    },
    crate::ext::Support {
        spec: "XEP-0160",
        title: "Best Practices for Handling Offline Messages",
    },
    crate::ext::Support {
        spec: "XEP-0191",
        title: "Blocking Command",
    },
    crate::ext::Support {
        spec: "XEP-0203",
        title: "Delayed Delivery (offline messages)",
    },
    crate::ext::Support {
        spec: "XEP-0012",
        title: "Last Activity",
    },
    crate::ext::Support {
        spec: "XEP-0016",
        title: "Privacy Lists",
    },
    crate::ext::Support {
        spec: "XEP-0049",
        title: "Private XML Storage",
    },
    crate::ext::Support {
        spec: "XEP-0054",
        title: "vcard-temp",
    },
];

impl RosterActor {
    fn account_iq(
        &mut self,
        from: &Jid,
        to: &Jid,
        iq: &proto::element::Element,
    ) -> Vec<proto::element::Element> {
        let own = from.to_bare() == *to;
        if !own
            && (self.blocks(to, from)
                || !self.privacy_allows(to, None, proto::privacy::StanzaKind::Iq, from))
        {
            // XEP-0191 §3.5, XEP-0016 (the default list judges IQs to the bare JID): a
            // blocked user learns nothing about the account.
            let mut reply =
                roster::error_for(iq, proto::error::StanzaErrorCondition::ServiceUnavailable);
            reply.set_attr("from", to.to_string());
            return vec![reply];
        }
        let ns = iq
            .children()
            .next()
            .map(|p| p.ns.as_str())
            .unwrap_or_default();
        self.requester = Some(from.clone());
        let mut replies = match ns {
            // RFC 6121 §2.1.5: only the account itself manages its roster.
            NS_ROSTER if own => self.roster_iq(from, iq),
            NS_BLOCKING if own => self.blocking_iq(from, iq),
            NS_PRIVACY if own => self.privacy_iq(from, iq),
            NS_PRIVATE if own => self.private_iq(from, iq),
            NS_VCARD => self.vcard_iq(from, to, iq),
            NS_LAST => self.last_iq(from, to, iq),
            _ => vec![roster::error_for(
                iq,
                proto::error::StanzaErrorCondition::Forbidden,
            )],
        };
        if !own {
            // The answer comes from the account that was asked.
            for r in &mut replies {
                r.set_attr("from", to.to_string());
            }
        }
        self.requester = None;
        replies.append(&mut self.requester_pushes);
        replies
    }

    /// Send `stanza` (a roster or blocklist push) to every resource of `user`; the resource
    /// whose request caused it gets it right after its reply.
    fn push_to_user(&mut self, user: &Jid, stanza: proto::element::Element) {
        let except = self.requester.clone().filter(|r| r.to_bare() == *user);
        if except.is_some() {
            self.requester_pushes.push(stanza.clone());
        }
        self.router.do_send(crate::router::messages::PushToUser {
            user: user.clone(),
            stanza,
            except,
        });
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

impl Handler<messages::RemoteProbe> for RosterActor {
    type Result = ();
    fn handle(&mut self, msg: messages::RemoteProbe, _: &mut Context<Self>) {
        self.remote_probe(msg);
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

/// Accounts without privacy lists (most) share one empty set of lists.
fn shared_privacy(lists: PrivacyLists) -> Arc<PrivacyLists> {
    static EMPTY: std::sync::OnceLock<Arc<PrivacyLists>> = std::sync::OnceLock::new();
    if lists.default.is_none() && lists.lists.is_empty() {
        EMPTY
            .get_or_init(|| Arc::new(PrivacyLists::default()))
            .clone()
    } else {
        Arc::new(lists)
    }
}

impl Handler<GetFilters> for RosterActor {
    type Result = MessageResult<GetFilters>;
    fn handle(&mut self, msg: GetFilters, _: &mut Context<Self>) -> Self::Result {
        MessageResult(Filters {
            blocked: self.blocklist(&msg.user),
            privacy: shared_privacy(self.privacy_lists(&msg.user)),
        })
    }
}

impl Handler<ResourceBinding> for RosterActor {
    type Result = ();
    fn handle(&mut self, msg: ResourceBinding, _: &mut Context<Self>) {
        self.privacy_resource(msg.jid, msg.bound);
    }
}
