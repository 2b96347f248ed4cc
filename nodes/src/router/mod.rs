//! Router: knows every bound session on this node and delivers stanzas per RFC 6120 §10 and
//! RFC 6121 §8 (full JID, bare JID by priority, unknown accounts, absent resources).

mod flagged;
pub mod messages;
mod remote;

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use proto::element::Element;
use proto::error::{stanza_error_reply, StanzaErrorCondition, StreamError, StreamErrorCondition};
use proto::jid::Jid;
use proto::ns;
use storage::AccountStore;

use crate::c2s::messages::{
    Deliver, DeliverStored, Kick, SendOwnPresence, SetBlockList, SetPrivacy,
};
use crate::c2s::session::SessionActor;
use crate::cluster::messages::UserOp;
use crate::cluster::{BindOutcome, Cluster, RouteChange};
use crate::config::ResourceConflict;
use crate::im::messages::{
    AccountIq, FetchOffline, InboundSubscription, PresenceBroadcast, ReleaseOffline, RemoveOffline,
    ResourceBinding, StoreOffline,
};
use crate::im::RosterShards;
use crate::metrics::METRICS;
use messages::*;
use proto::im::SubscriptionKind;

/// One bound resource of an account.
struct BoundResource {
    jid: Jid,
    session_id: u64,
    session: Addr<SessionActor>,
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
    im: RosterShards,
    /// Sessions on other cluster nodes (`None` on a single node).
    remote: Option<remote::RemoteRoutes>,
    /// Federation: where stanzas for other domains go (`None`: they bounce).
    s2s: Option<Recipient<crate::s2s::messages::SendRemote>>,
    offline: OfflineBatch,
    /// Local resources being delivered their account's stored messages.
    offline_delivering: std::collections::HashSet<Jid>,
    /// Account IQs from federated senders waiting for a shard, per remote domain (bounded
    /// by `MAX_REMOTE_ACCOUNT_IQS`; local sessions are bounded by `im.max_iqs_in_flight`).
    remote_account_iqs: std::cell::RefCell<HashMap<String, usize>>,
}

/// Account IQs (vCard, last activity, ...) one remote domain may have waiting for this node's
/// shards at once; beyond it they bounce with `resource-constraint` (RFC 6120 §8.3.3.18,
/// type `wait`), so a federated peer cannot queue unbounded work and memory on the router.
const MAX_REMOTE_ACCOUNT_IQS: usize = 256;

impl Router {
    pub fn new(
        domains: Arc<Vec<String>>,
        accounts: AccountStore,
        conflict: ResourceConflict,
        im: RosterShards,
        cluster: Option<Cluster>,
        offline: OfflineBatch,
    ) -> Router {
        Router {
            domains,
            accounts,
            conflict,
            sessions: HashMap::new(),
            im,
            remote: cluster.map(remote::RemoteRoutes::new),
            s2s: None,
            offline,
            offline_delivering: std::collections::HashSet::new(),
            remote_account_iqs: std::cell::RefCell::new(HashMap::new()),
        }
    }

    /// Hand a stanza for a non-local `to` to federation (dropped without it).
    fn to_remote(&self, to: &Jid, mut stanza: Element) {
        let from = stanza.attr("from").and_then(|f| Jid::parse(f).ok());
        if let (Some(s2s), Some(from)) = (&self.s2s, from) {
            METRICS.routed.with_label_values(&["s2s"]).inc();
            stanza.set_attr("to", to.to_string());
            s2s.do_send(crate::s2s::messages::SendRemote {
                from,
                to: to.clone(),
                stanza,
            });
        }
    }

    fn is_local_domain(&self, domain: &str) -> bool {
        self.domains.iter().any(|d| d == domain)
    }

    fn account_exists(&self, bare: &Jid) -> bool {
        // An account with a session exists; only offline targets cost a storage read.
        // A storage error must not make a real account look absent to senders.
        self.sessions.contains_key(bare)
            || self
                .remote
                .as_ref()
                .is_some_and(|r| r.by_bare.contains_key(bare))
            || self.accounts.exists(&bare.to_string()).unwrap_or(true)
    }

