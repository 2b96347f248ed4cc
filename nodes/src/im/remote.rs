//! IM operations across the cluster. Each operation is one serde struct (`im::messages`),
//! used both as the account shard's actor message and on the NodeLink wire:
//! [`im_operations!`] lists them once, with the account whose shard serves each, and gives
//! every one its wire name ([`ImMessage`]) and the serving side that runs a peer's request on
//! this node's own shard. The wire carries the operation's name and its serialised form
//! ([`ImRequest`]), and the reply its serialised result ([`ImReply::Result`]); nothing here
//! knows an operation's fields.
//!
//! Placement: a user's IM state lives in its replicated shard (`cluster::shards`), and the
//! shard's AccountShard acts on the shard's leader. Sessions and the Router on any node reach
//! it through `AccountShards::tell`/`ask`, which call the local actor or the leader over
//! NodeLink.

use actix::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::messages::*;
use super::muc::{MucDestroy, MucDirectory, MucStanza};
use super::muc_limits::{MucCountRoom, MucReleaseRoom};
use super::{AccountShard, AccountShards};
use crate::cluster::messages::{ImReply, ImRequest, Push};
use crate::cluster::NodeId;
use proto::jid::Jid;

#[derive(Debug, thiserror::Error)]
pub enum ImError {
    #[error("the leader of the user's shard cannot be reached: {0}")]
    Unreachable(String),
    #[error("the shard's leader answered something else")]
    BadReply,
    #[error("the shard's leader could not run the operation: {0}")]
    Failed(String),
}

/// A message the shards take, in the form it crosses nodes.
pub trait ImMessage: Message + Serialize + DeserializeOwned + Send + Sized + 'static
where
    AccountShard: Handler<Self>,
    Self::Result: Serialize + DeserializeOwned + Send,
{
    /// The operation's name on the wire.
    const OP: &'static str;

    /// The account whose shard serves the operation (a bare JID).
    fn account(&self) -> Jid;

    fn to_wire(&self) -> ImRequest {
        ImRequest {
            op: Self::OP.to_string(),
            // Every operation is plain data (strings, numbers, JIDs and elements as text),
            // which always serialises.
            payload: serde_json::to_value(self).unwrap_or_default(),
        }
    }

    fn from_reply(reply: ImReply) -> Result<Self::Result, ImError> {
        match reply {
            ImReply::Result(v) => serde_json::from_value(v).map_err(|_| ImError::BadReply),
            ImReply::Failed(e) => Err(ImError::Failed(e)),
            ImReply::NotLeader(_) => Err(ImError::BadReply),
        }
    }
}

/// The result of a local `send`, as the wire reply.
fn reply<R: Serialize>(r: Result<R, MailboxError>) -> ImReply {
    match r.map(|r| serde_json::to_value(&r)) {
        Ok(Ok(v)) => ImReply::Result(v),
        Ok(Err(e)) => ImReply::Failed(e.to_string()),
        Err(e) => ImReply::Failed(e.to_string()),
    }
}

/// The IM operations, once each: `Type => |message| account whose shard serves it`.
macro_rules! im_operations {
    ($($op:ident => |$m:ident| $account:expr;)*) => {
        $(
            impl ImMessage for $op {
                const OP: &'static str = stringify!($op);
                fn account(&self) -> Jid {
                    let $m = self;
                    $account
                }
            }
        )*

        /// A peer's operation, decoded.
        enum Op {
            $($op($op),)*
        }

        impl Op {
            fn decode(req: ImRequest) -> Result<Op, String> {
                match req.op.as_str() {
                    $(stringify!($op) => serde_json::from_value(req.payload)
                        .map(Op::$op)
                        .map_err(|e| format!("malformed {}: {e}", stringify!($op))),)*
                    other => Err(format!("unknown IM operation {other:?}")),
                }
            }

            fn account(&self) -> Jid {
                match self {
                    $(Op::$op(m) => m.account(),)*
                }
            }

            fn to_wire(&self) -> ImRequest {
                match self {
                    $(Op::$op(m) => m.to_wire(),)*
                }
            }

            /// Hand it to the shard actor without waiting for the result.
            fn tell(self, addr: &Addr<AccountShard>) {
                match self {
                    $(Op::$op(m) => addr.do_send(m),)*
                }
            }

            async fn ask(self, addr: &Addr<AccountShard>) -> ImReply {
                match self {
                    $(Op::$op(m) => reply(addr.send(m).await),)*
                }
            }
        }
    };
}

