//! Messages the s2s manager accepts (and `router::messages::SendRemote`, which the Router
//! sends it).

use actix::prelude::*;
use proto::s2s::DialbackOutcome;

/// An inbound stream asks: did the authoritative server of `originating` issue `key` for the
/// stream `stream_id` it opened to our `receiving` domain? (XEP-0220 §2.2, sent as
/// `<db:verify/>` over our outbound link to `originating`.)
#[derive(Message)]
#[rtype(result = "DialbackOutcome")]
pub struct VerifyDialback {
    pub receiving: String,
    pub originating: String,
    pub stream_id: String,
    pub key: String,
}

/// An outbound link task ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LinkClosed {
    pub local: String,
    pub remote: String,
    pub generation: u64,
    /// The link never came up (unreachable, refused, timed out).
    pub failed: bool,
}

/// An outbound link task is authenticated (`Ready`): it no longer holds one of the
/// `s2s.max_connecting_links` slots.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LinkUp {
    pub generation: u64,
}
