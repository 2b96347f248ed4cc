//! The Router's view of sessions on other cluster nodes: a copy of the replicated routing
//! table's remote routes, kept current by the Raft state machine (`ClusterUpdate`), and the
//! pushes that carry stanzas and user operations to the node holding a session.

use std::collections::{HashMap, HashSet};

use actix::prelude::*;
use proto::element::Element;
use proto::error::{StreamError, StreamErrorCondition};
use proto::jid::Jid;

use super::messages::{
    AbsentSessions, ClusterUpdate, FromNode, ListRoutes, LocalRoutes, Resynced, SessionLossEpoch,
};
use super::Router;
use crate::cluster::messages::{Push, UserOp};
use crate::cluster::{
    BindOutcome, Cluster, NodeId, Route, RouteChange, RouteEvent, SessionRoute, TableUpdate,
    WriteError,
};
use crate::im::messages::{GetFilters, PresenceBroadcast};

/// A resource bound on another node.
pub(super) struct RemoteResource {
    pub jid: Jid,
    pub node: NodeId,
    pub session: u64,
    /// Priority while available.
    pub priority: Option<i8>,
}

/// The other nodes' sessions and the NodeLinks to them. A single node is a cluster of one:
/// no cluster, no remote routes, nothing to push; every method works the same.
pub(super) struct RemoteRoutes {
    /// `None` on a single node: the only place that knows whether there is a cluster.
    cluster: Option<Cluster>,
    /// Bare JID → its resources on other nodes.
    pub by_bare: HashMap<Jid, Vec<RemoteResource>>,
    /// Remote full JID → local full JIDs it sent available presence to, so that they learn
    /// it went unavailable when its node dies without saying so.
    pub presence_seen: HashMap<Jid, HashSet<Jid>>,
}

impl RemoteRoutes {
    pub fn new(cluster: Option<Cluster>) -> Self {
        RemoteRoutes {
            cluster,
            by_bare: HashMap::new(),
            presence_seen: HashMap::new(),
        }
    }

    /// This node's id (0 alone).
    pub fn me(&self) -> NodeId {
        self.cluster.as_ref().map_or(0, |c| c.me)
    }

    /// Queue a route change for the routing table (nothing to do alone).
    pub fn change(&self, change: RouteChange) {
        if let Some(cluster) = &self.cluster {
            cluster.change(change);
        }
    }

    /// Queue a bind for the routing table: the receiver gets its outcome once committed.
    /// `None` alone: the node applies its conflict policy itself.
    pub fn bind(
        &self,
        change: RouteChange,
    ) -> Option<tokio::sync::oneshot::Receiver<Result<BindOutcome, WriteError>>> {
        self.cluster.as_ref().map(|c| c.change(change))
    }

    pub fn resource(&self, full: &Jid) -> Option<&RemoteResource> {
        self.by_bare
            .get(&full.to_bare())?
            .iter()
            .find(|r| r.jid == *full)
    }

    pub fn resources(&self, bare: &Jid) -> impl Iterator<Item = &RemoteResource> {
        self.by_bare.get(bare).into_iter().flatten()
    }

    /// Nodes that hold a resource of `bare` (available ones only, if asked).
    pub fn nodes_of(&self, bare: &Jid, available_only: bool) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = self
            .resources(bare)
            .filter(|r| !available_only || r.priority.is_some())
            .map(|r| r.node)
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// Whether `push` was queued on the link to `node` (not: the link is down or its queue
    /// full, or there is no such member).
    pub fn push(&self, node: NodeId, push: Push) -> bool {
        if let Push::Deliver { .. } = push {
            crate::metrics::METRICS
                .routed
                .with_label_values(&["cluster"])
                .inc();
        }
        match self.cluster.as_ref().and_then(|c| c.link(node)) {
            Some(link) => {
                let queued = link.push(push);
                if !queued {
                    tracing::warn!(node, "cluster: link down, push not sent");
                }
                queued
            }
            None => {
                tracing::warn!(node, "cluster: no such member, push not sent");
                false
            }
        }
    }