    fn resource(&self, full: &Jid) -> Option<&BoundResource> {
        self.sessions
            .get(&full.to_bare())?
            .iter()
            .find(|r| r.jid == *full)
    }

    fn deliver(to: &BoundResource, mut stanza: Element) {
        stanza.set_attr("to", to.jid.to_string());
        Self::deliver_as_addressed(to, stanza);
    }

    /// Deliver with the stanza's `to` left as it is (a bare JID, for the account).
    fn deliver_as_addressed(to: &BoundResource, stanza: Element) {
        METRICS.routed.with_label_values(&["local"]).inc();
        to.session.do_send(Deliver(stanza));
    }

    /// Send an error reply for `stanza` back to its (local) sender.
    fn bounce(&self, from: &Jid, stanza: &Element, cond: StanzaErrorCondition) {
        METRICS.bounces.with_label_values(&[cond.as_str()]).inc();
        if stanza.attr("type") == Some("error") {
            return;
        }
        let reply = stanza_error_reply(stanza, cond, None);
        if !self.is_local_domain(from.domain()) {
            return self.to_remote(from, reply);
        }
        if let Some(r) = self.resource(from) {
            r.session.do_send(Deliver(reply));
        } else if let Some(remote) = &self.remote {
            if let Some(r) = remote.resource(from) {
                remote.deliver_keep_to(r, &reply);
            }
        }
    }

    /// Resources that receive a message to the bare JID: the available ones with the highest
    /// non-negative priority (RFC 6121 §8.5.2.1.1).
    fn best_resources(&self, bare: &Jid) -> Vec<&BoundResource> {
        let Some(list) = self.sessions.get(bare) else {
            return Vec::new();
        };
        match self.top_priority(bare) {
            Some(top) => list
                .iter()
                .filter(|r| r.presence.as_ref().is_some_and(|(p, _)| *p == top))
                .collect(),
            None => Vec::new(),
        }
    }

    /// The highest non-negative priority among the account's available resources, on any node.
    fn top_priority(&self, bare: &Jid) -> Option<i8> {
        let local = self
            .sessions
            .get(bare)
            .into_iter()
            .flatten()
            .filter_map(|r| r.presence.as_ref().map(|(p, _)| *p));
        let remote = self
            .remote
            .iter()
            .flat_map(|r| r.resources(bare))
            .filter_map(|r| r.priority);
        local.chain(remote).filter(|p| *p >= 0).max()
    }

    /// The account's resources on other nodes that match `pick` (by their priority while
    /// available).
    fn remote_where(
        &self,
        bare: &Jid,
        pick: impl Fn(Option<i8>) -> bool,
    ) -> Vec<&remote::RemoteResource> {
        self.remote
            .iter()
            .flat_map(|r| r.resources(bare))
            .filter(|r| pick(r.priority))
            .collect()
    }

    /// Send `stanza` as it is (its `to` kept) to remote resources.
    fn deliver_remote(&self, targets: &[&remote::RemoteResource], stanza: &Element) {
        if let Some(remote) = &self.remote {
            for t in targets {
                remote.deliver_keep_to(t, stanza);
            }
        }
    }

    fn available_resources(&self, bare: &Jid) -> impl Iterator<Item = &BoundResource> {
        self.sessions
            .get(bare)
            .into_iter()
            .flatten()
            .filter(|r| r.presence.is_some())
    }

