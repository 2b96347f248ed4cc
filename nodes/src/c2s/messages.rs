//! Messages between a connection's I/O task, its SessionActor and the router.

use actix::prelude::*;
use proto::element::Element;
use proto::error::StreamError;

/// A stanza the client sent (after bind).
#[derive(Message)]
#[rtype(result = "()")]
pub struct FromClient(pub Element);

/// A stanza for the client.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver(pub Element);

/// Close the client's stream with this error (conflict, shutdown, account deleted).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Kick(pub StreamError);

/// The connection is gone; the actor unregisters and stops.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ConnectionClosed;

/// The account's blocklist (XEP-0191), enforced by the session in both directions.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetBlockList(pub std::sync::Arc<Vec<proto::jid::Jid>>);