    /// A request to `node` over its NodeLink; `None` alone, without a link, or on a timeout.
    pub fn request(
        &self,
        node: NodeId,
        body: crate::cluster::messages::Request,
    ) -> impl std::future::Future<Output = Option<crate::cluster::messages::Reply>> + 'static {
        let link = self.cluster.as_ref().and_then(|c| c.link(node));
        async move {
            link?
                .request(body, std::time::Duration::from_secs(10))
                .await
                .ok()
        }
    }

    /// Deliver `stanza` to the remote resource `to` (one hop).
    pub fn deliver(&self, to: &RemoteResource, mut stanza: Element) {
        stanza.set_attr("to", to.jid.to_string());
        let to_jid = to.jid.clone();
        self.push(
            to.node,
            Push::Deliver {
                to: to_jid,
                stanza: stanza.to_xml_string(),
            },
        );
    }

    /// Like `deliver`, but the stanza keeps its `to` (a bare JID, for messages to the account).
    pub fn deliver_keep_to(&self, to: &RemoteResource, stanza: &Element) {
        self.deliver_at(to.node, to.jid.clone(), stanza);
    }

    /// `stanza`, addressed as it is, to the session of `resource` on `node`; whether it was
    /// queued on the link (see [`push`](Self::push)).
    pub fn deliver_at(&self, node: NodeId, resource: Jid, stanza: &Element) -> bool {
        self.push(
            node,
            Push::Deliver {
                to: resource,
                stanza: stanza.to_xml_string(),
            },
        )
    }

    pub fn user_op(&self, bare: &Jid, available_only: bool, op: impl Fn() -> UserOp) {
        for node in self.nodes_of(bare, available_only) {
            self.push(node, Push::User(op()));
        }
    }

    fn set(&mut self, jid: Jid, route: Route) {
        let list = self.by_bare.entry(jid.to_bare()).or_default();
        match list.iter_mut().find(|r| r.jid == jid) {
            Some(r) => {
                r.node = route.node;
                r.session = route.session;
                r.priority = route.priority;
            }
            None => list.push(RemoteResource {
                jid,
                node: route.node,
                session: route.session,
                priority: route.priority,
            }),
        }
    }

    /// Drop the entry without telling anyone the resource went away (it moved here).
    fn forget(&mut self, jid: &Jid, route: &Route) {
        let bare = jid.to_bare();
        if let Some(list) = self.by_bare.get_mut(&bare) {
            list.retain(|r| !(r.jid == *jid && r.node == route.node && r.session == route.session));
            if list.is_empty() {
                self.by_bare.remove(&bare);
            }
        }
    }

    /// Forget `jid` if it is still `route`; the local resources it sent presence to get
    /// unavailable from it.
    fn remove(&mut self, jid: &Jid, route: &Route) -> Vec<(Jid, Element)> {
        let bare = jid.to_bare();
        if let Some(list) = self.by_bare.get_mut(&bare) {
            list.retain(|r| !(r.jid == *jid && r.node == route.node && r.session == route.session));
            if list.is_empty() {
                self.by_bare.remove(&bare);
            }
        }
        if self.resource(jid).is_some() {
            return Vec::new();
        }
        let unavailable = Router::unavailable_from(jid);
        self.presence_seen
            .remove(jid)
            .into_iter()
            .flatten()
            .map(|to| (to, unavailable.clone()))
            .collect()
    }
}

