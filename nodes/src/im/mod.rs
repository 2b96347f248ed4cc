//! Instant messaging (RFC 6121): rosters, presence subscriptions, presence broadcast to
//! contacts and offline storage. The state of an account lives in one of a fixed number of
//! RosterActor shards (chosen by a hash of the bare JID), each owning its sled trees; the
//! same actors can later answer other nodes.

mod blocking;
pub mod handover;
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
mod writes;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use actix::prelude::*;
use proto::jid::Jid;
use storage::{
    BlockStore, LastActivityStore, OfflineStore, PrivacyStore, PrivateStore, RosterStore, UserData,
    VCardStore,
};

use crate::cluster::link::{LinkError, PeerLink};
use crate::cluster::messages::{ImReply, ImRequest, Push, Reply, Request};
use crate::cluster::shards::{shard_of, ShardId};
use crate::cluster::{Cluster, NodeId};
use crate::router::Router;
use messages::*;
pub use remote::{ImError, ImMessage};

pub use blocking::NS_BLOCKING;
pub use last::NS_LAST;
pub use privacy::{PrivacyLists, NS_PRIVACY};
pub use private_xml::NS_PRIVATE;
pub use roster::{MAX_NAME as MAX_ROSTER_NAME, NS_ROSTER};
pub use vcard::NS_VCARD;
pub use writes::DataWriter;

/// Limits on what an account can accumulate: everything a client or a remote peer can make
/// the node store for an account is bounded by one of these (`[im]` in the configuration).
#[derive(Debug, Clone, Copy)]
pub struct ImLimits {
    pub max_roster_items: usize,
    pub max_offline_messages: usize,
    pub max_pending_subscriptions: usize,
    pub max_roster_groups: usize,
    pub max_blocklist_items: usize,
    pub max_privacy_lists: usize,
    pub max_privacy_items: usize,
    pub max_private_entries: usize,
    pub max_private_bytes: usize,
    pub max_vcard_bytes: usize,
    /// Bytes (stored XML) of offline messages kept per account (`im.max_offline_bytes`).
    pub max_offline_bytes: u64,
}

impl ImLimits {
    pub fn from_settings(im: &crate::config::ImSettings) -> ImLimits {
        ImLimits {
            max_roster_items: im.max_roster_items,
            max_offline_messages: im.max_offline_messages,
            max_offline_bytes: im.max_offline_bytes,
            max_pending_subscriptions: im.max_pending_subscriptions,
            max_roster_groups: im.max_roster_groups,
            max_blocklist_items: im.max_blocklist_items,
            max_privacy_lists: im.max_privacy_lists,
            max_privacy_items: im.max_privacy_items,
            max_private_entries: im.max_private_entries,
            max_private_bytes: im.max_private_bytes,
            max_vcard_bytes: im.max_vcard_bytes,
        }
    }
}

/// The configuration's defaults (benches and tests).
impl Default for ImLimits {
    fn default() -> ImLimits {
        ImLimits {
            max_roster_items: 1000,
            max_offline_messages: 500,
            max_offline_bytes: 10 << 20,
            max_pending_subscriptions: 1000,
            max_roster_groups: 32,
            max_blocklist_items: 1000,
            max_privacy_lists: 50,
            max_privacy_items: 250,
            max_private_entries: 100,
            max_private_bytes: 1024 * 1024,
            max_vcard_bytes: 64 * 1024,
        }
    }
}

/// A per-account cap refused something: the stanza error text that names it, and a log line.
/// Refusals are logged at warn the 1st, 2nd, 4th, 8th... time per shard, at debug otherwise,
/// so a peer that keeps hitting a cap cannot flood the log.
fn cap_tripped(refusals: &mut u64, user: &Jid, key: &str, limit: usize) -> String {
    *refusals += 1;
    if refusals.is_power_of_two() {
        tracing::warn!(%user, cap = key, limit, refusals = *refusals, "im: per-account cap reached");
    } else {
        tracing::debug!(%user, cap = key, limit, "im: per-account cap reached");
    }
    format!("at most {limit} allowed (im.{key})")
}

