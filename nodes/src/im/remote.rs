//! IM operations across the cluster: each message type's wire form (`ImRequest`), and the
//! serving side that runs a peer's request on this node's own shards.
//!
//! Placement: a user's IM state lives in its replicated shard (`cluster::shards`), and the
//! shard's RosterActor acts on the shard's leader. Sessions and the Router on any node reach
//! it through `RosterShards::tell`/`ask`, which call the local actor or the leader over
//! NodeLink.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use proto::element::Element;
use proto::error::StanzaErrorCondition;
use proto::im::{PresenceToSend, SubscriptionKind};

use super::messages::*;
use super::{PrivacyLists, RosterActor, RosterShards};
use crate::cluster::messages::{ImReply, ImRequest, Push};
use crate::cluster::NodeId;
use proto::jid::Jid;

#[derive(Debug, thiserror::Error)]
pub enum ImError {
    #[error("the leader of the user's shard cannot be reached: {0}")]
    Unreachable(String),
    #[error("the shard's leader answered something else")]
    BadReply,
}

/// A message the shards take, in the form it crosses nodes.
pub trait ImMessage: Message + Send + Sized + 'static
where
    RosterActor: Handler<Self>,
    Self::Result: Send,
{
    fn to_wire(&self) -> ImRequest;
    fn from_reply(reply: ImReply) -> Result<Self::Result, ImError>;
}

fn xml(e: &Element) -> String {
    e.to_xml_string()
}

fn parse(s: &str) -> Option<Element> {
    Element::parse(s).ok()
}

impl ImMessage for AccountIq {
    fn to_wire(&self) -> ImRequest {
        ImRequest::AccountIq {
            from: self.from.clone(),
            to: self.to.clone(),
            iq: xml(&self.iq),
            exists: self.exists,
        }
    }
    fn from_reply(reply: ImReply) -> Result<Vec<Element>, ImError> {
        match reply {
            ImReply::Stanzas(s) => Ok(s.iter().filter_map(|s| parse(s)).collect()),
            _ => Err(ImError::BadReply),
        }
    }
}

fn unit(reply: ImReply) -> Result<(), ImError> {
    match reply {
        ImReply::Done => Ok(()),
        _ => Err(ImError::BadReply),
    }
}

impl ImMessage for OutboundSubscription {
    fn to_wire(&self) -> ImRequest {
        ImRequest::OutboundSubscription {
            user: self.user.clone(),
            contact: self.contact.clone(),
            kind: self.kind.as_str().into(),
            stanza: xml(&self.stanza),
        }
    }
    fn from_reply(reply: ImReply) -> Result<(), ImError> {
        unit(reply)
    }
}

impl ImMessage for InboundSubscription {
    fn to_wire(&self) -> ImRequest {
        ImRequest::InboundSubscription {
            user: self.user.clone(),
            contact: self.contact.clone(),
            kind: self.kind.as_str().into(),
            stanza: xml(&self.stanza),
            sender_presence: self.sender_presence.map(|p| match p {
                PresenceToSend::Available => "available".into(),
                PresenceToSend::Unavailable => "unavailable".into(),
            }),
        }
    }
    fn from_reply(reply: ImReply) -> Result<(), ImError> {
        unit(reply)
    }
}

impl ImMessage for PresenceBroadcast {
    fn to_wire(&self) -> ImRequest {
        ImRequest::PresenceBroadcast {
            from: self.from.clone(),
            presence: xml(&self.presence),
            initial: self.initial,
            priority: self.priority,
            account_available: self.account_available,
        }
    }
    fn from_reply(reply: ImReply) -> Result<(), ImError> {
        unit(reply)
    }
}

impl ImMessage for StoreOffline {
    fn to_wire(&self) -> ImRequest {
        ImRequest::StoreOffline {
            user: self.user.clone(),
            stanza: xml(&self.stanza),
        }
    }
    fn from_reply(reply: ImReply) -> Result<Result<(), StanzaErrorCondition>, ImError> {
        match reply {
            ImReply::Stored(None) => Ok(Ok(())),
            ImReply::Stored(Some(c)) => Ok(Err(StanzaErrorCondition::from_name(&c)
                .unwrap_or(StanzaErrorCondition::InternalServerError))),
            _ => Err(ImError::BadReply),
        }
    }
}

impl ImMessage for ImportRoster {
    fn to_wire(&self) -> ImRequest {
        ImRequest::ImportRoster {
            user: self.user.clone(),
            items: self.items.clone(),
        }
    }
    fn from_reply(reply: ImReply) -> Result<Result<usize, String>, ImError> {
        match reply {
            ImReply::Imported(n) => Ok(Ok(n)),
            ImReply::Failed(e) => Ok(Err(e)),
            _ => Err(ImError::BadReply),
        }
    }
}

