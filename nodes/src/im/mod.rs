//! Instant messaging (RFC 6121) and the account shards: rosters, presence subscriptions,
//! presence broadcast to contacts and offline storage, and the per-account state of the
//! modules (`modules::AccountState`: vcard-temp, private XML, last activity). The state of
//! an account lives in one of a fixed number of account shards ([`AccountShard`], chosen by
//! a hash of the bare JID), each owning its sled trees; in a cluster each is a Raft group,
//! served by the actor on its leader.

mod archive;
mod blocking;
pub mod messages;
pub mod muc;
mod muc_archive;
pub mod muc_limits;
mod offline;
mod presence;
mod privacy;
pub mod remote;
mod roster;
mod subscription;
mod writes;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use actix::prelude::*;
use proto::jid::Jid;
use storage::{BlockStore, ModuleStore, OfflineStore, PrivacyStore, RosterStore, UserData};

use crate::cluster::link::{LinkError, PeerLink};
use crate::cluster::messages::{ImReply, ImRequest, Push, Reply, Request};
use crate::cluster::shards::{shard_of_jid, ShardId};
use crate::cluster::{Cluster, NodeId};
use crate::config::ImLimits;
use crate::modules::{AccountCtx, IqOutcome, Registry};
use crate::route::to_router::RouterHandle;
use messages::*;
pub use remote::{ImError, ImMessage};

use blocking::NS_BLOCKING;
use privacy::NS_PRIVACY;
use proto::privacy::PrivacyLists;
pub use roster::{MAX_NAME as MAX_ROSTER_NAME, NS_ROSTER};
pub use writes::DataWriter;

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

/// The addresses of this node's account shards and, in a cluster, the way to the
/// leaders of other shards. Every IM operation goes through `tell` (one-way) or `ask`.
///
/// In a cluster there is one local AccountShard per replicated shard; it acts only while
/// this node leads the shard. Elsewhere the operation goes to the leader over NodeLink; a
/// node that no longer leads answers `NotLeader` with the leader it knows, and the operation
/// is retried there until `IM_TIMEOUT`.
#[derive(Clone)]
pub struct AccountShards {
    local: Arc<Vec<Addr<AccountShard>>>,
    cluster: Option<Cluster>,
    /// Account IQs one session may have waiting for an answer from a shard
    /// (`im.max_iqs_in_flight`).
    pub max_iqs_in_flight: usize,
}

/// Where an operation on a user's shard goes now.
enum Target<'a> {
    Local(&'a Addr<AccountShard>),
    Remote(NodeId, Arc<PeerLink>),
    /// No leader known yet (an election, or the link to it is down).
    Nowhere,
}

