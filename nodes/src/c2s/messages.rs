//! Messages between a connection's I/O task and its SessionActor (what the router sends a
//! session is `route::session::ToSession`).

use actix::prelude::*;
use proto::element::Element;

/// A stanza the client sent (after bind).
#[derive(Message)]
#[rtype(result = "()")]
pub struct FromClient(pub Element);

/// A nonza the client sent after bind, in a namespace a module registered (e.g. XEP-0352's
/// `<inactive/>`), for the modules' session hooks.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FromClientNonza(pub Element);

/// Answered once the actor has handled every message sent to it before: the connection,
/// closing on the client's request, then knows every stanza routed to the session before
/// it left the routing table is in the send queue.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FlushDeliveries;

/// The connection is gone: the actor unregisters and stops, or, under stream management
/// with resumption (XEP-0198 §5), waits detached unless the stream was closed cleanly.
#[derive(Message, Default)]
#[rtype(result = "()")]
pub struct ConnectionClosed {
    /// The client's stanzas the connection counted (`None`: stream management not enabled).
    pub sm_handled: Option<u32>,
    /// The client closed its stream (or the node is shutting down): nothing to resume.
    pub clean: bool,
}

/// The client has been silent for `c2s.idle_ping_secs`: send it an XEP-0199 ping.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PingClient;
