//! Router: knows every bound session on this node (and, through the replicated routing
//! table, those on the other nodes of the cluster) and executes what routing decides.
//!
//! A stanza's way: [`crate::route::decide`] (RFC 6120 §10 / RFC 6121 §8 as a pure function
//! over the Router as a [`RoutingView`]) → [`Router::after_route`] (carbon copies, XEP-0280)
//! → each [`Delivery`] executed: to a session here ([`SessionHandle`]), over a NodeLink to
//! another node (`remote`), over s2s, to a component, or to the account's shard (offline
//! storage, account IQs, subscriptions). A single node is a cluster of one: its remote view
//! is empty.

mod archive;
pub mod archiver;
mod flagged;
pub mod messages;
mod multicast;
mod remote;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use actix::prelude::*;
use proto::element::Element;
use proto::error::{stanza_error_reply, StanzaErrorCondition, StreamError, StreamErrorCondition};
use proto::jid::Jid;
use proto::ns;
use storage::AccountStore;

use crate::cluster::messages::UserOp;
use crate::cluster::{BindOutcome, Cluster, RouteChange};
use crate::config::ResourceConflict;
use crate::im::messages::{
    AccountIq, FetchOffline, InboundSubscription, PresenceBroadcast, ReleaseOffline, RemoteProbe,
    RemoveOffline, ResourceBinding, StoreOffline,
};
use crate::im::AccountShards;
use crate::metrics::METRICS;
use crate::route::session::{HandedOver, SessionHandle};
use crate::route::{self, Address, Delivery, Location, Resource, RoutingView};
use messages::*;

/// One bound resource of an account.
struct BoundResource {
    jid: Jid,
    session_id: u64,
    session: SessionHandle,
    /// Last available presence and its priority; `None` until initial presence.
    presence: Option<(i8, Element)>,
    /// Flags modules set for this resource (`modules::ResourceFlag`: carbons enabled, ...).
    flags: u8,
}

/// How much of an offline backlog one delivery round takes (`Router::offline_batch`).
#[derive(Debug, Clone, Copy)]
pub struct OfflineBatch {
    /// Stored XML bytes per batch (a single larger message still goes, alone).
    pub max_bytes: usize,
    pub max_messages: usize,
}

impl OfflineBatch {
    /// Most messages per batch: enough that small messages take few rounds.
    pub const MAX_MESSAGES: usize = 100;

    /// Batches for sessions whose send queue holds `send_queue_max_bytes`: half of it, so
    /// what else reaches the session meanwhile (presence, live messages) has the other half.
    pub fn for_send_queue(send_queue_max_bytes: usize) -> OfflineBatch {
        OfflineBatch {
            max_bytes: (send_queue_max_bytes / 2).max(1),
            max_messages: Self::MAX_MESSAGES,
        }
    }
}

pub struct Router {
    domains: Arc<Vec<String>>,
    accounts: AccountStore,
    conflict: ResourceConflict,
    /// Bare JID → its bound resources.
    sessions: HashMap<Jid, Vec<BoundResource>>,
    im: AccountShards,
    /// Sessions on other cluster nodes and the NodeLinks to them (empty on a single node).
    remote: remote::RemoteRoutes,
    /// Federation: where stanzas for other domains go (`None`: they bounce).
    s2s: Option<Recipient<SendRemote>>,
    /// Components by domain (`RegisterComponent`).
    components: HashMap<String, Recipient<ToComponent>>,
    offline: OfflineBatch,
    /// Local resources being delivered their account's stored messages.
    offline_delivering: std::collections::HashSet<Jid>,
    /// Accounts with a `StoreOffline` in flight, and the messages for them that wait for it,
    /// in arrival order (see [`store_offline`](Self::store_offline)).
    offline_storing: std::cell::RefCell<HashMap<Jid, VecDeque<(Jid, Element)>>>,
    /// Account IQs from federated senders waiting for a shard, per remote domain (bounded
    /// by `MAX_REMOTE_ACCOUNT_IQS`; local sessions are bounded by `im.max_iqs_in_flight`).
    remote_account_iqs: std::cell::RefCell<HashMap<String, usize>>,
    /// Local sessions handed over to a client resuming on another node (XEP-0198 §5): when
    /// the routing table moves their JID there, they retire without going unavailable.
    moving: std::collections::HashSet<Jid>,
    /// The message archive's queue (`None`: `[modules.mam]` is disabled).
    archiver: Option<std::cell::RefCell<archiver::Archiver>>,
    /// XEP-0033 (`None`: `[modules.multicast]` is disabled).
    multicast: Option<std::cell::RefCell<multicast::RemoteMulticast>>,
    /// See [`messages::SessionLossEpoch`].
    loss_epoch: u64,
}

/// Account IQs (vCard, last activity, ...) one remote domain may have waiting for this node's
/// shards at once; beyond it they bounce with `resource-constraint` (RFC 6120 §8.3.3.18,
/// type `wait`), so a federated peer cannot queue unbounded work and memory on the router.
const MAX_REMOTE_ACCOUNT_IQS: usize = 256;

/// Messages for one account that may wait for its store in flight (see
/// `Router::store_offline`); each is bounded by the stanza size limit. A burst beyond it at
/// one offline account, faster than its shard commits, bounces with `resource-constraint`.
const MAX_WAITING_OFFLINE_STORES: usize = 512;