    fn route(&self, from: &Jid, to: Jid, stanza: Element, ctx: &mut Context<Self>) {
        if !self.is_local_domain(to.domain()) {
            // RFC 6120 §10.4: federation, or remote-server-not-found without it.
            if self.s2s.is_none() || !self.is_local_domain(from.domain()) {
                return self.bounce(from, &stanza, StanzaErrorCondition::RemoteServerNotFound);
            }
            return self.to_remote(&to, stanza);
        }
        if to.local().is_none() {
            // To the server itself: IQs were answered by the session; messages and presence
            // to a domain are not for anyone (RFC 6120 §10.3.3 lets us ignore them).
            if stanza.name == "iq" && matches!(stanza.attr("type"), Some("get") | Some("set")) {
                self.bounce(from, &stanza, StanzaErrorCondition::ServiceUnavailable);
            }
            return;
        }
        let bare = to.to_bare();
        if !self.account_exists(&bare) {
            return self.to_unknown_account(from, &to, stanza, ctx);
        }
        if to.resource().is_some() {
            if let Some(r) = self.resource(&to) {
                self.carbon_copies(&bare, &stanza, std::slice::from_ref(&to));
                return Self::deliver(r, stanza);
            }
            if let Some(remote) = &self.remote {
                if let Some(r) = remote.resource(&to) {
                    self.carbon_copies(&bare, &stanza, std::slice::from_ref(&to));
                    return remote.deliver(r, stanza);
                }
            }
            return self.to_absent_resource(from, &bare, stanza, ctx);
        }
        self.to_bare(from, &bare, stanza, ctx);
    }

    /// RFC 6121 §8.5.1: no such account. Wherever the RFC leaves a choice, the answer is
    /// the one an existing account without an available resource gets, so that a sender
    /// cannot tell the two apart (no user enumeration): the same condition, the same type,
    /// and the same way through the node.
    ///
    /// - presence (probes and subscription requests included): ignored, as for an existing
    ///   account whose user is not subscribed to or receiving presence from the sender;
    /// - message: headline and error ignored (§8.5.2.2.1 / §8.5.3.2.1 for an existing
    ///   account); chat, normal and groupchat `service-unavailable` (an existing account
    ///   stores chat and normal to its bare JID, which cannot be imitated; over its quota,
    ///   or to an absent resource, it also answers `service-unavailable`);
    /// - IQ get/set: `service-unavailable`; those in the namespaces the account's shard
    ///   answers (vCard, last activity, roster, ...) go to the shard like an existing
    ///   account's, marked unknown, and come back `service-unavailable` after the same hop;
    ///   IQ result/error: ignored (RFC 6120 §8.2.3: a response is never answered).
    fn to_unknown_account(&self, from: &Jid, to: &Jid, stanza: Element, ctx: &mut Context<Self>) {
        match (stanza.name.as_str(), stanza.attr("type")) {
            ("presence", _) => {}
            ("message", Some("headline" | "error")) => {}
            ("message", _) => self.bounce(from, &stanza, StanzaErrorCondition::ServiceUnavailable),
            (_, Some("get" | "set")) => {
                let in_shard = stanza
                    .children()
                    .next()
                    .is_some_and(|p| crate::im::handles(&p.ns));
                if to.is_bare() && in_shard {
                    self.account_iq(from, to, stanza, false, ctx);
                } else {
                    self.bounce(from, &stanza, StanzaErrorCondition::ServiceUnavailable);
                }
            }
            _ => {}
        }
    }

    /// RFC 6121 §8.5.3.2: the full JID has no session.
    fn to_absent_resource(&self, from: &Jid, bare: &Jid, stanza: Element, ctx: &mut Context<Self>) {
        match (stanza.name.as_str(), stanza.attr("type")) {
            // §8.5.3.2.1: a chat goes to the bare JID's most available resources, or is
            // stored.
            ("message", Some("chat")) => self.to_bare(from, bare, stanza, ctx),
            // §8.5.3.2.1: normal (also without a type, RFC 6121 §5.2.2) and groupchat are
            // ignored or answered service-unavailable, never delivered to another resource
            // nor stored: the sender learns that this resource is gone.
            ("message", None | Some("normal") | Some("groupchat")) => {
                self.bounce(from, &stanza, StanzaErrorCondition::ServiceUnavailable)
            }
            // §8.5.3.2.1: headline and error are silently ignored.
            ("message", _) => {}
            ("presence", Some("subscribe" | "subscribed" | "unsubscribe" | "unsubscribed")) => {
                self.to_bare(from, bare, stanza, ctx)
            }
            ("presence", _) => {}
            // §8.5.3.2.2 (IQ): service-unavailable; a response is never answered (RFC 6120
            // §8.2.3).
            (_, Some("get" | "set")) => {
                self.bounce(from, &stanza, StanzaErrorCondition::ServiceUnavailable)
            }
            _ => {}
        }
    }

