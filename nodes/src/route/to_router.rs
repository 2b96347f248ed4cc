//! What the account shards (and everything else that delivers through the Router) send it:
//! a routed stanza, deliveries to an account's resources, roster pushes, presence on a
//! contact's behalf and the account's filters. The messages and the [`RouterHandle`] the
//! shards hold live below `im` and `router`, so that `im` does not depend on the Router
//! actor; `router::messages` lists them with the rest of the Router's messages.

use actix::dev::ToEnvelope;
use actix::prelude::*;
use proto::element::Element;
use proto::jid::Jid;

/// A stanza with its `from` stamped, for delivery per RFC 6120 §10 / RFC 6121 §8.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RouteStanza {
    pub from: Jid,
    /// The stanza's `to`, already prepared.
    pub to: Jid,
    pub stanza: Element,
}

/// A message a session took but will not deliver (it ended without resuming, XEP-0198 §4),
/// routed again to its account: as [`RouteStanza`], except that it was archived
/// (XEP-0313) on its first way and is not again.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RerouteStanza {
    pub from: Jid,
    pub to: Jid,
    pub stanza: Element,
}

/// Deliver to every available resource of the bare JID `to` (presence to contacts, inbound
/// subscription requests).
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeliverToAvailable {
    pub to: Jid,
    pub stanza: Element,
}

/// A presence change for several contacts at one remote domain (XEP-0033, the
/// `multicast` module): one stanza to the domain with their addresses if it supports
/// that, else one per contact as [`DeliverToAvailable`].
#[derive(Message)]
#[rtype(result = "()")]
pub struct PresenceToDomain {
    pub domain: String,
    pub contacts: Vec<Jid>,
    /// The presence, `from` stamped, no `to`.
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
    pub lists: std::sync::Arc<proto::privacy::PrivacyLists>,
}

/// The Router as the account shards reach it: one recipient per message they send, all over
/// the Router's one mailbox, so that everything a shard sends arrives in the order it was
/// sent (as with the actor's address).
#[derive(Clone)]
pub struct RouterHandle {
    route_stanza: Recipient<RouteStanza>,
    deliver_to_available: Recipient<DeliverToAvailable>,
    presence_to_domain: Recipient<PresenceToDomain>,
    deliver_to_resource: Recipient<DeliverToResource>,
    push_to_user: Recipient<PushToUser>,
    send_presence_of: Recipient<SendPresenceOf>,
    send_unavailable_of: Recipient<SendUnavailableOf>,
    block_list_changed: Recipient<BlockListChanged>,
    privacy_changed: Recipient<PrivacyChanged>,
}

impl RouterHandle {
    /// The handle on `router` (the Router actor; generic so that this module need not name
    /// it).
    pub fn new<A>(router: &Addr<A>) -> RouterHandle
    where
        A: Actor
            + Handler<RouteStanza>
            + Handler<DeliverToAvailable>
            + Handler<PresenceToDomain>
            + Handler<DeliverToResource>
            + Handler<PushToUser>
            + Handler<SendPresenceOf>
            + Handler<SendUnavailableOf>
            + Handler<BlockListChanged>
            + Handler<PrivacyChanged>,
        A::Context: ToEnvelope<A, RouteStanza>
            + ToEnvelope<A, DeliverToAvailable>
            + ToEnvelope<A, PresenceToDomain>
            + ToEnvelope<A, DeliverToResource>
            + ToEnvelope<A, PushToUser>
            + ToEnvelope<A, SendPresenceOf>
            + ToEnvelope<A, SendUnavailableOf>
            + ToEnvelope<A, BlockListChanged>
            + ToEnvelope<A, PrivacyChanged>,
    {
        RouterHandle {
            route_stanza: router.clone().recipient(),
            deliver_to_available: router.clone().recipient(),
            presence_to_domain: router.clone().recipient(),
            deliver_to_resource: router.clone().recipient(),
            push_to_user: router.clone().recipient(),
            send_presence_of: router.clone().recipient(),
            send_unavailable_of: router.clone().recipient(),
            block_list_changed: router.clone().recipient(),
            privacy_changed: router.clone().recipient(),
        }
    }

    /// Send `msg` without waiting (`Addr::do_send`: queued even when the mailbox is full).
    pub fn do_send<M: ToRouter>(&self, msg: M) {
        M::recipient(self).do_send(msg);
    }
}

/// A message a [`RouterHandle`] carries.
pub trait ToRouter: Message<Result = ()> + Send + Sized + 'static {
    fn recipient(handle: &RouterHandle) -> &Recipient<Self>;
}

macro_rules! to_router {
    ($($message:ident => $field:ident),* $(,)?) => {$(
        impl ToRouter for $message {
            fn recipient(handle: &RouterHandle) -> &Recipient<Self> {
                &handle.$field
            }
        }
    )*};
}

to_router! {
    RouteStanza => route_stanza,
    DeliverToAvailable => deliver_to_available,
    PresenceToDomain => presence_to_domain,
    DeliverToResource => deliver_to_resource,
    PushToUser => push_to_user,
    SendPresenceOf => send_presence_of,
    SendUnavailableOf => send_unavailable_of,
    BlockListChanged => block_list_changed,
    PrivacyChanged => privacy_changed,
}