/// The addresses of this node's RosterActor shards and, in a cluster, the way to the
/// leaders of other shards. Every IM operation goes through `tell` (one-way) or `ask`.
///
/// In a cluster there is one local RosterActor per replicated shard; it acts only while
/// this node leads the shard. Elsewhere the operation goes to the leader over NodeLink; a
/// node that no longer leads answers `NotLeader` with the leader it knows, and the operation
/// is retried there until `IM_TIMEOUT`.
#[derive(Clone)]
pub struct RosterShards {
    local: Arc<Vec<Addr<RosterActor>>>,
    cluster: Option<Cluster>,
    /// Account IQs one session may have waiting for an answer from a shard
    /// (`im.max_iqs_in_flight`).
    pub max_iqs_in_flight: usize,
}

/// Where an operation on a user's shard goes now.
enum Target<'a> {
    Local(&'a Addr<RosterActor>),
    Remote(NodeId, Arc<PeerLink>),
    /// No leader known yet (an election, or the link to it is down).
    Nowhere,
}

impl RosterShards {
    pub fn new(shards: Vec<Addr<RosterActor>>, cluster: Option<Cluster>) -> Self {
        RosterShards {
            local: Arc::new(shards),
            cluster,
            max_iqs_in_flight: 32,
        }
    }

    /// With `im.max_iqs_in_flight` from the configuration.
    pub fn with_max_iqs_in_flight(mut self, n: usize) -> Self {
        self.max_iqs_in_flight = n;
        self
    }

    pub fn all(&self) -> impl Iterator<Item = &Addr<RosterActor>> {
        self.local.iter()
    }

    fn shard_index(&self, bare: &Jid) -> usize {
        shard_of(&bare.to_string(), self.local.len() as u16) as usize
    }

    /// The local shard actor for `bare`, whether or not it may act.
    fn local_actor(&self, bare: &Jid) -> &Addr<RosterActor> {
        &self.local[self.shard_index(bare)]
    }

    /// The local shard actor for `bare` if this node serves its shard; otherwise the
    /// leader this node knows of.
    pub fn serving(&self, bare: &Jid) -> Result<&Addr<RosterActor>, Option<NodeId>> {
        let Some(cluster) = &self.cluster else {
            return Ok(self.local_actor(bare));
        };
        let shard = self.shard_index(bare) as ShardId;
        if cluster.shards.serves(shard) {
            return Ok(self.local_actor(bare));
        }
        Err(cluster
            .shards
            .leader(shard, || cluster.voters().into_keys().collect())
            .filter(|l| *l != cluster.me))
    }

    fn target(&self, bare: &Jid) -> Target<'_> {
        match self.serving(bare) {
            Ok(addr) => Target::Local(addr),
            Err(Some(node)) => match self.cluster.as_ref().and_then(|c| c.link(node)) {
                Some(link) if link.is_connected() => Target::Remote(node, link),
                _ => Target::Nowhere,
            },
            Err(None) => Target::Nowhere,
        }
    }

    /// Hand `shard`'s actor the sessions its new leader gathered (see `handover`).
    pub(crate) fn refill(&self, shard: ShardId, sessions: Vec<(Jid, bool)>) {
        if let Some(addr) = self.local.get(shard as usize) {
            addr.do_send(messages::RefreshSessions { sessions });
        }
    }

    pub(crate) fn link_to(&self, node: NodeId) -> Option<Arc<PeerLink>> {
        self.cluster.as_ref()?.link(node)
    }

    fn note_leader(&self, bare: &Jid, leader: Option<NodeId>) {
        if let Some(c) = &self.cluster {
            c.shards
                .note_leader(self.shard_index(bare) as ShardId, leader);
        }
    }

    /// Send a one-way operation to `bare`'s shard, wherever it is led. Operations for one
    /// user keep their order while the leader stays put.
    pub fn tell<M>(&self, bare: &Jid, msg: M)
    where
        M: ImMessage<Result = ()>,
        RosterActor: Handler<M>,
    {
        match self.target(bare) {
            Target::Local(addr) => addr.do_send(msg),
            Target::Remote(_, link) if link.push(Push::Im(msg.to_wire())) => {}
            _ => self.tell_later(bare.clone(), msg.to_wire()),
        }
    }

    /// A one-way operation that found no leader: retried as a request until one answers.
    pub(crate) fn tell_later(&self, bare: Jid, wire: ImRequest) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let shards = self.clone();
        cluster.shards.spawn(async move {
            if let Err(e) = shards.request(&bare, wire).await {
                tracing::warn!(user = %bare, error = %e, "im: operation dropped");
            }
        });
    }

    /// Ask `bare`'s shard, wherever it is led.
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
        if let Target::Local(addr) = self.target(bare) {
            let request = addr.send(msg);
            return Box::pin(async move {
                request
                    .await
                    .map_err(|e| ImError::Unreachable(e.to_string()))
            });
        }
        let (shards, bare, wire) = (self.clone(), bare.clone(), msg.to_wire());
        Box::pin(async move { M::from_reply(shards.request(&bare, wire).await?) })
    }

    /// Run `wire` on `bare`'s shard leader, following `NotLeader` answers and waiting out
    /// elections until `IM_TIMEOUT`. A request that was sent and then lost is not retried:
    /// it may have been applied.
    async fn request(&self, bare: &Jid, wire: ImRequest) -> Result<ImReply, ImError> {
        let deadline = tokio::time::Instant::now() + IM_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(ImError::Unreachable(
                    "no node leads the user's shard".into(),
                ));
            }
            match self.target(bare) {
                Target::Local(_) => return Ok(remote::serve(self, wire).await),
                Target::Remote(node, link) => {
                    match link.request(Request::Im(wire.clone()), left).await {
                        Ok(Reply::Im(ImReply::NotLeader(hint))) => {
                            self.note_leader(bare, hint.filter(|h| *h != node));
                        }
                        Ok(Reply::Im(reply)) => return Ok(reply),
                        Ok(_) => return Err(ImError::BadReply),
                        Err(LinkError::NotConnected(_) | LinkError::QueueFull(_)) => {
                            self.note_leader(bare, None);
                        }
                        Err(e) => return Err(ImError::Unreachable(e.to_string())),
                    }
                }
                Target::Nowhere => self.note_leader(bare, None),
            }
            tokio::time::sleep(RETRY_PAUSE.min(left)).await;
        }
    }
}