    /// RFC 6121 §8.5.2: addressed to an existing account's bare JID.
    fn to_bare(&self, from: &Jid, bare: &Jid, stanza: Element, ctx: &mut Context<Self>) {
        match stanza.name.as_str() {
            "message" => {
                let kind = stanza.attr("type").unwrap_or("normal");
                match kind {
                    "groupchat" => {
                        self.bounce(from, &stanza, StanzaErrorCondition::ServiceUnavailable)
                    }
                    "error" => {
                        let top = self.top_priority(bare);
                        for r in self.best_resources(bare) {
                            Self::deliver(r, stanza.clone());
                        }
                        for r in self.remote_where(bare, |p| p.is_some() && p == top) {
                            if let Some(remote) = &self.remote {
                                remote.deliver(r, stanza.clone());
                            }
                        }
                    }
                    "headline" => {
                        for r in self
                            .available_resources(bare)
                            .filter(|r| r.presence.as_ref().is_some_and(|(p, _)| *p >= 0))
                        {
                            Self::deliver(r, stanza.clone());
                        }
                        let remote = self.remote_where(bare, |p| p.is_some_and(|p| p >= 0));
                        let mut s = stanza.clone();
                        s.set_attr("to", bare.to_string());
                        self.deliver_remote(&remote, &s);
                    }
                    _ => {
                        let top = self.top_priority(bare);
                        let targets = self.best_resources(bare);
                        let remote = self.remote_where(bare, |p| p.is_some() && p == top);
                        if targets.is_empty() && remote.is_empty() {
                            self.store_offline(from, bare, stanza, ctx);
                            return;
                        }
                        let mut s = stanza;
                        s.set_attr("to", bare.to_string());
                        let got: Vec<Jid> = targets
                            .iter()
                            .map(|r| r.jid.clone())
                            .chain(remote.iter().map(|r| r.jid.clone()))
                            .collect();
                        self.carbon_copies(bare, &s, &got);
                        for r in targets {
                            Self::deliver_as_addressed(r, s.clone());
                        }
                        self.deliver_remote(&remote, &s);
                    }
                }
            }
            "presence" => {
                if let Some(kind) = stanza.attr("type").and_then(SubscriptionKind::parse) {
                    // Subscription state belongs to the recipient's roster shard.
                    self.im.tell(
                        bare,
                        InboundSubscription {
                            user: bare.clone(),
                            contact: from.to_bare(),
                            kind,
                            stanza,
                            sender_presence: None,
                        },
                    );
                    return;
                }
                if stanza.attr("type") == Some("probe") {
                    // Probes are answered by the roster shards on the user's behalf (local
                    // contacts' at login; a remote contact's when it arrives).
                    if !self.is_local_domain(from.domain()) {
                        self.im.tell(
                            bare,
                            crate::im::messages::RemoteProbe {
                                user: bare.clone(),
                                from: from.clone(),
                            },
                        );
                    }
                    return;
                }
                let mut s = stanza;
                s.set_attr("to", bare.to_string());
                for r in self.available_resources(bare) {
                    Self::deliver_as_addressed(r, s.clone());
                }
                let remote = self.remote_where(bare, |p| p.is_some());
                self.deliver_remote(&remote, &s);
            }
            _ => {
                // IQs to another account's bare JID are answered by the server on its behalf.
                let is_request = matches!(stanza.attr("type"), Some("get") | Some("set"));
                let ns = stanza.children().next().map(|p| p.ns.clone());
                match ns {
                    Some(ns) if is_request && crate::im::handles(&ns) => {
                        self.account_iq(from, bare, stanza, true, ctx)
                    }
                    _ if is_request => {
                        self.bounce(from, &stanza, StanzaErrorCondition::ServiceUnavailable)
                    }
                    _ => {}
                }
            }
        }
    }