impl Router {
    /// Apply what the routing table's log changed.
    fn apply_route_events(&mut self, events: Vec<RouteEvent>) {
        let remote = &mut self.remote;
        let me = remote.me();
        let mut kicks = Vec::new();
        let mut unavailable = Vec::new();
        for event in events {
            match event {
                RouteEvent::Set { jid, route } => {
                    let Ok(jid) = Jid::parse(&jid) else { continue };
                    if route.node == me {
                        continue;
                    }
                    // The resource moved to another node: any local holder lost it.
                    kicks.push((jid.clone(), None));
                    remote.set(jid, route);
                }
                RouteEvent::Removed {
                    jid,
                    route,
                    replaced,
                } => {
                    let Ok(jid) = Jid::parse(&jid) else { continue };
                    if route.node == me {
                        if replaced {
                            kicks.push((jid, Some(route.session)));
                        }
                        continue;
                    }
                    unavailable.extend(remote.remove(&jid, &route));
                }
                RouteEvent::Moved { jid, from, to } => {
                    let Ok(jid) = Jid::parse(&jid) else { continue };
                    if let Some(from) = from.filter(|f| f.node != to.node) {
                        if from.node == me {
                            // Ours went to `to.node`: retired there (`moving`), not gone.
                            kicks.push((jid.clone(), Some(from.session)));
                        } else {
                            remote.forget(&jid, &from);
                        }
                    }
                    if to.node != me {
                        remote.set(jid, to);
                    }
                }
                RouteEvent::Member { node, member } => {
                    tracing::info!(node, state = ?member.state, "cluster: member state changed");
                    self.loss_epoch += 1;
                }
                RouteEvent::Draining { node, draining } => {
                    tracing::info!(node, draining, "cluster: member draining changed");
                }
            }
        }
        for (jid, session) in kicks {
            self.drop_local_resource(&jid, session);
        }
        for (to, presence) in unavailable {
            if let Some(r) = self.resource(&to) {
                Self::deliver(r, presence);
            }
        }
    }

    /// A snapshot replaced the table: rebuild the remote view from it.
    fn replace_routes(&mut self, table: crate::cluster::RoutingTable) {
        self.loss_epoch += 1;
        let remote = &self.remote;
        let me = remote.me();
        let old: Vec<(Jid, Route)> = remote
            .by_bare
            .values()
            .flatten()
            .map(|r| {
                (
                    r.jid.clone(),
                    Route {
                        node: r.node,
                        session: r.session,
                        priority: r.priority,
                    },
                )
            })
            .collect();
        let mut events: Vec<RouteEvent> = old
            .into_iter()
            .filter(|(j, r)| table.routes.get(&j.to_string()) != Some(r))
            .map(|(j, route)| RouteEvent::Removed {
                jid: j.to_string(),
                route,
                replaced: false,
            })
            .collect();
        events.extend(
            table
                .routes
                .into_iter()
                .filter(|(_, r)| r.node != me)
                .map(|(jid, route)| RouteEvent::Set { jid, route }),
        );
        self.apply_route_events(events);
    }

    /// A local session lost its resource to a bind elsewhere: `<conflict/>`.
    fn drop_local_resource(&mut self, jid: &Jid, session: Option<u64>) {
        let moving = self.moving.remove(jid);
        let bare = jid.to_bare();
        let Some(list) = self.sessions.get_mut(&bare) else {
            return;
        };
        let Some(pos) = list
            .iter()
            .position(|r| r.jid == *jid && session.is_none_or(|s| s == r.session_id))
        else {
            return;
        };
        let old = list.remove(pos);
        if list.is_empty() {
            self.sessions.remove(&bare);
        }
        if moving {
            // Resumed on the node that now holds the JID (XEP-0198 §5): the resource did not
            // go away, it moved; the old actor passes on what reached it meanwhile.
            crate::metrics::METRICS.c2s_sessions.dec();
            old.session.retire();
            return;
        }
        old.session.kick(StreamError::with_text(
            StreamErrorCondition::Conflict,
            "replaced by a new session for the same resource",
        ));
        self.resource_gone(&bare, old);
    }