impl AccountShards {
    pub fn new(shards: Vec<Addr<AccountShard>>, cluster: Option<Cluster>) -> Self {
        AccountShards {
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

    pub fn all(&self) -> impl Iterator<Item = &Addr<AccountShard>> {
        self.local.iter()
    }

    pub(crate) fn shard_index(&self, bare: &Jid) -> usize {
        shard_of_jid(bare, self.local.len() as u16) as usize
    }

    /// The local shard actor for `bare`, whether or not it may act.
    fn local_actor(&self, bare: &Jid) -> &Addr<AccountShard> {
        &self.local[self.shard_index(bare)]
    }

    /// The local shard actor for `bare` if this node serves its shard; otherwise the
    /// leader this node knows of.
    pub fn serving(&self, bare: &Jid) -> Result<&Addr<AccountShard>, Option<NodeId>> {
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

    /// The local shard actors this node serves now (all of them without a cluster), with
    /// their shard index.
    pub(crate) fn serving_actors(&self) -> Vec<(usize, &Addr<AccountShard>)> {
        self.local
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                self.cluster
                    .as_ref()
                    .is_none_or(|c| c.shards.serves(*i as ShardId))
            })
            .collect()
    }

    /// Whether this node is part of a cluster.
    pub(crate) fn clustered(&self) -> bool {
        self.cluster.is_some()
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
        AccountShard: Handler<M>,
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
        M::Result: serde::Serialize + serde::de::DeserializeOwned + Send,
        AccountShard: Handler<M>,
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

pub struct AccountShard {
    router: RouterHandle,
    /// All shards (this one included), attached once every shard has started.
    shards: Option<AccountShards>,
    /// Where writes go (reads come from the trees below).
    writer: DataWriter,
    rosters: RosterStore,
    offline: OfflineStore,
    blocking: BlockStore,
    privacy: PrivacyStore,
    /// The modules' per-account state (vcard-temp, private XML, last activity, ...).
    module_store: ModuleStore,
    /// The modules whose account state this shard hosts.
    modules: Arc<Registry>,
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
    /// Accounts that archived messages since the last retention tick (checked against
    /// `modules.mam.max_messages_per_account`).
    archive_grown: HashSet<Jid>,
    /// Where the archive's retention walk by age goes on from (`None`: the start).
    archive_cursor: Option<String>,
    /// The MAM preferences of the accounts whose messages this shard archived (`im::archive`).
    mam_prefs: archive::PrefsCache,
    /// Ids of the groupchat messages of this shard's rooms (`im::muc`): archive ids with
    /// this node's bits, so they are unique and time-ordered across the cluster like the
    /// Router's (a room's messages are numbered by whichever node leads its shard).
    room_ids: proto::stanza_id::ArchiveIdGenerator,
}

impl AccountShard {
    pub fn new(
        router: RouterHandle,
        stores: UserData,
        writer: DataWriter,
        limits: ImLimits,
        domains: Arc<Vec<String>>,
        modules: Arc<Registry>,
    ) -> Self {
        AccountShard {
            router,
            shards: None,
            writer,
            rosters: stores.rosters,
            offline: stores.offline,
            blocking: stores.blocking,
            privacy: stores.privacy,
            module_store: stores.modules,
            modules,
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
            archive_grown: HashSet::new(),
            archive_cursor: None,
            mam_prefs: archive::PrefsCache::default(),
            room_ids: proto::stanza_id::ArchiveIdGenerator::new(0),
        }
    }

    /// `node`: this node's id in the cluster (0 alone), part of the archive ids of the
    /// groupchat messages this shard's rooms stamp.
    pub fn with_node(mut self, node: u64) -> Self {
        self.room_ids = proto::stanza_id::ArchiveIdGenerator::new((node & 0x3ff) as u16);
        self
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
impl Actor for AccountShard {
    type Context = SyncContext<Self>;
}

/// Hand every shard the list of all shards (they forward to each other).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AttachShards(pub AccountShards);

impl Handler<AttachShards> for AccountShard {
    type Result = ();
    fn handle(&mut self, msg: AttachShards, _: &mut SyncContext<Self>) {
        self.shards = Some(msg.0);
    }
}

impl Handler<AccountIq> for AccountShard {
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

/// Payload namespaces of IQs the IM layer itself answers on an account's bare JID.
const IM_NAMESPACES: &[&str] = &[NS_ROSTER, NS_BLOCKING, NS_PRIVACY];

/// Whether an IQ with this payload namespace, addressed to an account's bare JID, is for the
/// account's shard: the IM layer's own, or a module's account state
/// (`modules::AccountState`).
pub fn handles(ns: &str) -> bool {
    IM_NAMESPACES.contains(&ns) || crate::modules::account_namespaces().contains(&ns)
}

impl AccountShard {
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
            NS_ROSTER | NS_BLOCKING | NS_PRIVACY => vec![roster::error_for(
                iq,
                proto::error::StanzaErrorCondition::Forbidden,
            )],
            // A module's account state, or a module that is disabled (RFC 6120 §8.4).
            ns => self.module_iq(ns, from, to, iq),
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

    /// An account IQ for the module whose account state serves `ns`: the module answers
    /// from its store, and its writes are committed (through the shard's Raft log in a
    /// cluster) before the reply goes out.
    fn module_iq(
        &mut self,
        ns: &str,
        from: &Jid,
        to: &Jid,
        iq: &proto::element::Element,
    ) -> Vec<proto::element::Element> {
        use proto::error::StanzaErrorCondition as Cond;
        let modules = self.modules.clone();
        let Some((name, state)) = modules.account_state(ns) else {
            return vec![roster::error_for(iq, Cond::ServiceUnavailable)];
        };
        let online = self.online.contains(to);
        let mut ctx = self.account_ctx(name, to, online);
        let req = crate::modules::AccountIq {
            from,
            own: from.to_bare() == *to,
            iq,
        };
        let outcome = state.iq(&mut ctx, &req);
        let mut effects = ctx.finish();
        if req.own && req.is_set() && !matches!(outcome, IqOutcome::Error(_)) {
            for (other, hook) in modules.account_states().filter(|(n, _)| *n != name) {
                let mut ctx = self.account_ctx(other, to, online);
                hook.after_own_set(&mut ctx, name, &req);
                let more = ctx.finish();
                effects.writes.extend(more.writes);
                effects.outbox.extend(more.outbox);
            }
        }
        if let Some((key, limit)) = effects.cap {
            self.refuse_over_cap(to, key, limit);
        }
        let (mut stanzas, payload) = match outcome {
            IqOutcome::Result(payload) => (Vec::new(), payload),
            IqOutcome::ResultAfter { stanzas, payload } => (stanzas, payload),
            IqOutcome::Error(cond) => {
                let mut reply = roster::error_for(iq, cond);
                if let Some(e) = reply.get_child_mut("error", proto::ns::CLIENT) {
                    if let Some(app) = effects.app_error {
                        e.children.push(proto::element::Node::Element(app));
                    }
                    if let Some(code) = cond.legacy_code().filter(|_| effects.legacy_code) {
                        e.set_attr("code", code.to_string());
                    }
                }
                return vec![reply];
            }
        };
        if let Err(cond) = self.commit_module_effects(to, effects.writes, effects.outbox) {
            return vec![roster::error_for(iq, cond)];
        }
        stanzas.push(roster::result_for(iq, payload));
        stanzas
    }

    /// Commit a module's writes for `user` (several as one `Batch`: one Raft entry, one sled
    /// transaction, so a publish and the eviction it causes land together or not at all),
    /// then route what it asked to send on the account's behalf (to a contact the account
    /// blocks: nothing).
    /// Run one module's account hook in the account's context (`online`: whether the
    /// account is available), then commit what it wrote and send what it queued.
    fn run_account_hook(
        &mut self,
        name: &'static str,
        user: &Jid,
        online: bool,
        hook: impl FnOnce(&mut AccountCtx),
    ) -> Result<(), proto::error::StanzaErrorCondition> {
        let mut ctx = self.account_ctx(name, user, online);
        hook(&mut ctx);
        let effects = ctx.finish();
        self.commit_module_effects(user, effects.writes, effects.outbox)
    }

    fn commit_module_effects(
        &mut self,
        user: &Jid,
        mut writes: Vec<storage::UserDataWrite>,
        outbox: Vec<proto::element::Element>,
    ) -> Result<(), proto::error::StanzaErrorCondition> {
        let write = match writes.len() {
            0 => None,
            1 => writes.pop(),
            _ => Some(storage::UserDataWrite::Batch(writes)),
        };
        if let Some(w) = write {
            self.writer.write(w).map_err(writes::write_error)?;
        }
        for stanza in outbox {
            let Some(to) = stanza.attr("to").and_then(|t| Jid::parse(t).ok()) else {
                continue;
            };
            if to.to_bare() != *user && self.blocks(user, &to) {
                continue;
            }
            self.router.do_send(crate::route::to_router::RouteStanza {
                from: user.clone(),
                to,
                stanza,
            });
        }
        Ok(())
    }

    /// The context a module's account state runs in for `user` (`online`: whether the
    /// account has an available resource).
    fn account_ctx<'a>(
        &'a self,
        module: &'static str,
        user: &'a Jid,
        online: bool,
    ) -> AccountCtx<'a> {
        AccountCtx::new(
            module,
            user,
            &self.module_store,
            &self.rosters,
            &self.limits,
            online,
        )
    }

    /// What each module's account state gives a session of `user` at bind.
    fn session_seeds(&self, user: &Jid) -> Vec<(String, String)> {
        let modules = self.modules.clone();
        let online = self.online.contains(user);
        modules
            .account_states()
            .filter_map(|(name, state)| {
                let ctx = self.account_ctx(name, user, online);
                state.session_seed(&ctx).map(|p| (name.to_owned(), p))
            })
            .collect()
    }

    /// `who` sent its initial presence and is one of `user`'s resources or a contact
    /// subscribed to `user`'s presence: the modules that want it are told (PEP's last
    /// items, XEP-0163 §4.3.2).
    fn contact_available(&mut self, user: &Jid, who: &Jid) {
        let modules = self.modules.clone();
        for (name, state) in modules
            .account_states()
            .filter(|(_, s)| s.wants_contact_available())
        {
            let online = self.online.contains(user);
            let done = self.run_account_hook(name, user, online, |ctx| {
                state.contact_available(ctx, who);
            });
            if let Err(e) = done {
                tracing::warn!(module = name, error = ?e, "a module's answer to a contact's presence failed");
            }
        }
    }

    /// Follow the account's availability (from every `PresenceBroadcast`) and tell the
    /// modules with account state when it changes; their writes are committed here.
    fn note_availability(
        &mut self,
        user: &Jid,
        presence: &proto::element::Element,
        account_available: bool,
    ) {
        if account_available {
            if !self.online.insert(user.clone()) {
                return;
            }
        } else {
            self.online.remove(user);
        }
        let modules = self.modules.clone();
        for (name, state) in modules.account_states() {
            let done = self.run_account_hook(name, user, account_available, |ctx| {
                state.availability(ctx, presence, account_available);
            });
            if let Err(e) = done {
                tracing::error!(module = name, error = ?e, "recording an account's availability failed");
            }
        }
    }

    /// Send `stanza` (a roster or blocklist push) to every resource of `user`; the resource
    /// whose request caused it gets it right after its reply.
    fn push_to_user(&mut self, user: &Jid, stanza: proto::element::Element) {
        let except = self.requester.clone().filter(|r| r.to_bare() == *user);
        if except.is_some() {
            self.requester_pushes.push(stanza.clone());
        }
        self.router.do_send(crate::route::to_router::PushToUser {
            user: user.clone(),
            stanza,
            except,
        });
    }
}

impl Handler<OutboundSubscription> for AccountShard {
    type Result = ();
    fn handle(&mut self, msg: OutboundSubscription, _: &mut SyncContext<Self>) {
        self.outbound_subscription(msg);
    }
}

impl Handler<InboundSubscription> for AccountShard {
    type Result = ();
    fn handle(&mut self, msg: InboundSubscription, _: &mut SyncContext<Self>) {
        self.inbound_subscription(msg);
    }
}

impl Handler<messages::RemoteProbe> for AccountShard {
    type Result = ();
    fn handle(&mut self, msg: messages::RemoteProbe, _: &mut SyncContext<Self>) {
        self.remote_probe(msg);
    }
}

impl Handler<messages::MulticastPresence> for AccountShard {
    type Result = ();
    fn handle(&mut self, msg: messages::MulticastPresence, _: &mut SyncContext<Self>) {
        self.multicast_presence(msg);
    }
}

impl Handler<PresenceBroadcast> for AccountShard {
    type Result = ();
    fn handle(&mut self, msg: PresenceBroadcast, _: &mut SyncContext<Self>) {
        self.presence_broadcast(msg);
    }
}

impl Handler<RefreshSessions> for AccountShard {
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

impl Handler<FetchOffline> for AccountShard {
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

impl Handler<RemoveOffline> for AccountShard {
    type Result = Result<(), String>;
    fn handle(&mut self, msg: RemoveOffline, _: &mut SyncContext<Self>) -> Self::Result {
        self.remove_offline(&msg.user, &msg.seqs)
    }
}

impl Handler<ReleaseOffline> for AccountShard {
    type Result = ();
    fn handle(&mut self, msg: ReleaseOffline, _: &mut SyncContext<Self>) {
        self.release_offline(&msg.user, &msg.holder)
    }
}

impl Handler<ImportRoster> for AccountShard {
    type Result = Result<usize, String>;
    fn handle(&mut self, msg: ImportRoster, _: &mut SyncContext<Self>) -> Self::Result {
        self.roster_import(&msg.user, msg.items)
    }
}

impl Handler<DeleteAccountData> for AccountShard {
    type Result = Result<(), String>;
    fn handle(&mut self, msg: DeleteAccountData, _: &mut SyncContext<Self>) -> Self::Result {
        // The archive in PostgreSQL is outside the shard's trees (the embedded one goes with
        // them).
        let modules = self.modules.clone();
        if let Some(mam) = crate::modules::mam::get(&modules) {
            let n = mam
                .backend()
                .delete_account(&msg.user.to_string())
                .map_err(|e| e.to_string())?;
            crate::metrics::METRICS
                .mam_deleted
                .with_label_values(&["account"])
                .inc_by(n);
        }
        self.delete_user_data(&msg.user.to_string())
            .map_err(|e| e.to_string())
    }
}

impl Handler<ContactAvailable> for AccountShard {
    type Result = ();
    fn handle(&mut self, msg: ContactAvailable, _: &mut SyncContext<Self>) {
        self.contact_available(&msg.user, &msg.who);
    }
}

impl Handler<StoreOffline> for AccountShard {
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

impl Handler<GetFilters> for AccountShard {
    type Result = MessageResult<GetFilters>;
    fn handle(&mut self, msg: GetFilters, _: &mut SyncContext<Self>) -> Self::Result {
        MessageResult(Filters {
            blocked: self.blocklist(&msg.user),
            privacy: shared_privacy(self.privacy_lists(&msg.user)),
            seeds: self.session_seeds(&msg.user),
        })
    }
}

impl Handler<ResourceBinding> for AccountShard {
    type Result = ();
    fn handle(&mut self, msg: ResourceBinding, _: &mut SyncContext<Self>) {
        self.privacy_resource(msg.jid, msg.bound);
    }
}