impl ImMessage for DeleteAccountData {
    fn to_wire(&self) -> ImRequest {
        ImRequest::DeleteAccountData {
            user: self.user.clone(),
        }
    }
    fn from_reply(reply: ImReply) -> Result<Result<(), String>, ImError> {
        match reply {
            ImReply::Done => Ok(Ok(())),
            ImReply::Failed(e) => Ok(Err(e)),
            _ => Err(ImError::BadReply),
        }
    }
}

impl ImMessage for FetchOffline {
    fn to_wire(&self) -> ImRequest {
        ImRequest::FetchOffline {
            user: self.user.clone(),
            holder: self.holder.clone(),
            after: self.after,
            max_bytes: self.max_bytes,
            max_messages: self.max_messages,
        }
    }
    fn from_reply(reply: ImReply) -> Result<Vec<(u64, String)>, ImError> {
        match reply {
            ImReply::Offline(m) => Ok(m),
            _ => Err(ImError::BadReply),
        }
    }
}

impl ImMessage for RemoveOffline {
    fn to_wire(&self) -> ImRequest {
        ImRequest::RemoveOffline {
            user: self.user.clone(),
            seqs: self.seqs.clone(),
        }
    }
    fn from_reply(reply: ImReply) -> Result<Result<(), String>, ImError> {
        match reply {
            ImReply::Done => Ok(Ok(())),
            ImReply::Failed(e) => Ok(Err(e)),
            _ => Err(ImError::BadReply),
        }
    }
}

impl ImMessage for ReleaseOffline {
    fn to_wire(&self) -> ImRequest {
        ImRequest::ReleaseOffline {
            user: self.user.clone(),
            holder: self.holder.clone(),
        }
    }
    fn from_reply(reply: ImReply) -> Result<(), ImError> {
        unit(reply)
    }
}

impl ImMessage for GetFilters {
    fn to_wire(&self) -> ImRequest {
        ImRequest::GetFilters {
            user: self.user.clone(),
        }
    }
    fn from_reply(reply: ImReply) -> Result<Filters, ImError> {
        match reply {
            ImReply::Filters {
                blocked,
                default,
                lists,
            } => Ok(Filters {
                blocked,
                privacy: Arc::new(PrivacyLists {
                    default,
                    lists: lists
                        .into_iter()
                        .map(|(name, rules)| (name, Arc::new(rules)))
                        .collect::<HashMap<_, _>>(),
                }),
            }),
            _ => Err(ImError::BadReply),
        }
    }
}

impl ImMessage for ResourceBinding {
    fn to_wire(&self) -> ImRequest {
        ImRequest::ResourceBinding {
            jid: self.jid.clone(),
            bound: self.bound,
        }
    }
    fn from_reply(reply: ImReply) -> Result<(), ImError> {
        unit(reply)
    }
}

impl ImMessage for RemoteProbe {
    fn to_wire(&self) -> ImRequest {
        ImRequest::RemoteProbe {
            user: self.user.clone(),
            from: self.from.clone(),
        }
    }
    fn from_reply(reply: ImReply) -> Result<(), ImError> {
        unit(reply)
    }
}

fn kind(s: &str) -> Option<SubscriptionKind> {
    SubscriptionKind::parse(s)
}

/// The account whose shard serves `req`.
fn account_of(req: &ImRequest) -> Jid {
    match req {
        ImRequest::AccountIq { to, .. } => to.to_bare(),
        ImRequest::OutboundSubscription { user, .. }
        | ImRequest::InboundSubscription { user, .. }
        | ImRequest::StoreOffline { user, .. }
        | ImRequest::DeleteAccountData { user }
        | ImRequest::ImportRoster { user, .. }
        | ImRequest::FetchOffline { user, .. }
        | ImRequest::RemoveOffline { user, .. }
        | ImRequest::ReleaseOffline { user, .. }
        | ImRequest::GetFilters { user }
        | ImRequest::RemoteProbe { user, .. } => user.to_bare(),
        ImRequest::PresenceBroadcast { from, .. } => from.to_bare(),
        ImRequest::ResourceBinding { jid, .. } => jid.to_bare(),
    }
}

/// A peer's one-way IM operation. If this node no longer leads the account's shard, it is
/// passed on once to the leader this node knows, and after that retried as a request.
pub fn serve_push(shards: &RosterShards, from: NodeId, req: ImRequest, forwarded: bool) {
    let user = account_of(&req);
    match shards.serving(&user) {
        Ok(addr) => {
            if let Some(req) = tell(addr, req) {
                tracing::warn!(node = from, ?req, "nodelink: an IM request came as a push");
            }
        }
        Err(Some(leader)) if !forwarded && leader != from => {
            let pushed = shards
                .link_to(leader)
                .is_some_and(|l| l.push(Push::ImForwarded(req.clone())));
            if !pushed {
                shards.tell_later(user, req);
            }
        }
        Err(_) => shards.tell_later(user, req),
    }
}