impl Router {
    pub fn new(
        domains: Arc<Vec<String>>,
        accounts: AccountStore,
        conflict: ResourceConflict,
        im: AccountShards,
        cluster: Option<Cluster>,
        offline: OfflineBatch,
    ) -> Router {
        Router {
            domains,
            accounts,
            conflict,
            sessions: HashMap::new(),
            im,
            remote: remote::RemoteRoutes::new(cluster),
            s2s: None,
            components: HashMap::new(),
            offline,
            offline_delivering: std::collections::HashSet::new(),
            offline_storing: std::cell::RefCell::new(HashMap::new()),
            remote_account_iqs: std::cell::RefCell::new(HashMap::new()),
            moving: std::collections::HashSet::new(),
            archiver: None,
            multicast: None,
            loss_epoch: 1,
        }
    }

    /// Archive messages (XEP-0313) with this archiver.
    pub fn with_archiver(mut self, archiver: archiver::Archiver) -> Router {
        self.archiver = Some(std::cell::RefCell::new(archiver));
        self
    }

    /// Hand a stanza for a non-local `to` to the component serving its domain, or to
    /// federation (dropped without either).
    fn to_other_domain(&self, to: &Jid, mut stanza: Element) {
        let from = stanza.attr("from").and_then(|f| Jid::parse(f).ok());
        if self.components.contains_key(to.domain()) {
            if let Some(from) = from {
                self.to_component(from, to.clone(), stanza);
            }
            return;
        }
        if let (Some(s2s), Some(from)) = (&self.s2s, from) {
            METRICS.routed.with_label_values(&["s2s"]).inc();
            stanza.set_attr("to", to.text());
            s2s.do_send(SendRemote {
                from,
                to: to.clone(),
                stanza,
            });
        }
    }

    fn to_component(&self, from: Jid, to: Jid, stanza: Element) {
        if let Some(handle) = self.components.get(to.domain()) {
            METRICS.routed.with_label_values(&["component"]).inc();
            handle.do_send(ToComponent { from, to, stanza });
        }
    }

    fn resource(&self, full: &Jid) -> Option<&BoundResource> {
        self.sessions
            .get(&full.to_bare())?
            .iter()
            .find(|r| r.jid == *full)
    }

    fn deliver(to: &BoundResource, mut stanza: Element) {
        stanza.set_attr("to", to.jid.text());
        Self::deliver_as_addressed(to, stanza);
    }

    /// Deliver with the stanza's `to` left as it is (a bare JID, for the account).
    fn deliver_as_addressed(to: &BoundResource, stanza: Element) {
        crate::metrics::HOT.routed_local.inc();
        to.session.deliver(stanza);
    }

    /// Send an error reply for `stanza` back to its sender (RFC 6120 §8.3.1: never for an
    /// error).
    fn bounce(&self, from: &Jid, stanza: &Element, cond: StanzaErrorCondition) {
        METRICS.bounces.with_label_values(&[cond.as_str()]).inc();
        if stanza.attr("type") == Some("error") {
            return;
        }
        let reply = stanza_error_reply(stanza, cond, None);
        if !self.is_local_domain(from.domain()) {
            return self.to_other_domain(from, reply);
        }
        if let Some(r) = self.resource(from) {
            r.session.deliver(reply);
        } else if let Some(r) = self.remote.resource(from) {
            self.remote.deliver_keep_to(r, &reply);
        }
    }

    fn available_resources(&self, bare: &Jid) -> impl Iterator<Item = &BoundResource> {
        self.sessions
            .get(bare)
            .into_iter()
            .flatten()
            .filter(|r| r.presence.is_some())
    }

    /// A stanza's way through the node: decide, the after-route step, execute.
    fn route(&self, from: &Jid, to: Jid, stanza: Element, ctx: &mut Context<Self>) {
        if self.multicast_takes(from, &to, &stanza, ctx) {
            return;
        }
        let deliveries = route::decide(self, from, &to, &stanza);
        self.execute(from, &to, stanza, deliveries, true, ctx);
    }

    /// Hooks that run once routing decided and before anything is delivered: XEP-0280 §7,
    /// a message the account received goes, wrapped, to those of its resources that enabled
    /// carbons and did not get it. `sent_id`: the message's id in the sender's archive, which
    /// the sender's copies carry (XEP-0359 `<stanza-id by=sender/>`).
    fn after_route(
        &self,
        from: &Jid,
        bare: &Jid,
        stanza: &Element,
        deliveries: &[Delivery],
        sent_id: Option<&str>,
    ) {
        if !crate::modules::carbons::is_copied(stanza) {
            return;
        }
        // §6: what a local resource sent to someone else goes to its other flagged resources.
        let to_own_account = from.local() == bare.local() && from.domain() == bare.domain();
        if !to_own_account && !from.is_bare() && self.is_local_domain(from.domain()) {
            let sender = from.to_bare();
            let except = [from.clone()];
            if self.any_flagged(&sender, crate::modules::carbons::FLAG, &except) {
                let with_id;
                let sent = match sent_id {
                    Some(id) => {
                        // The sender's copy carries the sender's archive id, not the
                        // recipient's.
                        let mut s = stanza.clone();
                        proto::stanza_id::strip_forged(&mut s, &bare.text());
                        proto::stanza_id::add(&mut s, &sender.text(), id);
                        with_id = s;
                        &with_id
                    }
                    None => stanza,
                };
                if let Some(copy) = crate::modules::carbons::sent_copy(&sender, sent) {
                    self.to_flagged(&sender, crate::modules::carbons::FLAG, &except, &copy);
                }
            }
        }
        let mut got = Vec::new();
        let mut as_bare = false;
        for d in deliveries {
            if let Delivery::Local { resource, address }
            | Delivery::Remote {
                resource, address, ..
            } = d
            {
                got.push(resource.clone());
                as_bare |= *address == Address::Bare;
            }
        }
        if got.is_empty() {
            return;
        }
        // Between two resources of one account the sender has the message already.
        if to_own_account {
            got.push(from.clone());
        }
        if !self.any_flagged(bare, crate::modules::carbons::FLAG, &got) {
            return;
        }
        // The copy holds the message as the resources got it.
        let copy = if as_bare {
            let mut addressed = stanza.clone();
            addressed.set_attr("to", bare.to_string());
            crate::modules::carbons::received_copy(bare, &addressed)
        } else {
            crate::modules::carbons::received_copy(bare, stanza)
        };
        if let Some(copy) = copy {
            self.to_flagged(bare, crate::modules::carbons::FLAG, &got, &copy);
        }
    }