im_operations! {
    AccountIq => |m| m.to.to_bare();
    OutboundSubscription => |m| m.user.to_bare();
    InboundSubscription => |m| m.user.to_bare();
    PresenceBroadcast => |m| m.from.to_bare();
    StoreOffline => |m| m.user.to_bare();
    DeleteAccountData => |m| m.user.to_bare();
    ImportRoster => |m| m.user.to_bare();
    FetchOffline => |m| m.user.to_bare();
    RemoveOffline => |m| m.user.to_bare();
    ReleaseOffline => |m| m.user.to_bare();
    GetFilters => |m| m.user.to_bare();
    ResourceBinding => |m| m.jid.to_bare();
    RemoteProbe => |m| m.user.to_bare();
    MulticastPresence => |m| m.user.to_bare();
    ContactAvailable => |m| m.user.to_bare();
    ArchiveAppend => |m| m.user.to_bare();
    ArchivePurge => |m| m.user.to_bare();
    MucStanza => |m| m.room.to_bare();
    MucDirectory => |m| m.probe.to_bare();
    MucDestroy => |m| m.room.to_bare();
    MucCountRoom => |m| m.user.to_bare();
    MucReleaseRoom => |m| m.user.to_bare();
}

/// A peer's one-way IM operation. If this node no longer leads the account's shard, it is
/// passed on once to the leader this node knows, and after that retried as a request.
pub fn serve_push(shards: &AccountShards, from: NodeId, req: ImRequest, forwarded: bool) {
    let op = match Op::decode(req) {
        Ok(op) => op,
        Err(e) => {
            tracing::warn!(node = from, error = %e, "nodelink: IM push dropped");
            return;
        }
    };
    let user = op.account();
    match shards.serving(&user) {
        Ok(addr) => op.tell(addr),
        Err(Some(leader)) if !forwarded && leader != from => {
            let wire = op.to_wire();
            let pushed = shards
                .link_to(leader)
                .is_some_and(|l| l.push(Push::ImForwarded(wire.clone())));
            if !pushed {
                shards.tell_later(user, wire);
            }
        }
        Err(_) => shards.tell_later(user, op.to_wire()),
    }
}

/// Run a peer's IM request on this node's shard actor, if this node leads the shard.
pub async fn serve(shards: &AccountShards, req: ImRequest) -> ImReply {
    let op = match Op::decode(req) {
        Ok(op) => op,
        Err(e) => return ImReply::Failed(e),
    };
    let addr = match shards.serving(&op.account()) {
        Ok(addr) => addr.clone(),
        Err(leader) => return ImReply::NotLeader(leader),
    };
    op.ask(&addr).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::element::Element;
    use proto::im::SubscriptionKind;

    fn jid(s: &str) -> Jid {
        Jid::parse(s).unwrap()
    }

    /// An operation crosses the wire as its name and serialised form and comes back as the
    /// same message; so does its result.
    #[test]
    fn operations_round_trip_through_the_wire_form() {
        let msg = InboundSubscription {
            user: jid("juliet@example.com"),
            contact: jid("romeo@example.net"),
            kind: SubscriptionKind::Subscribe,
            stanza: Element::parse("<presence xmlns='jabber:client' type='subscribe'/>").unwrap(),
            sender_presence: Some(proto::im::PresenceToSend::Available),
        };
        let wire = msg.to_wire();
        assert_eq!(wire.op, "InboundSubscription");
        let bytes = serde_json::to_vec(&wire).unwrap();
        let back = Op::decode(serde_json::from_slice(&bytes).unwrap()).unwrap();
        assert_eq!(back.account(), jid("juliet@example.com"));
        let Op::InboundSubscription(back) = back else {
            panic!("decoded as another operation");
        };
        assert_eq!(back.kind, SubscriptionKind::Subscribe);
        assert_eq!(back.stanza.attr("type"), Some("subscribe"));

        let r: Result<(), proto::error::StanzaErrorCondition> =
            Err(proto::error::StanzaErrorCondition::ServiceUnavailable);
        let got = StoreOffline::from_reply(reply(Ok(r))).unwrap();
        assert_eq!(got, r);
        assert!(Op::decode(ImRequest {
            op: "NoSuchOp".into(),
            payload: serde_json::Value::Null
        })
        .is_err());
    }
}