/// How long an IM operation may wait for the leader of its shard.
const IM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Pause between two tries while a shard has no leader.
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

pub struct RosterActor {
    router: Addr<Router>,
    /// All shards (this one included), attached once every shard has started.
    shards: Option<RosterShards>,
    /// Where writes go (reads come from the trees below).
    writer: DataWriter,
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
    /// Accounts whose stored messages a resource is being served: (that resource, time of
    /// its last fetch). See `fetch_offline`.
    offline_claims: HashMap<Jid, (Jid, std::time::Instant)>,
    /// Bound resources of this shard's accounts (bare JID → full JID) and the privacy list
    /// each has made active (XEP-0016 §2.4).
    bound: privacy::BoundResources,
    /// Requests a per-account cap refused (for the log's pacing, see `cap_tripped`).
    cap_refusals: u64,
    /// While an account IQ is handled: the `<text/>` for its error, when a cap refused it.
    cap_text: Option<String>,
}

impl RosterActor {
    pub fn new(
        router: Addr<Router>,
        stores: UserData,
        writer: DataWriter,
        limits: ImLimits,
        domains: Arc<Vec<String>>,
    ) -> Self {
        RosterActor {
            router,
            shards: None,
            writer,
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
            offline_claims: HashMap::new(),
            bound: privacy::BoundResources::default(),
            cap_refusals: 0,
            cap_text: None,
        }
    }

    /// Note that the cap `key` (limit `limit`) refused a request of `user`; the account IQ's
    /// error (if this is one) carries the text.
    fn refuse_over_cap(&mut self, user: &Jid, key: &str, limit: usize) -> String {
        let text = cap_tripped(&mut self.cap_refusals, user, key, limit);
        self.cap_text = Some(text.clone());
        text
    }
}

/// Each shard's actor has a thread of its own: its writes wait for the shard to commit.
impl Actor for RosterActor {
    type Context = SyncContext<Self>;
}

/// Hand every shard the list of all shards (they forward to each other).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AttachShards(pub RosterShards);

impl Handler<AttachShards> for RosterActor {
    type Result = ();
    fn handle(&mut self, msg: AttachShards, _: &mut SyncContext<Self>) {
        self.shards = Some(msg.0);
    }
}