    /// Carry out what [`route::decide`] decided for `stanza` from `from` to `to`. `archive`:
    /// false for a message archived on an earlier way (rerouted, or passed on by another node).
    fn execute(
        &self,
        from: &Jid,
        to: &Jid,
        mut stanza: Element,
        deliveries: Vec<Delivery>,
        archive: bool,
        ctx: &mut Context<Self>,
    ) {
        let bare = to.to_bare();
        let sent_id = if archive {
            self.archive(from, to, &bare, &mut stanza, &deliveries, ctx)
        } else {
            None
        };
        self.after_route(from, &bare, &stanza, &deliveries, sent_id.as_deref());
        let last = deliveries.len().saturating_sub(1);
        let mut stanza = Some(stanza);
        // Whether a session or the offline store took the stanza, and a message that could
        // not go to a session on another node (see `unreachable` below).
        let mut taken = false;
        let mut unreachable = None;
        for (i, delivery) in deliveries.into_iter().enumerate() {
            // The last delivery takes the stanza, the others a copy.
            let Some(mut s) = (if i == last {
                stanza.take()
            } else {
                stanza.clone()
            }) else {
                return;
            };
            match delivery {
                Delivery::Local { resource, address } => {
                    let Some(r) = self.resource(&resource) else {
                        continue;
                    };
                    taken = true;
                    match address {
                        Address::Full => Self::deliver(r, s),
                        Address::Bare => {
                            s.set_attr("to", bare.to_string());
                            Self::deliver_as_addressed(r, s);
                        }
                    }
                }
                Delivery::Remote {
                    node,
                    resource,
                    address,
                } => {
                    let addressed_to = match address {
                        Address::Full => &resource,
                        Address::Bare => &bare,
                    };
                    s.set_attr("to", addressed_to.to_string());
                    if self.remote.deliver_at(node, resource, &s) {
                        taken = true;
                    } else if s.name == "message" {
                        unreachable = Some(s);
                    }
                }
                Delivery::S2s => self.to_other_domain(to, s),
                Delivery::Component { .. } => self.to_component(from.clone(), to.clone(), s),
                Delivery::Offline => {
                    taken = true;
                    self.store_offline(from, &bare, s, ctx);
                }
                Delivery::AccountIq { exists } => self.account_iq(from, &bare, s, exists, ctx),
                Delivery::Subscription(kind) => self.im.tell(
                    &bare,
                    InboundSubscription {
                        user: bare.clone(),
                        contact: from.to_bare(),
                        kind,
                        stanza: s,
                        sender_presence: None,
                    },
                ),
                Delivery::RemoteProbe => self.im.tell(
                    &bare,
                    RemoteProbe {
                        user: bare.clone(),
                        from: from.clone(),
                    },
                ),
                Delivery::Bounce(cond) => self.bounce(from, &s, cond),
                Delivery::Drop => {}
            }
        }
        // Every session the message was for is on a node this one cannot reach: the node
        // died and the failure detector has not yet purged its routes (up to
        // `cluster.failure_timeout_ms`), or its link's queue is full. A message that would be
        // stored with no session online (RFC 6121 §8.5.2.2.1, §8.5.3.2.1: chat, normal and
        // unknown types) is stored offline for the account instead of being lost; the
        // account gets it at its next login, on any node (XEP-0160).
        if let (false, Some(mut s)) = (taken, unreachable) {
            if !matches!(s.attr("type"), Some("groupchat" | "headline" | "error")) {
                tracing::info!(to = %to, "cluster: recipient's node unreachable; message stored offline");
                s.set_attr("to", to.to_string());
                self.store_offline(from, &bare, s, ctx);
            }
        }
    }
    /// No resource can take the message: the recipient's shard stores it (XEP-0160), or
    /// the sender learns why not.
    ///
    /// One store per account is in flight at a time and the others wait here in arrival
    /// order, so the backlog keeps the order the messages were sent in (RFC 6120 §10.1). In
    /// a cluster a store whose request is retried (it met a stale leader, a link not yet up,
    /// an election) would otherwise be overtaken by the ones sent after it. The wait is
    /// bounded by [`MAX_WAITING_OFFLINE_STORES`]: beyond it the sender gets
    /// `resource-constraint` (type `wait`) and may send again.
    fn store_offline(&self, from: &Jid, bare: &Jid, stanza: Element, ctx: &mut Context<Self>) {
        METRICS.routed.with_label_values(&["offline"]).inc();
        let mut storing = self.offline_storing.borrow_mut();
        match storing.get_mut(bare) {
            Some(waiting) if waiting.len() < MAX_WAITING_OFFLINE_STORES => {
                waiting.push_back((from.clone(), stanza));
            }
            Some(_) => {
                drop(storing);
                self.bounce(from, &stanza, StanzaErrorCondition::ResourceConstraint);
            }
            None => {
                storing.insert(bare.clone(), VecDeque::new());
                drop(storing);
                self.send_offline_store(from.clone(), bare.clone(), stanza, ctx);
            }
        }
    }