    /// XEP-0280 §7: a message `bare` received goes, wrapped, to those of its resources that
    /// enabled carbons and did not get it (`got`).
    fn carbon_copies(&self, bare: &Jid, stanza: &Element, got: &[Jid]) {
        if let Some(copy) = crate::modules::carbons::received_copy(bare, stanza) {
            self.to_flagged(bare, crate::modules::carbons::FLAG, got, &copy);
        }
    }

    /// No resource can take the message: the recipient's shard stores it (XEP-0160), or
    /// the sender learns why not.
    fn store_offline(&self, from: &Jid, bare: &Jid, stanza: Element, ctx: &mut Context<Self>) {
        METRICS.routed.with_label_values(&["offline"]).inc();
        let from = from.clone();
        let original = stanza.clone();
        let request = self.im.ask(
            bare,
            StoreOffline {
                user: bare.clone(),
                stanza,
            },
        );
        ctx.spawn(request.into_actor(self).map(move |result, router, _| {
            let cond = match result {
                Ok(Ok(())) => return,
                Ok(Err(cond)) => cond,
                // The recipient's shard did not answer (its leader died or an election is
                // under way): the sender may retry.
                Err(_) => StanzaErrorCondition::ResourceConstraint,
            };
            router.bounce(&from, &original, cond);
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
                        stanza.set_attr("to", full.to_string());
                        METRICS.routed.with_label_values(&["local"]).inc();
                        batch.push(stanza);
                    }
                    // It can never be delivered: it goes with its batch.
                    Err(e) => tracing::error!(error = %e, "dropping an unreadable offline message"),
                }
            }
            let count = seqs.len();
            let written = r.session.send(DeliverStored(batch));
            ctx.spawn(written.into_actor(router).map(move |written, router, ctx| {
                if !matches!(written, Ok(true)) {
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
    /// `service-unavailable`, see [`to_unknown_account`](Self::to_unknown_account)).
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
            return self.to_remote(to, stanza);
        }
        if to.is_bare() {
            for r in self.available_resources(to) {
                Self::deliver(r, stanza.clone());
            }
            // Every node holding a session of the account decides itself which are
            // available: availability reaches the other nodes' route views a commit later
            // than the presence (a subscription request sent in between would be lost).
            if let Some(remote) = &self.remote {
                let xml = stanza.to_xml_string();
                remote.user_op(to, false, || UserOp::DeliverToAvailable {
                    user: to.clone(),
                    stanza: xml.clone(),
                });
            }
        } else if let Some(r) = self.resource(to) {
            Self::deliver(r, stanza);
        } else if let Some(remote) = &self.remote {
            if let Some(r) = remote.resource(to) {
                remote.deliver(r, stanza);
            }
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
        if let Some(remote) = &self.remote {
            for r in remote.resources(bare).filter(|r| r.priority.is_some()) {
                remote.deliver(r, presence.clone());
            }
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
        if let Some(remote) = &self.remote {
            remote.cluster.change(RouteChange::Unbind {
                jid: gone.jid.to_string(),
                session: gone.session_id,
            });
        }
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
            || self
                .remote
                .as_ref()
                .is_some_and(|r| r.resources(bare).any(|r| r.priority.is_some()))
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
                r.session.do_send(SendOwnPresence {
                    to: to.clone(),
                    presence: presence.clone(),
                });
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
                r.session.do_send(Kick(StreamError::with_text(
                    StreamErrorCondition::NotAuthorized,
                    reason,
                )));
            }
        }
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
        let Some(remote) = &self.remote else {
            return Box::pin(fut::ready(self.register_local(msg)));
        };
        // In a cluster the log decides who holds the resource; the loser, wherever it is,
        // gets <conflict/> when the entry applies (`apply_route_events`).
        let outcome = remote.cluster.change(RouteChange::Bind {
            jid: msg.jid.to_string(),
            session: msg.session_id,
            replace: self.conflict == ResourceConflict::Replace,
        });
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
                old.session.do_send(Kick(StreamError::with_text(
                    StreamErrorCondition::Conflict,
                    "replaced by a new session for the same resource",
                )));
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
        if let Some(remote) = &self.remote {
            // Other nodes route by availability and priority, not by the presence itself.
            if new_priority != old_priority {
                remote.cluster.change(RouteChange::Presence {
                    jid: me_jid.to_string(),
                    session: msg.session_id,
                    priority: new_priority,
                });
            }
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
            if let Some(remote) = &self.remote {
                remote.user_op(&bare, true, || UserOp::SendPresenceOf {
                    contact: bare.clone(),
                    to: me_jid.clone(),
                });
            }
        }
    }
}

impl Handler<RouteStanza> for Router {
    type Result = ();

    fn handle(&mut self, msg: RouteStanza, ctx: &mut Context<Self>) {
        let start = std::time::Instant::now();
        let kind = crate::metrics::kind_label(&msg.stanza.name);
        self.route(&msg.from, msg.to, msg.stanza, ctx);
        METRICS
            .routing_duration
            .with_label_values(&[kind])
            .observe(start.elapsed().as_secs_f64());
    }
}

impl Handler<KickAccount> for Router {
    type Result = ();

    fn handle(&mut self, msg: KickAccount, _: &mut Context<Self>) {
        self.kick_local(&msg.bare, &msg.reason);
        if let Some(remote) = &self.remote {
            remote.user_op(&msg.bare, false, || UserOp::Kick {
                user: msg.bare.clone(),
                reason: msg.reason.clone(),
            });
        }
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
        if let Some(remote) = &self.remote {
            let xml = msg.stanza.to_xml_string();
            remote.user_op(&msg.user, false, || UserOp::Push {
                user: msg.user.clone(),
                stanza: xml.clone(),
                except: msg.except.clone(),
            });
        }
    }
}

impl Handler<SendPresenceOf> for Router {
    type Result = ();
    fn handle(&mut self, msg: SendPresenceOf, _: &mut Context<Self>) {
        self.send_presence_local(&msg.contact, &msg.to);
        if let Some(remote) = &self.remote {
            remote.user_op(&msg.contact, true, || UserOp::SendPresenceOf {
                contact: msg.contact.clone(),
                to: msg.to.clone(),
            });
        }
    }
}

impl Handler<SendUnavailableOf> for Router {
    type Result = ();
    fn handle(&mut self, msg: SendUnavailableOf, _: &mut Context<Self>) {
        self.send_unavailable_local(&msg.contact, &msg.to);
        if let Some(remote) = &self.remote {
            remote.user_op(&msg.contact, true, || UserOp::SendUnavailableOf {
                contact: msg.contact.clone(),
                to: msg.to.clone(),
            });
        }
    }
}

impl Handler<BlockListChanged> for Router {
    type Result = ();
    fn handle(&mut self, msg: BlockListChanged, _: &mut Context<Self>) {
        for r in self.sessions.get(&msg.user).into_iter().flatten() {
            r.session.do_send(SetBlockList(msg.list.clone()));
        }
        if let Some(remote) = &self.remote {
            remote.user_op(&msg.user, false, || UserOp::FiltersChanged {
                user: msg.user.clone(),
            });
        }
    }
}

impl Handler<PrivacyChanged> for Router {
    type Result = ();
    fn handle(&mut self, msg: PrivacyChanged, _: &mut Context<Self>) {
        for r in self.sessions.get(&msg.user).into_iter().flatten() {
            r.session.do_send(SetPrivacy(msg.lists.clone()));
        }
        if let Some(remote) = &self.remote {
            remote.user_op(&msg.user, false, || UserOp::FiltersChanged {
                user: msg.user.clone(),
            });
        }
    }
}