impl Handler<AccountIq> for RosterActor {
    type Result = MessageResult<AccountIq>;
    fn handle(&mut self, msg: AccountIq, _: &mut SyncContext<Self>) -> Self::Result {
        if !msg.exists {
            // RFC 6121 §8.5.1: no such account. The same answer, from the same place, as a
            // request an existing account's data cannot satisfy (e.g. XEP-0054 §3.3).
            let mut reply = roster::error_for(
                &msg.iq,
                proto::error::StanzaErrorCondition::ServiceUnavailable,
            );
            reply.set_attr("from", msg.to.to_string());
            return MessageResult(vec![reply]);
        }
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
pub const FEATURES: &[&str] = &[NS_VCARD, NS_LAST];

/// Specifications the IM layer implements, for the support table.
pub const SUPPORT: &[crate::modules::Support] = &[
    crate::modules::Support {
        spec: "XEP-0012",
        title: "Last Activity",
    },
    crate::modules::Support {
        spec: "XEP-0049",
        title: "Private XML Storage",
    },
    crate::modules::Support {
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
        self.cap_text = None;
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
        if let Some(text) = self.cap_text.take() {
            // RFC 6120 §8.3.2: the error says which policy refused the request.
            for r in replies
                .iter_mut()
                .filter(|r| r.attr("type") == Some("error"))
            {
                if let Some(e) = r.get_child_mut("error", proto::ns::CLIENT) {
                    e.children.push(proto::element::Node::Element(
                        proto::element::Element::new("text", proto::ns::STANZAS_ERRORS)
                            .with_text(text.as_str()),
                    ));
                }
            }
        }
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
    fn handle(&mut self, msg: OutboundSubscription, _: &mut SyncContext<Self>) {
        self.outbound_subscription(msg);
    }
}

impl Handler<InboundSubscription> for RosterActor {
    type Result = ();
    fn handle(&mut self, msg: InboundSubscription, _: &mut SyncContext<Self>) {
        self.inbound_subscription(msg);
    }
}

impl Handler<messages::RemoteProbe> for RosterActor {
    type Result = ();
    fn handle(&mut self, msg: messages::RemoteProbe, _: &mut SyncContext<Self>) {
        self.remote_probe(msg);
    }
}

impl Handler<PresenceBroadcast> for RosterActor {
    type Result = ();
    fn handle(&mut self, msg: PresenceBroadcast, _: &mut SyncContext<Self>) {
        self.presence_broadcast(msg);
    }
}

impl Handler<RefreshSessions> for RosterActor {
    type Result = ();
    fn handle(&mut self, msg: RefreshSessions, _: &mut SyncContext<Self>) {
        for (jid, available) in msg.sessions {
            if available {
                self.online.insert(jid.to_bare());
            }
            self.privacy_resource(jid, true);
        }
    }
}

impl Handler<FetchOffline> for RosterActor {
    type Result = MessageResult<FetchOffline>;
    fn handle(&mut self, msg: FetchOffline, _: &mut SyncContext<Self>) -> Self::Result {
        MessageResult(self.fetch_offline(
            &msg.user,
            &msg.holder,
            msg.after,
            msg.max_bytes,
            msg.max_messages,
        ))
    }
}

impl Handler<RemoveOffline> for RosterActor {
    type Result = Result<(), String>;
    fn handle(&mut self, msg: RemoveOffline, _: &mut SyncContext<Self>) -> Self::Result {
        self.remove_offline(&msg.user, &msg.seqs)
    }
}

impl Handler<ReleaseOffline> for RosterActor {
    type Result = ();
    fn handle(&mut self, msg: ReleaseOffline, _: &mut SyncContext<Self>) {
        self.release_offline(&msg.user, &msg.holder)
    }
}

impl Handler<ImportRoster> for RosterActor {
    type Result = Result<usize, String>;
    fn handle(&mut self, msg: ImportRoster, _: &mut SyncContext<Self>) -> Self::Result {
        self.roster_import(&msg.user, msg.items)
    }
}

impl Handler<DeleteAccountData> for RosterActor {
    type Result = Result<(), String>;
    fn handle(&mut self, msg: DeleteAccountData, _: &mut SyncContext<Self>) -> Self::Result {
        self.delete_user_data(&msg.user.to_string())
            .map_err(|e| e.to_string())
    }
}

impl Handler<StoreOffline> for RosterActor {
    type Result = Result<(), proto::error::StanzaErrorCondition>;
    fn handle(&mut self, msg: StoreOffline, _: &mut SyncContext<Self>) -> Self::Result {
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
    fn handle(&mut self, msg: GetFilters, _: &mut SyncContext<Self>) -> Self::Result {
        MessageResult(Filters {
            blocked: self.blocklist(&msg.user),
            privacy: shared_privacy(self.privacy_lists(&msg.user)),
        })
    }
}

impl Handler<ResourceBinding> for RosterActor {
    type Result = ();
    fn handle(&mut self, msg: ResourceBinding, _: &mut SyncContext<Self>) {
        self.privacy_resource(msg.jid, msg.bound);
    }
}