    /// Ask `bare`'s shard to store `stanza`; once it answered, the next waiting store for
    /// the account goes.
    fn send_offline_store(&self, from: Jid, bare: Jid, stanza: Element, ctx: &mut Context<Self>) {
        let original = stanza.clone();
        let request = self.im.ask(
            &bare,
            StoreOffline {
                user: bare.clone(),
                stanza,
            },
        );
        ctx.spawn(request.into_actor(self).map(move |result, router, ctx| {
            let cond = match result {
                Ok(Ok(())) => None,
                Ok(Err(cond)) => Some(cond),
                // The recipient's shard did not answer (its leader died or an election is
                // under way): the sender may retry.
                Err(_) => Some(StanzaErrorCondition::ResourceConstraint),
            };
            if let Some(cond) = cond {
                router.bounce(&from, &original, cond);
            }
            let next = {
                let mut storing = router.offline_storing.borrow_mut();
                let next = storing.get_mut(&bare).and_then(VecDeque::pop_front);
                if next.is_none() {
                    storing.remove(&bare);
                }
                next
            };
            if let Some((from, stanza)) = next {
                router.send_offline_store(from, bare, stanza, ctx);
            }
        }));
    }

    /// Deliver the account's stored messages to the local session `full` (XEP-0160), one
    /// bounded batch at a time; see [`offline_batch`](Self::offline_batch).
    pub(crate) fn fetch_offline(&mut self, full: &Jid, ctx: &mut Context<Self>) {
        // One delivery per resource at a time: a second trigger (the priority dropped below
        // 0 and rose again) would fetch the same first batch again.
        if self.offline_delivering.insert(full.clone()) {
            self.offline_batch(full.clone(), 0, ctx);
        }
    }

    /// One round of offline delivery to the local session `full`, for the stored messages
    /// after sequence number `after`:
    ///
    /// 1. fetch a batch from the account's shard (`FetchOffline`: at most
    ///    [`OfflineBatch::max_bytes`] of stored XML, at least one message; in a cluster the
    ///    batch is also the bound of the reply frame on the NodeLink);
    /// 2. hand it to the session (`DeliverStored`), which answers once the connection wrote
    ///    every byte of it to the client's socket;
    /// 3. remove exactly those messages (`RemoveOffline` with their sequence numbers), and go
    ///    on with the next batch; an empty batch ends the delivery.
    ///
    /// A batch never holds more than half the session's send queue, so a backlog of any size
    /// reaches a reader that keeps up, however small its queue. If the connection ends (or
    /// the session is gone) before a batch is confirmed written, the batch and everything
    /// after it stay stored and the claim is released: the next login gets them. The price is
    /// at-least-once: a batch written to the socket but lost with the connection before the
    /// client read it, or written but not removed (this node died, the removal failed), comes
    /// again at the next login; nothing is ever lost.
    ///
    /// Stream management (XEP-0198) hook: step 3 is the one place where a batch counts as
    /// delivered. With stream management, `DeliverStored` would answer when the client's
    /// `<a h/>` covers the batch's last stanza instead of when its bytes were written, and
    /// nothing here changes.
    fn offline_batch(&self, full: Jid, after: u64, ctx: &mut Context<Self>) {
        let bare = full.to_bare();
        let fetch = FetchOffline {
            user: bare.clone(),
            holder: full.clone(),
            after,
            max_bytes: self.offline.max_bytes,
            max_messages: self.offline.max_messages,
        };
        let request = self.im.ask(&bare, fetch);
        ctx.spawn(request.into_actor(self).map(move |stored, router, ctx| {
            let stored = match stored {
                Ok(s) => s,
                Err(e) => {
                    // Left stored; the claim runs out for the next login.
                    tracing::warn!(user = %bare, error = %e, "offline messages not fetched");
                    router.offline_delivering.remove(&full);
                    return;
                }
            };
            let Some(last) = stored.last().map(|(seq, _)| *seq) else {
                // All delivered (the shard dropped the claim).
                router.offline_delivering.remove(&full);
                return;
            };
            let Some(r) = router.resource(&full) else {
                // Gone meanwhile: left stored for the next login.
                return router.release_offline(&bare, &full);
            };
            let seqs: Vec<u64> = stored.iter().map(|(seq, _)| *seq).collect();
            let mut batch = Vec::with_capacity(stored.len());
            for (_, xml) in stored {
                match Element::parse(&xml) {
                    Ok(mut stanza) => {
                        stanza.set_attr("to", full.text());
                        crate::metrics::HOT.routed_local.inc();
                        batch.push(stanza);
                    }
                    // It can never be delivered: it goes with its batch.
                    Err(e) => tracing::error!(error = %e, "dropping an unreadable offline message"),
                }
            }
            let count = seqs.len();
            let written = r.session.deliver_stored(batch);
            ctx.spawn(written.into_actor(router).map(move |written, router, ctx| {
                if !written {
                    tracing::info!(
                        jid = %full,
                        kept = count,
                        "offline batch not confirmed (connection ended, or the client stopped reading): it and the rest stay stored"
                    );
                    return router.release_offline(&bare, &full);
                }
                let removal = router.im.ask(&bare, RemoveOffline { user: bare.clone(), seqs });
                ctx.spawn(removal.into_actor(router).map(move |done, router, ctx| {
                    if !matches!(done, Ok(Ok(()))) {
                        tracing::warn!(user = %bare, "delivered offline messages not removed (they may come again)");
                        return router.release_offline(&bare, &full);
                    }
                    router.offline_batch(full, last, ctx);
                }));
            }));
        }));
    }

    /// `holder`'s delivery ended early: what was not removed stays stored, and another
    /// resource may take it at once.
    fn release_offline(&mut self, bare: &Jid, holder: &Jid) {
        self.offline_delivering.remove(holder);
        self.im.tell(
            bare,
            ReleaseOffline {
                user: bare.clone(),
                holder: holder.clone(),
            },
        );
    }