    /// A stanza node `from_node` pushed for a session here.
    fn delivered_from_node(
        &mut self,
        from_node: NodeId,
        to: Jid,
        stanza: Element,
        ctx: &mut Context<Self>,
    ) {
        if stanza.name == "message" {
            self.observe_archive_ids(&stanza);
        }
        if stanza.name == "presence" {
            let remote = &mut self.remote;
            if let Some(from) = stanza.attr("from").and_then(|f| Jid::parse(f).ok()) {
                if !from.is_bare()
                    && self
                        .sessions
                        .get(&from.to_bare())
                        .is_none_or(|l| l.iter().all(|r| r.jid != from))
                {
                    match stanza.attr("type") {
                        None => {
                            remote
                                .presence_seen
                                .entry(from)
                                .or_default()
                                .insert(to.clone());
                        }
                        Some("unavailable") => {
                            if let Some(set) = remote.presence_seen.get_mut(&from) {
                                set.remove(&to);
                                if set.is_empty() {
                                    remote.presence_seen.remove(&from);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        if let Some(r) = self.resource(&to) {
            r.session.deliver(stanza);
            return;
        }
        // The session moved to another node (resumed there, XEP-0198 §5) and the sender's
        // copy of the routing table had not caught up: follow it. Not straight back to the
        // sender (whose view is the stale one); the views converge with the route's commit,
        // so a stanza cannot keep travelling.
        if let Some(r) = self.remote.resource(&to) {
            if r.node != from_node && r.node != self.remote.me() {
                self.remote.deliver(r, stanza);
                return;
            }
        }
        // The session left meanwhile: route as if it had been sent to the absent resource
        // (RFC 6121 §8.5.3.2).
        let from = stanza
            .attr("from")
            .and_then(|f| Jid::parse(f).ok())
            .unwrap_or_else(|| to.to_bare());
        let deliveries = crate::route::absent_resource(self, &from, &to.to_bare(), &stanza);
        // Archived where it was first routed.
        self.execute(&from, &to, stanza, deliveries, false, ctx);
    }

    fn user_op_from_node(&mut self, op: UserOp, ctx: &mut Context<Self>) {
        let parse = |s: &str| Element::parse(s).ok();
        match op {
            UserOp::Push {
                user,
                stanza,
                except,
            } => {
                if let Some(stanza) = parse(&stanza) {
                    self.push_local(&user, &stanza, except.as_ref());
                }
            }
            UserOp::DeliverToAvailable { user, stanza } => {
                let Some(stanza) = parse(&stanza) else { return };
                let to: Vec<Jid> = self
                    .available_resources(&user)
                    .map(|r| r.jid.clone())
                    .collect();
                // Local resources: nothing to follow to another node.
                let me = self.remote.me();
                for jid in to {
                    self.delivered_from_node(me, jid, stanza.clone(), ctx);
                }
            }
            UserOp::SendPresenceOf { contact, to } => self.send_presence_local(&contact, &to),
            UserOp::SendUnavailableOf { contact, to } => self.send_unavailable_local(&contact, &to),
            UserOp::FiltersChanged { user } => {
                if !self.sessions.contains_key(&user) {
                    return;
                }
                let request = self.im.ask(&user, GetFilters { user: user.clone() });
                ctx.spawn(request.into_actor(self).map(move |filters, router, _| {
                    let Ok(filters) = filters else { return };
                    let blocked = std::sync::Arc::new(filters.blocked);
                    for r in router.sessions.get(&user).into_iter().flatten() {
                        r.session.set_block_list(blocked.clone());
                        r.session.set_privacy(filters.privacy.clone());
                    }
                }));
            }
            UserOp::Kick { user, reason } => self.kick_local(&user, &reason),
            UserOp::ToFlagged {
                user,
                flag,
                except,
                stanza,
            } => {
                if let Some(stanza) = parse(&stanza) {
                    let flag = crate::modules::ResourceFlag(flag);
                    self.to_flagged_local(&user, flag, &except, &stanza);
                }
            }
        }
    }
}

impl Handler<ClusterUpdate> for Router {
    type Result = ();
    fn handle(&mut self, msg: ClusterUpdate, _: &mut Context<Self>) {
        match msg.0 {
            TableUpdate::Applied(events) => self.apply_route_events(events),
            TableUpdate::Replaced(table) => self.replace_routes(table),
        }
    }
}

impl Handler<FromNode> for Router {
    type Result = ();
    fn handle(&mut self, msg: FromNode, ctx: &mut Context<Self>) {
        match msg.push {
            Push::Deliver { to, stanza } => match Element::parse(&stanza) {
                Ok(stanza) => self.delivered_from_node(msg.node, to, stanza, ctx),
                Err(e) => tracing::warn!(node = msg.node, error = %e, "cluster: unparsable stanza"),
            },
            Push::User(op) => self.user_op_from_node(op, ctx),
            Push::Im(_) | Push::ImForwarded(_) => {}
        }
    }
}

impl Handler<LocalRoutes> for Router {
    type Result = MessageResult<LocalRoutes>;
    fn handle(&mut self, _: LocalRoutes, _: &mut Context<Self>) -> Self::Result {
        MessageResult(
            self.sessions
                .values()
                .flatten()
                .map(|r| SessionRoute {
                    jid: r.jid.to_string(),
                    session: r.session_id,
                    priority: r.presence.as_ref().map(|(p, _)| *p),
                })
                .collect(),
        )
    }
}

impl Handler<AbsentSessions> for Router {
    type Result = MessageResult<AbsentSessions>;
    fn handle(&mut self, msg: AbsentSessions, _: &mut Context<Self>) -> Self::Result {
        MessageResult(
            msg.0
                .into_iter()
                .filter(|j| self.resource(j).is_none() && self.remote.resource(j).is_none())
                .collect(),
        )
    }
}

impl Handler<SessionLossEpoch> for Router {
    type Result = u64;
    fn handle(&mut self, _: SessionLossEpoch, _: &mut Context<Self>) -> u64 {
        self.loss_epoch
    }
}

impl Handler<ListRoutes> for Router {
    type Result = MessageResult<ListRoutes>;
    fn handle(&mut self, _: ListRoutes, _: &mut Context<Self>) -> Self::Result {
        let me = self.remote.me();
        let local = self
            .sessions
            .values()
            .flatten()
            .map(|r| (r.jid.to_string(), me, r.presence.is_some()));
        let remote = self
            .remote
            .by_bare
            .values()
            .flatten()
            .map(|r| (r.jid.to_string(), r.node, r.priority.is_some()));
        let mut all: Vec<(String, u64, bool)> = local.chain(remote).collect();
        all.sort();
        MessageResult(all)
    }
}

impl Handler<Resynced> for Router {
    type Result = ();
    fn handle(&mut self, msg: Resynced, ctx: &mut Context<Self>) {
        for s in msg.0 {
            let Ok(jid) = Jid::parse(&s.jid) else {
                continue;
            };
            let bare = jid.to_bare();
            let Some((priority, presence)) = self.resource(&jid).and_then(|r| r.presence.clone())
            else {
                continue;
            };
            let mut presence = presence;
            presence.set_attr("from", jid.to_string());
            // The account's resources on other nodes, then its contacts (through its home
            // node, as an initial presence: contacts and offline messages stored meanwhile).
            for r in self
                .remote
                .resources(&bare)
                .filter(|r| r.priority.is_some())
            {
                self.remote.deliver(r, presence.clone());
            }
            self.im.tell(
                &bare,
                PresenceBroadcast {
                    from: jid.clone(),
                    presence,
                    initial: true,
                    priority,
                    account_available: true,
                },
            );
            if priority >= 0 {
                self.fetch_offline(&jid, ctx);
            }
        }
    }
}
