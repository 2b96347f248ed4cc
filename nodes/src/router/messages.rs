//! Messages the Router actor accepts.

use actix::prelude::*;
use proto::element::Element;
use proto::jid::Jid;

use crate::c2s::session::SessionActor;

/// A session bound `jid` (full). The router applies the resource-conflict policy.
#[derive(Message)]
#[rtype(result = "Result<(), BindRefused>")]
pub struct RegisterSession {
    pub jid: Jid,
    pub session_id: u64,
    pub session: Addr<SessionActor>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindRefused {
    /// The resource is online and the policy keeps the old session.
    Conflict,
    /// The cluster could not commit the binding (no quorum reachable): retry later.
    ClusterUnavailable,
}

/// The session is gone (stream closed or connection lost). If it was available, its
/// unavailable presence goes out.
#[derive(Message)]
#[rtype(result = "()")]
pub struct UnregisterSession {
    pub jid: Jid,
    pub session_id: u64,
}

/// Broadcast presence (no `to`) from a session; `from` is already stamped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct BroadcastPresence {
    pub from: Jid,
    pub session_id: u64,
    pub presence: Element,
}

/// A stanza with its `from` stamped, for delivery per RFC 6120 §10 / RFC 6121 §8.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RouteStanza {
    pub from: Jid,
    /// The stanza's `to`, already prepared.
    pub to: Jid,
    pub stanza: Element,
}

/// A module set or cleared `flag` on the session `jid`/`session_id` (e.g. carbons enabled).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetResourceFlag {
    pub jid: Jid,
    pub session_id: u64,
    pub flag: crate::modules::ResourceFlag,
    pub on: bool,
}

/// Deliver `stanza` to the resources of `user` that have `flag` set, except those in
/// `except`, on every node (a carbon copy to the user's interested resources).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ToFlaggedResources {
    pub user: Jid,
    pub flag: crate::modules::ResourceFlag,
    pub except: Vec<Jid>,
    pub stanza: Element,
}

/// Disconnect every session of an account (it was deleted).
#[derive(Message)]
#[rtype(result = "()")]
pub struct KickAccount {
    pub bare: Jid,
    /// The text of the `<not-authorized/>` stream error (e.g. "account deleted").
    pub reason: String,
}

/// Online sessions, for the admin API.
#[derive(Message)]
#[rtype(result = "Vec<SessionInfo>")]
pub struct ListSessions;

#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionInfo {
    pub jid: String,
    pub available: bool,
    pub priority: i8,
}

/// Deliver to every available resource of the bare JID `to` (presence to contacts, inbound
/// subscription requests).
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeliverToAvailable {
    pub to: Jid,
    pub stanza: Element,
}

/// Deliver to one bound resource, if it is still there (offline messages, pending requests).
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeliverToResource {
    pub to: Jid,
    pub stanza: Element,
}

/// A roster push for every bound resource of `user`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PushToUser {
    pub user: Jid,
    pub stanza: Element,
    /// A resource that gets this push with the reply to its own request instead, so that
    /// it sees the result first.
    pub except: Option<Jid>,
}

/// Send the current presence of each available resource of `contact` (a bare JID) to `to`
/// (a full JID: that resource; a bare JID: its available resources). Answers probes. Each
/// resource's session sends it, so that its blocklist and privacy list apply.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SendPresenceOf {
    pub contact: Jid,
    pub to: Jid,
}

/// Send unavailable presence from each available resource of `contact` to `to`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SendUnavailableOf {
    pub contact: Jid,
    pub to: Jid,
}

/// `user`'s blocklist changed: its sessions enforce the new one.
#[derive(Message)]
#[rtype(result = "()")]
pub struct BlockListChanged {
    pub user: Jid,
    pub list: std::sync::Arc<Vec<Jid>>,
}

/// `user`'s privacy lists, default list or roster changed: its sessions enforce the newly
/// compiled lists.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PrivacyChanged {
    pub user: Jid,
    pub lists: std::sync::Arc<crate::im::PrivacyLists>,
}

/// The routing table's log applied entries (or a snapshot): update the remote view.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ClusterUpdate(pub crate::cluster::TableUpdate);

/// A one-way message from another cluster node.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FromNode {
    pub node: crate::cluster::NodeId,
    pub push: crate::cluster::messages::Push,
}

/// Every route this node knows, local and remote, as `(full JID, node, available)`, sorted.
#[derive(Message)]
#[rtype(result = "Vec<(String, u64, bool)>")]
pub struct ListRoutes;

/// The cluster bound these sessions of this node again after it had been marked down: their
/// presence goes out again (the other nodes sent `unavailable` for them meanwhile).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resynced(pub Vec<crate::cluster::SessionRoute>);

/// This node's bound sessions as routes, for a resync with the cluster.
#[derive(Message)]
#[rtype(result = "Vec<crate::cluster::SessionRoute>")]
pub struct LocalRoutes;
/// Federation is up: stanzas for other domains go to this recipient (the s2s manager).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AttachS2s(pub Recipient<crate::s2s::messages::SendRemote>);