    /// Ask `bare`'s shard to answer an IQ from another user, and deliver its reply.
    /// `exists`: false for an account that does not exist (the shard answers
    /// `service-unavailable`, see `route::decide`: RFC 6121 §8.5.1).
    fn account_iq(
        &self,
        from: &Jid,
        bare: &Jid,
        iq: Element,
        exists: bool,
        ctx: &mut Context<Self>,
    ) {
        let remote_domain =
            (!self.is_local_domain(from.domain())).then(|| from.domain().to_owned());
        if let Some(domain) = &remote_domain {
            let mut counts = self.remote_account_iqs.borrow_mut();
            let waiting = counts.entry(domain.clone()).or_insert(0);
            if *waiting >= MAX_REMOTE_ACCOUNT_IQS {
                drop(counts);
                tracing::debug!(%domain, "remote account IQ refused: too many in flight");
                self.bounce(from, &iq, StanzaErrorCondition::ResourceConstraint);
                return;
            }
            *waiting += 1;
        }
        let from = from.clone();
        let iq_for_error = iq.clone();
        let request = self.im.ask(
            bare,
            AccountIq {
                from: from.clone(),
                to: bare.clone(),
                iq,
                exists,
            },
        );
        let original = iq_for_error;
        ctx.spawn(request.into_actor(self).map(move |replies, router, _| {
            if let Some(domain) = &remote_domain {
                let mut counts = router.remote_account_iqs.borrow_mut();
                if let Some(waiting) = counts.get_mut(domain) {
                    *waiting -= 1;
                    if *waiting == 0 {
                        counts.remove(domain);
                    }
                }
            }
            let Ok(replies) = replies else {
                router.bounce(&from, &original, StanzaErrorCondition::ResourceConstraint);
                return;
            };
            for reply in replies {
                router.deliver_to_jid(&from, reply);
            }
        }));
    }

    /// Deliver to `to`: that resource for a full JID, every available resource for a bare one.
    fn deliver_to_jid(&self, to: &Jid, stanza: Element) {
        if !self.is_local_domain(to.domain()) {
            return self.to_other_domain(to, stanza);
        }
        if to.is_bare() {
            for r in self.available_resources(to) {
                Self::deliver(r, stanza.clone());
            }
            // Every node holding a session of the account decides itself which are
            // available: availability reaches the other nodes' route views a commit later
            // than the presence (a subscription request sent in between would be lost).
            let xml = stanza.to_xml_string();
            self.remote
                .user_op(to, false, || UserOp::DeliverToAvailable {
                    user: to.clone(),
                    stanza: xml.clone(),
                });
        } else if let Some(r) = self.resource(to) {
            Self::deliver(r, stanza);
        } else if let Some(r) = self.remote.resource(to) {
            self.remote.deliver(r, stanza);
        }
    }

    fn unavailable_from(jid: &Jid) -> Element {
        Element::new("presence", ns::CLIENT)
            .with_attr("type", "unavailable")
            .with_attr("from", jid.to_string())
    }

    /// Tell the account's available resources (and `also`, if given) about `presence`.
    fn broadcast_own(&self, bare: &Jid, presence: &Element, also: Option<&BoundResource>) {
        for r in self.available_resources(bare) {
            Self::deliver(r, presence.clone());
        }
        if let Some(a) = also.filter(|a| a.presence.is_none()) {
            Self::deliver(a, presence.clone());
        }
        for r in self.remote.resources(bare).filter(|r| r.priority.is_some()) {
            self.remote.deliver(r, presence.clone());
        }
    }

    /// A local resource is gone (closed, replaced, or lost to a bind elsewhere): its shard
    /// forgets it and, if it was available, everyone concerned gets its unavailable.
    fn resource_gone(&mut self, bare: &Jid, gone: BoundResource) {
        METRICS.c2s_sessions.dec();
        self.im.tell(
            bare,
            ResourceBinding {
                jid: gone.jid.clone(),
                bound: false,
            },
        );
        self.remote.change(RouteChange::Unbind {
            jid: gone.jid.to_string(),
            session: gone.session_id,
        });
        if gone.presence.is_some() {
            // RFC 6121 §4.5.3.1 / abrupt disconnect: others learn the resource went away.
            let unavailable = Self::unavailable_from(&gone.jid);
            self.broadcast_own(bare, &unavailable, None);
            let account_available = self.account_available(bare);
            self.im.tell(
                bare,
                PresenceBroadcast {
                    from: gone.jid,
                    presence: unavailable,
                    initial: false,
                    priority: 0,
                    account_available,
                },
            );
        }
    }

    fn account_available(&self, bare: &Jid) -> bool {
        self.available_resources(bare).next().is_some()
            || self.remote.resources(bare).any(|r| r.priority.is_some())
    }

    fn push_local(&self, user: &Jid, stanza: &Element, except: Option<&Jid>) {
        let targets = self.sessions.get(user).into_iter().flatten();
        for r in targets.filter(|r| except != Some(&r.jid)) {
            Self::deliver(r, stanza.clone());
        }
    }

    fn send_presence_local(&self, contact: &Jid, to: &Jid) {
        // Each resource's presence goes out through its session, which applies its
        // outbound filters (XEP-0191 §3.3, XEP-0016 presence-out).
        for r in self.available_resources(contact) {
            if let Some((_, presence)) = &r.presence {
                r.session.send_own_presence(to.clone(), presence.clone());
            }
        }
    }

    fn send_unavailable_local(&self, contact: &Jid, to: &Jid) {
        let gone: Vec<Element> = self
            .available_resources(contact)
            .map(|r| Self::unavailable_from(&r.jid))
            .collect();
        for p in gone {
            self.deliver_to_jid(to, p);
        }
    }

