//! What the Router holds for a bound session: a [`SessionHandle`] over one recipient of
//! [`ToSession`], the messages a router sends to a session, and what a session hands over
//! when a client resumes it ([`HandedOver`], carried over NodeLinks too). The session builds
//! the handle when it registers (`RegisterSession`), so the router knows nothing of the
//! session's actor type; the types live below `router`, `c2s` and `cluster`, which all use
//! them.
//!
//! One recipient, one mailbox: everything the router sends a session arrives in the order it
//! was sent (a delivery and the kick after it, a presence and the stored messages after it).

use std::sync::Arc;

use actix::prelude::*;
use proto::element::Element;
use proto::error::StreamError;
use proto::jid::Jid;
use tokio::sync::oneshot;

/// A message from the router to a session.
#[derive(Message)]
#[rtype(result = "()")]
pub enum ToSession {
    /// A stanza for the client (through the session's inbound filters and module hooks).
    Deliver(Element),
    /// Stored (offline) messages for the client, one bounded batch. `written` gets `true`
    /// once all of them were written to the client's socket, or `false` when that can no
    /// longer happen (the connection ended or overflowed first); only after `true` may they
    /// be removed from storage. A dropped sender counts as `false`.
    DeliverStored {
        batch: Vec<Element>,
        written: oneshot::Sender<bool>,
    },
    /// Close the client's stream with this error (conflict, account deleted).
    Kick(StreamError),
    /// Send the session's current presence to `to` (an answer to a probe, or presence a
    /// subscription change implies), unless the session's blocklist or privacy list
    /// withholds it.
    SendOwnPresence { to: Jid, presence: Element },
    /// The account's blocklist (XEP-0191), enforced by the session in both directions.
    SetBlockList(Arc<Vec<Jid>>),
    /// The account's compiled privacy lists (XEP-0016); the session applies its active list
    /// or the default.
    SetPrivacy(Arc<proto::privacy::PrivacyLists>),
    /// A client resumes the session elsewhere (XEP-0198 §5): check `token`, apply the
    /// client's `client_h`, and answer with the session's state once its old connection is
    /// gone; then wait for [`ToSession::Retire`].
    HandOver {
        token: Token,
        client_h: u32,
        reply: HandOverReply,
    },
    /// The route moved to the session that resumed this one: pass on what arrived since the
    /// handover, and stop.
    Retire,
}

/// The secret part of a stream-management resumption id.
pub type Token = [u8; 16];

/// Where a session's answer to [`ToSession::HandOver`] goes.
pub type HandOverReply = oneshot::Sender<Result<HandedOver, ResumeRefused>>;

/// What moves with a stream-management session from the connection (and node) that held it
/// to the one that resumed it: serialised once, for the actor message on one node and the
/// NodeLink between nodes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HandedOver {
    /// The session's full JID.
    pub jid: String,
    /// The session's id on the node that holds its route.
    pub session_id: u64,
    pub token: Token,
    /// Seconds the session may stay detached.
    pub max_secs: u32,
    /// The client's stanzas the session handled (the `h` of `<resumed/>`).
    pub handled_in: u32,
    /// Stanzas sent to the client, modulo 2^32: the count its next `<a h/>` is measured by.
    pub sent: u32,
    /// Serialised stanzas the client has not acknowledged, oldest first: retransmitted after
    /// `<resumed/>`.
    pub unacked: Vec<Vec<u8>>,
    /// Entities that got directed presence from the session (RFC 6121 §4.6).
    pub directed: Vec<String>,
    /// The session's last available presence (XML) and its resource flags, filled in by the
    /// router that held the route.
    #[serde(default)]
    pub presence: Option<String>,
    #[serde(default)]
    pub flags: u8,
}

/// Why a session cannot be resumed; the client is told `item-not-found` either way
/// (XEP-0198 §5), so that nothing about other sessions leaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeRefused {
    /// No such session, a wrong token, a session without resumption, or one that ended.
    NotFound,
}

/// The router's handle on one bound session.
#[derive(Clone)]
pub struct SessionHandle {
    to_session: Recipient<ToSession>,
}

impl SessionHandle {
    pub fn new(to_session: Recipient<ToSession>) -> SessionHandle {
        SessionHandle { to_session }
    }

    pub fn deliver(&self, stanza: Element) {
        self.to_session.do_send(ToSession::Deliver(stanza));
    }

    /// Hand a batch of stored messages over; resolves to whether it was written (see
    /// [`ToSession::DeliverStored`]).
    pub fn deliver_stored(
        &self,
        batch: Vec<Element>,
    ) -> impl std::future::Future<Output = bool> + 'static {
        let (written, rx) = oneshot::channel();
        self.to_session
            .do_send(ToSession::DeliverStored { batch, written });
        async move { rx.await.unwrap_or(false) }
    }

    pub fn kick(&self, error: StreamError) {
        self.to_session.do_send(ToSession::Kick(error));
    }

    pub fn send_own_presence(&self, to: Jid, presence: Element) {
        self.to_session
            .do_send(ToSession::SendOwnPresence { to, presence });
    }

    pub fn set_block_list(&self, list: Arc<Vec<Jid>>) {
        self.to_session.do_send(ToSession::SetBlockList(list));
    }

    pub fn set_privacy(&self, lists: Arc<proto::privacy::PrivacyLists>) {
        self.to_session.do_send(ToSession::SetPrivacy(lists));
    }

    /// Ask the session to hand itself over to a resuming client (see [`ToSession::HandOver`]).
    pub fn hand_over(
        &self,
        token: Token,
        client_h: u32,
    ) -> impl std::future::Future<Output = Result<HandedOver, ResumeRefused>> + 'static {
        let (reply, rx) = oneshot::channel();
        self.to_session.do_send(ToSession::HandOver {
            token,
            client_h,
            reply,
        });
        async move { rx.await.unwrap_or(Err(ResumeRefused::NotFound)) }
    }

    pub fn retire(&self) {
        self.to_session.do_send(ToSession::Retire);
    }
}