/// Hand a one-way operation to the shard actor; gives back requests that want an answer.
fn tell(addr: &Addr<RosterActor>, req: ImRequest) -> Option<ImRequest> {
    match req {
        ImRequest::OutboundSubscription {
            user,
            contact,
            kind: k,
            stanza,
        } => {
            if let (Some(kind), Some(stanza)) = (kind(&k), parse(&stanza)) {
                addr.do_send(OutboundSubscription {
                    user,
                    contact,
                    kind,
                    stanza,
                });
            }
        }
        ImRequest::InboundSubscription {
            user,
            contact,
            kind: k,
            stanza,
            sender_presence,
        } => {
            let sender_presence = match sender_presence.as_deref() {
                Some("available") => Some(PresenceToSend::Available),
                Some("unavailable") => Some(PresenceToSend::Unavailable),
                _ => None,
            };
            if let (Some(kind), Some(stanza)) = (kind(&k), parse(&stanza)) {
                addr.do_send(InboundSubscription {
                    user,
                    contact,
                    kind,
                    stanza,
                    sender_presence,
                });
            }
        }
        ImRequest::PresenceBroadcast {
            from,
            presence,
            initial,
            priority,
            account_available,
        } => {
            if let Some(presence) = parse(&presence) {
                addr.do_send(PresenceBroadcast {
                    from,
                    presence,
                    initial,
                    priority,
                    account_available,
                });
            }
        }
        ImRequest::ResourceBinding { jid, bound } => addr.do_send(ResourceBinding { jid, bound }),
        ImRequest::RemoteProbe { user, from } => addr.do_send(RemoteProbe { user, from }),
        ImRequest::ReleaseOffline { user, holder } => addr.do_send(ReleaseOffline { user, holder }),
        ask => return Some(ask),
    }
    None
}

/// Run a peer's IM request on this node's shard actor, if this node leads the shard.
pub async fn serve(shards: &RosterShards, req: ImRequest) -> ImReply {
    let failed = |e: MailboxError| ImReply::Failed(e.to_string());
    let addr = match shards.serving(&account_of(&req)) {
        Ok(addr) => addr.clone(),
        Err(leader) => return ImReply::NotLeader(leader),
    };
    let Some(req) = tell(&addr, req) else {
        return ImReply::Done;
    };
    match req {
        ImRequest::AccountIq {
            from,
            to,
            iq,
            exists,
        } => {
            let Some(iq) = parse(&iq) else {
                return ImReply::Failed("malformed request".into());
            };
            match addr
                .send(AccountIq {
                    from,
                    to,
                    iq,
                    exists,
                })
                .await
            {
                Ok(replies) => ImReply::Stanzas(replies.iter().map(xml).collect()),
                Err(e) => failed(e),
            }
        }
        ImRequest::StoreOffline { user, stanza } => {
            let Some(stanza) = parse(&stanza) else {
                return ImReply::Failed("malformed request".into());
            };
            match addr.send(StoreOffline { user, stanza }).await {
                Ok(Ok(())) => ImReply::Stored(None),
                Ok(Err(c)) => ImReply::Stored(Some(c.as_str().into())),
                Err(e) => failed(e),
            }
        }
        ImRequest::DeleteAccountData { user } => {
            match addr.send(DeleteAccountData { user }).await {
                Ok(Ok(())) => ImReply::Done,
                Ok(Err(e)) => ImReply::Failed(e),
                Err(e) => failed(e),
            }
        }
        ImRequest::ImportRoster { user, items } => {
            match addr.send(ImportRoster { user, items }).await {
                Ok(Ok(n)) => ImReply::Imported(n),
                Ok(Err(e)) => ImReply::Failed(e),
                Err(e) => failed(e),
            }
        }
        ImRequest::FetchOffline {
            user,
            holder,
            after,
            max_bytes,
            max_messages,
        } => {
            let fetch = FetchOffline {
                user,
                holder,
                after,
                max_bytes,
                max_messages,
            };
            match addr.send(fetch).await {
                Ok(m) => ImReply::Offline(m),
                Err(e) => failed(e),
            }
        }
        ImRequest::RemoveOffline { user, seqs } => {
            match addr.send(RemoveOffline { user, seqs }).await {
                Ok(Ok(())) => ImReply::Done,
                Ok(Err(e)) => ImReply::Failed(e),
                Err(e) => failed(e),
            }
        }
        ImRequest::GetFilters { user } => match addr.send(GetFilters { user }).await {
            Ok(f) => ImReply::Filters {
                blocked: f.blocked,
                default: f.privacy.default.clone(),
                lists: f
                    .privacy
                    .lists
                    .iter()
                    .map(|(k, v)| (k.clone(), (**v).clone()))
                    .collect(),
            },
            Err(e) => failed(e),
        },
        _ => ImReply::Done,
    }
}
