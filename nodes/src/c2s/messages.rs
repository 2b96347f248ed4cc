//! Messages between a connection's I/O task, its SessionActor and the router.

use actix::prelude::*;
use proto::element::Element;
use proto::error::StreamError;

/// A stanza the client sent (after bind).
#[derive(Message)]
#[rtype(result = "()")]
pub struct FromClient(pub Element);

/// A nonza the client sent after bind, in a namespace a module registered (e.g. XEP-0352's
/// `<inactive/>`), for the modules' session hooks.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FromClientNonza(pub Element);

/// A stanza for the client.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver(pub Element);

/// Stored (offline) messages for the client, one bounded batch. The answer comes once all
/// of them were written to the client's socket (`true`), or when that can no longer happen
/// (`false`: the connection ended or overflowed first); only after `true` may they be removed
/// from storage.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct DeliverStored(pub Vec<Element>);

/// Close the client's stream with this error (conflict, shutdown, account deleted).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Kick(pub StreamError);

/// Answered once the actor has handled every message sent to it before: the connection,
/// closing on the client's request, then knows every stanza routed to the session before
/// it left the routing table is in the send queue.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FlushDeliveries;

/// The connection is gone; the actor unregisters and stops.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ConnectionClosed;

/// The account's blocklist (XEP-0191), enforced by the session in both directions.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetBlockList(pub std::sync::Arc<Vec<proto::jid::Jid>>);

/// Send the session's current presence to `to` (an answer to a probe, or presence a
/// subscription change implies), unless the session's blocklist or privacy list withholds it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SendOwnPresence {
    pub to: proto::jid::Jid,
    pub presence: Element,
}

/// The account's compiled privacy lists (XEP-0016); the session applies its active list or
/// the default.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetPrivacy(pub std::sync::Arc<crate::im::PrivacyLists>);