    fn kick_local(&self, bare: &Jid, reason: &str) {
        if let Some(list) = self.sessions.get(bare) {
            for r in list {
                r.session.kick(StreamError::with_text(
                    StreamErrorCondition::NotAuthorized,
                    reason,
                ));
            }
        }
    }
}

/// The Router is the routing table [`route::decide`] reads: this node's sessions, the other
/// nodes' routes, the accounts, the domains and components it serves.
impl RoutingView for Router {
    fn is_local_domain(&self, domain: &str) -> bool {
        self.domains.iter().any(|d| d == domain)
    }

    fn is_component(&self, domain: &str) -> bool {
        self.components.contains_key(domain)
    }

    fn federation(&self) -> bool {
        self.s2s.is_some()
    }

    fn account_exists(&self, bare: &Jid) -> bool {
        // An account with a session exists; only offline targets cost a storage read.
        // A storage error must not make a real account look absent to senders.
        self.sessions.contains_key(bare)
            || self.remote.by_bare.contains_key(bare)
            || self.accounts.exists(&bare.text()).unwrap_or(true)
    }

    fn account_namespace(&self, ns: &str) -> bool {
        crate::im::handles(ns)
    }

    fn resources<'a>(&'a self, bare: &Jid) -> impl Iterator<Item = Resource<'a>> + 'a {
        let here = self
            .sessions
            .get(bare)
            .into_iter()
            .flatten()
            .map(|r| Resource {
                jid: &r.jid,
                at: Location::Here,
                priority: r.presence.as_ref().map(|(p, _)| *p),
            });
        let there = self.remote.resources(bare).map(|r| Resource {
            jid: &r.jid,
            at: Location::Node(r.node),
            priority: r.priority,
        });
        here.chain(there)
    }
}

fn priority_of(presence: &Element) -> i8 {
    presence
        .get_child("priority", ns::CLIENT)
        .and_then(|p| p.text().trim().parse::<i8>().ok())
        .unwrap_or(0)
}

impl Actor for Router {
    type Context = Context<Self>;
}

impl Handler<RegisterSession> for Router {
    type Result = ResponseActFuture<Self, Result<(), BindRefused>>;

    fn handle(&mut self, msg: RegisterSession, _: &mut Context<Self>) -> Self::Result {
        // In a cluster the log decides who holds the resource; the loser, wherever it is,
        // gets <conflict/> when the entry applies (`apply_route_events`). A node alone
        // applies its conflict policy itself.
        let Some(outcome) = self.remote.bind(RouteChange::Bind {
            jid: msg.jid.to_string(),
            session: msg.session_id,
            replace: self.conflict == ResourceConflict::Replace,
        }) else {
            return Box::pin(fut::ready(self.register_local(msg)));
        };
        Box::pin(
            outcome
                .into_actor(self)
                .map(move |outcome, router, _| match outcome {
                    Ok(Ok(BindOutcome::Bound)) => {
                        router.add_local(msg);
                        Ok(())
                    }
                    Ok(Ok(BindOutcome::Conflict)) => Err(BindRefused::Conflict),
                    Ok(Ok(BindOutcome::NodeNotUp)) | Ok(Err(_)) | Err(_) => {
                        Err(BindRefused::ClusterUnavailable)
                    }
                }),
        )
    }
}

impl Router {
    /// Bind on a single node: the local conflict policy applies.
    fn register_local(&mut self, msg: RegisterSession) -> Result<(), BindRefused> {
        let bare = msg.jid.to_bare();
        let existing = self
            .sessions
            .get(&bare)
            .and_then(|l| l.iter().position(|r| r.jid == msg.jid));
        if let Some(pos) = existing {
            if self.conflict == ResourceConflict::Reject {
                return Err(BindRefused::Conflict);
            }
            let old = self.sessions.get_mut(&bare).map(|l| l.remove(pos));
            if let Some(old) = old {
                old.session.kick(StreamError::with_text(
                    StreamErrorCondition::Conflict,
                    "replaced by a new session for the same resource",
                ));
                self.resource_gone(&bare, old);
            }
        }
        self.add_local(msg);
        Ok(())
    }

    fn add_local(&mut self, msg: RegisterSession) {
        let bare = msg.jid.to_bare();
        self.im.tell(
            &bare,
            ResourceBinding {
                jid: msg.jid.clone(),
                bound: true,
            },
        );
        METRICS.c2s_sessions.inc();
        // Most accounts have one resource: an empty Vec's first push reserves four (~800
        // bytes a session here), so make room for exactly one.
        self.sessions
            .entry(bare)
            .or_insert_with(|| Vec::with_capacity(1))
            .push(BoundResource {
                jid: msg.jid,
                session_id: msg.session_id,
                session: msg.session,
                presence: None,
                flags: 0,
            });
    }
}

impl Handler<UnregisterSession> for Router {
    type Result = ();

    fn handle(&mut self, msg: UnregisterSession, _: &mut Context<Self>) {
        let bare = msg.jid.to_bare();
        let Some(list) = self.sessions.get_mut(&bare) else {
            return;
        };
        let Some(pos) = list.iter().position(|r| r.session_id == msg.session_id) else {
            return;
        };
        let gone = list.remove(pos);
        if list.is_empty() {
            self.sessions.remove(&bare);
        }
        self.resource_gone(&bare, gone);
    }
}

impl Handler<BroadcastPresence> for Router {
    type Result = ();

