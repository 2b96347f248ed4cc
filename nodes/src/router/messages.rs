//! Messages the Router actor accepts, and those it sends to components (`ToComponent`) and
//! to federation (`SendRemote`, to the s2s manager).

use actix::prelude::*;
use proto::element::Element;
use proto::jid::Jid;

pub use crate::route::session::ResumeRefused;
use crate::route::session::{HandedOver, SessionHandle, Token};
pub use crate::route::to_router::{
    BlockListChanged, DeliverToAvailable, DeliverToResource, PrivacyChanged, PushToUser,
    RouteStanza, SendPresenceOf, SendUnavailableOf,
};

/// A session bound `jid` (full). The router applies the resource-conflict policy.
#[derive(Message)]
#[rtype(result = "Result<(), BindRefused>")]
pub struct RegisterSession {
    pub jid: Jid,
    pub session_id: u64,
    /// How the router reaches the session (built by the session).
    pub session: SessionHandle,
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

/// Of these full JIDs, those bound nowhere: no session here, and none on another node as
/// this node's copy of the routing table knows it. A detached resumable session (XEP-0198
/// §5) is still bound, so it is not absent. The group chat sweep (`node::muc_sweep`) asks.
#[derive(Message)]
#[rtype(result = "Vec<Jid>")]
pub struct AbsentSessions(pub Vec<Jid>);

/// A number that changes whenever sessions may have gone without saying so: a member's
/// state or incarnation changed (a node marked down has its routes purged; a restarted
/// node's resync drops its previous life's), or a snapshot replaced the table. It starts at
/// 1, so a node's start counts as one (a restart loses every session of a node alone).
#[derive(Message)]
#[rtype(result = "u64")]
pub struct SessionLossEpoch;

/// This node's bound sessions as routes, for a resync with the cluster.
#[derive(Message)]
#[rtype(result = "Vec<crate::cluster::SessionRoute>")]
pub struct LocalRoutes;
/// A component (a service on its own domain, such as `conference.` or `upload.`) serves
/// `domain`: stanzas to that domain or any JID at it go to `handle` (`route::Delivery::
/// Component`). A second registration for the same domain replaces the first.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RegisterComponent {
    pub domain: String,
    pub handle: Recipient<ToComponent>,
}

/// A stanza for a component: `to` is at its domain, `from` as stamped by the sender's side.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ToComponent {
    pub from: Jid,
    pub to: Jid,
    pub stanza: Element,
}

/// Federation is up: stanzas for other domains go to this recipient (the s2s manager).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AttachS2s(pub Recipient<SendRemote>);

/// A stanza (internal `jabber:client` form, `from` stamped) for a remote domain: it goes on
/// the outbound link for (`from`'s domain, `to`'s domain), which is opened if needed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SendRemote {
    pub from: Jid,
    pub to: Jid,
    pub stanza: Element,
}

/// A client asks to resume the stream-management session bound as `jid` (XEP-0198 §5),
/// proving it with `token`; it handled `client_h` of the session's stanzas. The holder
/// hands its state over and waits for [`ResumeSession`] to move the route.
#[derive(Message)]
#[rtype(result = "Result<HandedOver, ResumeRefused>")]
pub struct TakeOverSession {
    pub jid: Jid,
    pub token: Token,
    pub client_h: u32,
    /// The node that asked over its NodeLink (`None`: a connection here): the session
    /// must be here, and its route will move to that node.
    pub for_node: Option<crate::cluster::NodeId>,
}

/// The route of `jid` moves to the session that resumed it. On the node that held it (the
/// entry `state.session_id` is here) only the actor behind the entry changes, keeping
/// session id, presence and flags, and the old actor is retired; from another node the
/// routing table moves the JID here in one commit (as session `new_session_id`, with the
/// presence and flags the holder handed over). Answers the session id in use.
#[derive(Message)]
#[rtype(result = "Result<u64, ResumeRefused>")]
pub struct ResumeSession {
    pub jid: Jid,
    pub state_session_id: u64,
    pub new_session_id: u64,
    pub presence: Option<Element>,
    pub flags: u8,
    pub session: SessionHandle,
}