    fn handle(&mut self, msg: BroadcastPresence, ctx: &mut Context<Self>) {
        let bare = msg.from.to_bare();
        let available = msg.presence.attr("type").is_none();
        let Some(list) = self.sessions.get_mut(&bare) else {
            return;
        };
        let Some(me) = list.iter_mut().find(|r| r.session_id == msg.session_id) else {
            return;
        };
        let initial = me.presence.is_none() && available;
        let was_available = me.presence.is_some();
        let old_priority = me.presence.as_ref().map(|(p, _)| *p);
        let priority = priority_of(&msg.presence);
        me.presence = available.then(|| (priority, msg.presence.clone()));
        if !available && !was_available {
            return;
        }
        let me_jid = me.jid.clone();
        let new_priority = available.then_some(priority);
        // XEP-0160 §3: stored messages go to a resource once it is available with a
        // non-negative priority (at its initial presence, or when it raises its priority).
        let takes_offline =
            new_priority.is_some_and(|p| p >= 0) && old_priority.is_none_or(|p| p < 0);
        // Other nodes route by availability and priority, not by the presence itself.
        if new_priority != old_priority {
            self.remote.change(RouteChange::Presence {
                jid: me_jid.to_string(),
                session: msg.session_id,
                priority: new_priority,
            });
        }
        // RFC 6121 §4.2.2 / §4.4.2: every available resource of the account, the sender included.
        let sender = self.resource(&me_jid);
        let mut presence = msg.presence;
        presence.set_attr("from", me_jid.to_string());
        self.broadcast_own(&bare, &presence, sender.filter(|_| !available));
        let account_available = self.account_available(&bare);
        self.im.tell(
            &bare,
            PresenceBroadcast {
                from: me_jid.clone(),
                presence,
                initial,
                priority,
                account_available,
            },
        );
        if takes_offline {
            self.fetch_offline(&me_jid, ctx);
        }
        if initial {
            // The newcomer learns about the account's other available resources.
            if let Some(me) = self.resource(&me_jid) {
                for other in self.available_resources(&bare).filter(|r| r.jid != me_jid) {
                    if let Some((_, p)) = &other.presence {
                        Self::deliver(me, p.clone());
                    }
                }
            }
            self.remote.user_op(&bare, true, || UserOp::SendPresenceOf {
                contact: bare.clone(),
                to: me_jid.clone(),
            });
        }
    }
}

impl Handler<RouteStanza> for Router {
    type Result = ();

    fn handle(&mut self, msg: RouteStanza, ctx: &mut Context<Self>) {
        let start = std::time::Instant::now();
        let kind = crate::metrics::kind_label(&msg.stanza.name);
        self.route(&msg.from, msg.to, msg.stanza, ctx);
        crate::metrics::routing_duration(kind, start.elapsed().as_secs_f64());
    }
}

impl Handler<crate::route::to_router::RerouteStanza> for Router {
    type Result = ();

    fn handle(&mut self, msg: crate::route::to_router::RerouteStanza, ctx: &mut Context<Self>) {
        let deliveries = route::decide(self, &msg.from, &msg.to, &msg.stanza);
        self.execute(&msg.from, &msg.to, msg.stanza, deliveries, false, ctx);
    }
}

impl Handler<KickAccount> for Router {
    type Result = ();

    fn handle(&mut self, msg: KickAccount, _: &mut Context<Self>) {
        self.kick_local(&msg.bare, &msg.reason);
        self.remote.user_op(&msg.bare, false, || UserOp::Kick {
            user: msg.bare.clone(),
            reason: msg.reason.clone(),
        });
    }
}

impl Handler<ListSessions> for Router {
    type Result = MessageResult<ListSessions>;

    fn handle(&mut self, _: ListSessions, _: &mut Context<Self>) -> Self::Result {
        let mut out: Vec<SessionInfo> = self
            .sessions
            .values()
            .flatten()
            .map(|r| SessionInfo {
                jid: r.jid.to_string(),
                available: r.presence.is_some(),
                priority: r.presence.as_ref().map(|(p, _)| *p).unwrap_or(0),
            })
            .collect();
        out.sort_by(|a, b| a.jid.cmp(&b.jid));
        MessageResult(out)
    }
}

impl Handler<RegisterComponent> for Router {
    type Result = ();
    fn handle(&mut self, msg: RegisterComponent, _: &mut Context<Self>) {
        tracing::info!(domain = %msg.domain, "component registered");
        self.components.insert(msg.domain, msg.handle);
    }
}

impl Handler<AttachS2s> for Router {
    type Result = ();
    fn handle(&mut self, msg: AttachS2s, _: &mut Context<Self>) {
        self.s2s = Some(msg.0);
    }
}

impl Handler<DeliverToAvailable> for Router {
    type Result = ();
    fn handle(&mut self, msg: DeliverToAvailable, _: &mut Context<Self>) {
        self.deliver_to_jid(&msg.to.to_bare(), msg.stanza);
    }
}

impl Handler<DeliverToResource> for Router {
    type Result = ();
    fn handle(&mut self, msg: DeliverToResource, _: &mut Context<Self>) {
        self.deliver_to_jid(&msg.to, msg.stanza);
    }
}

impl Handler<PushToUser> for Router {
    type Result = ();
    fn handle(&mut self, msg: PushToUser, _: &mut Context<Self>) {
        self.push_local(&msg.user, &msg.stanza, msg.except.as_ref());
        let xml = msg.stanza.to_xml_string();
        self.remote.user_op(&msg.user, false, || UserOp::Push {
            user: msg.user.clone(),
            stanza: xml.clone(),
            except: msg.except.clone(),
        });
    }
}

impl Handler<SendPresenceOf> for Router {
    type Result = ();
    fn handle(&mut self, msg: SendPresenceOf, _: &mut Context<Self>) {
        self.send_presence_local(&msg.contact, &msg.to);
        self.remote
            .user_op(&msg.contact, true, || UserOp::SendPresenceOf {
                contact: msg.contact.clone(),
                to: msg.to.clone(),
            });
    }
}

impl Handler<SendUnavailableOf> for Router {
    type Result = ();
    fn handle(&mut self, msg: SendUnavailableOf, _: &mut Context<Self>) {
        self.send_unavailable_local(&msg.contact, &msg.to);
        self.remote
            .user_op(&msg.contact, true, || UserOp::SendUnavailableOf {
                contact: msg.contact.clone(),
                to: msg.to.clone(),
            });
    }
}

impl Handler<BlockListChanged> for Router {
    type Result = ();
    fn handle(&mut self, msg: BlockListChanged, _: &mut Context<Self>) {
        for r in self.sessions.get(&msg.user).into_iter().flatten() {
            r.session.set_block_list(msg.list.clone());
        }
        self.remote
            .user_op(&msg.user, false, || UserOp::FiltersChanged {
                user: msg.user.clone(),
            });
    }
}

impl Handler<PrivacyChanged> for Router {
    type Result = ();
    fn handle(&mut self, msg: PrivacyChanged, _: &mut Context<Self>) {
        for r in self.sessions.get(&msg.user).into_iter().flatten() {
            r.session.set_privacy(msg.lists.clone());
        }
        self.remote
            .user_op(&msg.user, false, || UserOp::FiltersChanged {
                user: msg.user.clone(),
            });
    }
}

impl Handler<TakeOverSession> for Router {
    type Result = ResponseActFuture<Self, Result<HandedOver, ResumeRefused>>;

    /// XEP-0198 §5: the session bound as `jid` checks the token and hands its state over,
    /// with the presence and flags of its entry here; a session on another node is asked
    /// over the NodeLink.
    fn handle(&mut self, msg: TakeOverSession, _: &mut Context<Self>) -> Self::Result {
        if let Some(r) = self.resource(&msg.jid) {
            let presence = r.presence.as_ref().map(|(_, p)| p.to_xml_string());
            let flags = r.flags;
            let handed = r.session.hand_over(msg.token, msg.client_h);
            let jid = msg.jid.clone();
            let for_node = msg.for_node;
            return Box::pin(handed.into_actor(self).map(move |state, router, _| {
                let mut state = state?;
                state.presence = presence;
                state.flags = flags;
                if for_node.is_some() {
                    router.moving.insert(jid);
                }
                Ok(state)
            }));
        }
        let holder = self.remote.resource(&msg.jid).map(|r| r.node);
        let (Some(node), None) = (holder, msg.for_node) else {
            return Box::pin(fut::ready(Err(ResumeRefused::NotFound)));
        };
        let asked = self.remote.request(
            node,
            crate::cluster::messages::Request::TakeOverSession {
                jid: msg.jid,
                token: msg.token,
                client_h: msg.client_h,
            },
        );
        Box::pin(
            async move {
                match asked.await {
                    Some(crate::cluster::messages::Reply::TakeOverSession(Some(state))) => {
                        Ok(state)
                    }
                    _ => Err(ResumeRefused::NotFound),
                }
            }
            .into_actor(self),
        )
    }
}

impl Handler<ResumeSession> for Router {
    type Result = ResponseActFuture<Self, Result<u64, ResumeRefused>>;

    fn handle(&mut self, msg: ResumeSession, _: &mut Context<Self>) -> Self::Result {
        let bare = msg.jid.to_bare();
        let here = self.sessions.get_mut(&bare).and_then(|l| {
            l.iter_mut()
                .find(|r| r.jid == msg.jid && r.session_id == msg.state_session_id)
        });
        if let Some(resource) = here {
            // The route stays where it is in the cluster (this node); only the session
            // behind it changes. Presence and flags stay: the client resumed, it did not log
            // in again.
            let old = std::mem::replace(&mut resource.session, msg.session);
            old.retire();
            return Box::pin(fut::ready(Ok(msg.state_session_id)));
        }
        // From another node: the JID moves here in one commit; the holder's entry is
        // replaced there (`apply_route_events`), its actor retired without unavailable.
        let presence = msg.presence.map(|p| (priority_of(&p), p));
        let change = RouteChange::Move {
            jid: msg.jid.to_string(),
            session: msg.new_session_id,
            priority: presence.as_ref().map(|(p, _)| *p),
        };
        // The session is local from now on, before the commit: the holder passes on what
        // reached it as soon as it sees the move, and other nodes route here as soon as
        // they do, possibly before this node hears the commit's outcome. What arrives
        // meanwhile waits in the new actor's mailbox; if the move fails, the actor hands it
        // back to the account (it starts unrouted and ends).
        let new_session_id = msg.new_session_id;
        self.sessions
            .entry(bare.clone())
            .or_insert_with(|| Vec::with_capacity(1))
            .push(BoundResource {
                jid: msg.jid.clone(),
                session_id: new_session_id,
                session: msg.session,
                presence,
                flags: msg.flags,
            });
        let unbind = move |router: &mut Router| {
            if let Some(list) = router.sessions.get_mut(&bare) {
                list.retain(|r| !(r.jid == msg.jid && r.session_id == new_session_id));
                if list.is_empty() {
                    router.sessions.remove(&bare);
                }
            }
        };
        let Some(outcome) = self.remote.bind(change) else {
            unbind(self);
            return Box::pin(fut::ready(Err(ResumeRefused::NotFound)));
        };
        Box::pin(outcome.into_actor(self).map(move |outcome, router, _| {
            if !matches!(outcome, Ok(Ok(BindOutcome::Bound))) {
                unbind(router);
                return Err(ResumeRefused::NotFound);
            }
            METRICS.c2s_sessions.inc();
            Ok(new_session_id)
        }))
    }
}
