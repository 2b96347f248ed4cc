//! Routing as a pure function: where a stanza goes, per RFC 6120 §10 (server rules for
//! processing XML stanzas) and RFC 6121 §8.5 (rules for a local user's JIDs), decided over a
//! read-only [`RoutingView`] of the routing table. No actor, socket, storage or clock: the
//! Router (`crate::router`) builds the view, calls [`decide`] and executes each [`Delivery`]
//! (to a session here, over a NodeLink to another node, over s2s, to a component, to the
//! account's shard). Unit tests, case by case against the RFC's tables, are in `tests.rs`.
//!
//! Where the RFC leaves a choice, the choice is the one the server always made (the
//! integration suite is the contract); the doc of each rule says which.
//!
//! Beside the decision, the types that senders share with the Router, so that they need not
//! depend on the Router actor: what it sends a session and what a session hands over on
//! resumption ([`session`]), and what the account shards send it ([`to_router`]).

pub mod session;
#[cfg(test)]
mod tests;
pub mod to_router;

use proto::element::Element;
use proto::error::StanzaErrorCondition;
use proto::im::SubscriptionKind;
use proto::jid::Jid;

/// A cluster member's id (`crate::cluster::NodeId`; repeated here so that this module
/// depends on nothing in the crate).
pub type NodeId = u64;

/// Where a bound resource is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// A session on this node.
    Here,
    /// A session on another cluster node (a single node never has one: a cluster of one).
    Node(NodeId),
}

/// One bound resource of an account, as the routing table knows it.
#[derive(Debug, Clone, Copy)]
pub struct Resource<'a> {
    pub jid: &'a Jid,
    pub at: Location,
    /// Its presence priority while available; `None` before its initial presence or after
    /// unavailable (RFC 6121 §4.7.2.3: only available resources count for bare-JID routing).
    pub priority: Option<i8>,
}

/// What routing reads: the routing table (this node's sessions and, in a cluster, the other
/// nodes' routes), the served domains, the registered components, and the accounts.
pub trait RoutingView {
    /// A domain this server hosts accounts for.
    fn is_local_domain(&self, domain: &str) -> bool;
    /// A component is registered for this domain (a service such as `conference.`).
    fn is_component(&self, domain: &str) -> bool;
    /// Federation is running: stanzas for other domains can go out over s2s.
    fn federation(&self) -> bool;
    /// The account exists. Must not answer `false` when it cannot tell (a storage error):
    /// a real account must never look absent to senders.
    fn account_exists(&self, bare: &Jid) -> bool;
    /// IQs in this namespace to an account's bare JID are answered by the account's shard
    /// on the user's behalf (vCard, last activity, ...).
    fn account_namespace(&self, ns: &str) -> bool;
    /// The bound resources of `bare`: this node's first, then other nodes', each in the
    /// order the table keeps them.
    fn resources<'a>(&'a self, bare: &Jid) -> impl Iterator<Item = Resource<'a>> + 'a;

    /// The bound resource `full`, wherever it is.
    fn resource<'a>(&'a self, full: &Jid) -> Option<Resource<'a>> {
        self.resources(&full.to_bare()).find(|r| r.jid == full)
    }
}

/// How a delivered stanza is addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Address {
    /// `to` is the receiving resource's full JID.
    Full,
    /// `to` is the account's bare JID (RFC 6121 §8.5.2: a stanza to the bare JID reaches the
    /// resources as it was addressed; also a chat to an absent resource, §8.5.3.2.1).
    Bare,
}

/// One thing to do with a routed stanza. [`decide`] returns a list: several resources, or
/// exactly one of the other variants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// To the session of `resource` on this node.
    Local { resource: Jid, address: Address },
    /// To the session of `resource` on cluster node `node`, over the NodeLink.
    Remote {
        node: NodeId,
        resource: Jid,
        address: Address,
    },
    /// Out over federation to the `to` domain (RFC 6120 §10.4).
    S2s,
    /// To the component registered for `domain` (any JID at it).
    Component { domain: String },
    /// No resource takes it: the account's shard stores it (XEP-0160, RFC 6121 §8.5.2.2.1).
    Offline,
    /// An IQ the account's shard answers on the user's behalf (`exists`: false for an
    /// account that does not exist, answered `service-unavailable` after the same hop).
    AccountIq { exists: bool },
    /// An inbound subscription stanza for the recipient's roster shard (RFC 6121 §3).
    Subscription(SubscriptionKind),
    /// A probe from a federated sender, answered by the recipient's roster shard (RFC 6121
    /// §4.3.2); local probes were answered at the sender's login.
    RemoteProbe,
    /// An error reply to the sender with this condition (never for an error stanza).
    Bounce(StanzaErrorCondition),
    /// Nothing: silently ignored.
    Drop,
}

/// Where `stanza` from `from` to `to` goes. `to` is the stanza's prepared `to`; `from` is
/// stamped by the sender's session or checked by s2s.
pub fn decide(view: &impl RoutingView, from: &Jid, to: &Jid, stanza: &Element) -> Vec<Delivery> {
    if view.is_component(to.domain()) {
        return vec![Delivery::Component {
            domain: to.domain().to_owned(),
        }];
    }
    if !view.is_local_domain(to.domain()) {
        // RFC 6120 §10.4: federation, or remote-server-not-found without it (and for
        // non-local senders: this server relays nothing between two other domains). Our
        // components are local senders: a room's stanzas reach its remote occupants.
        let local_sender = view.is_local_domain(from.domain()) || view.is_component(from.domain());
        if !view.federation() || !local_sender {
            return bounce(stanza, StanzaErrorCondition::RemoteServerNotFound);
        }
        return vec![Delivery::S2s];
    }
    if to.local().is_none() {
        // RFC 6120 §10.3: to the server itself. IQs for the server were answered by the
        // sender's session; what reaches here has no handler. Messages and presence to a
        // domain are not for anyone (§10.3.3 lets the server ignore them).
        if is_request(stanza) {
            return bounce(stanza, StanzaErrorCondition::ServiceUnavailable);
        }
        return vec![Delivery::Drop];
    }
    let bare = to.to_bare();
    if !view.account_exists(&bare) {
        return unknown_account(view, to, stanza);
    }
    if to.resource().is_some() {
        // RFC 6121 §8.5.3.1: the resource is bound, here or on another node.
        if let Some(r) = view.resource(to) {
            return vec![target(&r, Address::Full)];
        }
        return absent_resource(view, from, &bare, stanza);
    }
    to_bare(view, from, &bare, stanza)
}

/// RFC 6121 §8.5.3.2: to an existing account's full JID that has no session (also when the
/// session left while a stanza was on its way to it from another node).
pub fn absent_resource(
    view: &impl RoutingView,
    from: &Jid,
    bare: &Jid,
    stanza: &Element,
) -> Vec<Delivery> {
    match (stanza.name.as_str(), stanza.attr("type")) {
        // §8.5.3.2.1: a chat goes to the bare JID's most available resources, or is stored.
        ("message", Some("chat")) => to_bare(view, from, bare, stanza),
        // §8.5.3.2.1: normal (also without a type, RFC 6121 §5.2.2) and groupchat are
        // answered service-unavailable, never delivered to another resource nor stored:
        // the sender learns that this resource is gone.
        ("message", None | Some("normal") | Some("groupchat")) => {
            bounce(stanza, StanzaErrorCondition::ServiceUnavailable)
        }
        // §8.5.3.2.1: headline and error are silently ignored.
        ("message", _) => vec![Delivery::Drop],
        // §8.5.3.2.2: subscription stanzas are handled as if sent to the bare JID.
        ("presence", Some("subscribe" | "subscribed" | "unsubscribe" | "unsubscribed")) => {
            to_bare(view, from, bare, stanza)
        }
        // §8.5.3.2.2: other presence (available, unavailable, probe) is ignored.
        ("presence", _) => vec![Delivery::Drop],
        // §8.5.3.2.3 (IQ): service-unavailable; a response is never answered (RFC 6120
        // §8.2.3).
        _ if is_get_or_set(stanza) => bounce(stanza, StanzaErrorCondition::ServiceUnavailable),
        _ => vec![Delivery::Drop],
    }
}

/// RFC 6121 §8.5.1: no such account. Wherever the RFC leaves a choice, the answer is the one
/// an existing account without an available resource gets, so that a sender cannot tell the
/// two apart (no user enumeration): the same condition, the same type, the same way through
/// the node.
///
/// - presence (probes and subscription requests included): ignored, as for an existing
///   account whose user is not subscribed to or receiving presence from the sender;
/// - message: headline and error ignored (§8.5.2.2.1 / §8.5.3.2.1 for an existing account);
///   chat, normal and groupchat `service-unavailable` (an existing account stores chat and
///   normal to its bare JID, which cannot be imitated; over its quota, or to an absent
///   resource, it also answers `service-unavailable`);
/// - IQ get/set: `service-unavailable`; those in the namespaces the account's shard answers
///   (vCard, last activity, roster, ...) go to the shard like an existing account's, marked
///   unknown, and come back `service-unavailable` after the same hop;
/// - IQ result/error: ignored (RFC 6120 §8.2.3: a response is never answered).
fn unknown_account(view: &impl RoutingView, to: &Jid, stanza: &Element) -> Vec<Delivery> {
    match (stanza.name.as_str(), stanza.attr("type")) {
        ("presence", _) => vec![Delivery::Drop],
        ("message", Some("headline" | "error")) => vec![Delivery::Drop],
        ("message", _) => bounce(stanza, StanzaErrorCondition::ServiceUnavailable),
        _ if is_get_or_set(stanza) => {
            if to.is_bare() && in_account_namespace(view, stanza) {
                vec![Delivery::AccountIq { exists: false }]
            } else {
                bounce(stanza, StanzaErrorCondition::ServiceUnavailable)
            }
        }
        _ => vec![Delivery::Drop],
    }
}

/// RFC 6121 §8.5.2: to an existing account's bare JID.
fn to_bare(view: &impl RoutingView, from: &Jid, bare: &Jid, stanza: &Element) -> Vec<Delivery> {
    match stanza.name.as_str() {
        "message" => match stanza.attr("type").unwrap_or("normal") {
            // §8.5.2.1.2 / §8.5.2.2.2: a groupchat to a user's bare JID is an error.
            "groupchat" => bounce(stanza, StanzaErrorCondition::ServiceUnavailable),
            // An error goes to the most available resources, never stored (§8.5.2.2.1).
            "error" => {
                let top = top_priority(view, bare);
                view.resources(bare)
                    .filter(|r| r.priority.is_some() && r.priority == top)
                    .map(|r| target(&r, Address::Full))
                    .collect()
            }
            // §8.5.2.1.1: a headline goes to every available resource with a non-negative
            // priority; §8.5.2.2.1: without one it is ignored, never stored. This node's
            // resources get it addressed to their full JID, other nodes' as addressed (what
            // the server always did: clients accept both).
            "headline" => view
                .resources(bare)
                .filter(|r| r.priority.is_some_and(|p| p >= 0))
                .map(|r| match r.at {
                    Location::Here => target(&r, Address::Full),
                    Location::Node(_) => target(&r, Address::Bare),
                })
                .collect(),
            // chat, normal and any other type (RFC 6121 §5.2.2: unknown types are normal).
            // §8.5.2.1.1: the available resources with the highest non-negative priority,
            // all of them on a tie; §8.5.2.2.1: none of them, stored offline.
            _ => {
                let top = top_priority(view, bare);
                let targets: Vec<Delivery> = view
                    .resources(bare)
                    .filter(|r| r.priority.is_some() && r.priority == top)
                    .map(|r| target(&r, Address::Bare))
                    .collect();
                if targets.is_empty() {
                    vec![Delivery::Offline]
                } else {
                    targets
                }
            }
        },
        "presence" => {
            if let Some(kind) = stanza.attr("type").and_then(SubscriptionKind::parse) {
                // §8.5.2.1.2 / §3: subscription state belongs to the recipient's roster shard.
                return vec![Delivery::Subscription(kind)];
            }
            if stanza.attr("type") == Some("probe") {
                // §8.5.2.1.3 / §4.3: probes are answered by the roster shards on the user's
                // behalf: a local contact's at its login, a federated one's when it arrives.
                if view.is_local_domain(from.domain()) {
                    return vec![Delivery::Drop];
                }
                return vec![Delivery::RemoteProbe];
            }
            // §8.5.2.1.3: other presence to every available resource.
            view.resources(bare)
                .filter(|r| r.priority.is_some())
                .map(|r| target(&r, Address::Bare))
                .collect()
        }
        // §8.5.2.1.4 / §8.5.2.2.3: IQs to another account's bare JID are answered by the
        // server on its behalf (its shard), or service-unavailable; responses are ignored.
        _ if is_get_or_set(stanza) => {
            if in_account_namespace(view, stanza) {
                vec![Delivery::AccountIq { exists: true }]
            } else {
                bounce(stanza, StanzaErrorCondition::ServiceUnavailable)
            }
        }
        _ => vec![Delivery::Drop],
    }
}

/// The highest non-negative priority among the account's available resources, on any node
/// (RFC 6121 §8.5.2.1.1: resources with a negative priority never get bare-JID messages).
fn top_priority(view: &impl RoutingView, bare: &Jid) -> Option<i8> {
    view.resources(bare)
        .filter_map(|r| r.priority)
        .filter(|p| *p >= 0)
        .max()
}

fn target(r: &Resource<'_>, address: Address) -> Delivery {
    match r.at {
        Location::Here => Delivery::Local {
            resource: r.jid.clone(),
            address,
        },
        Location::Node(node) => Delivery::Remote {
            node,
            resource: r.jid.clone(),
            address,
        },
    }
}

/// An error reply, unless `stanza` is an error itself (RFC 6120 §8.3.1: an error is never
/// answered with an error).
fn bounce(stanza: &Element, condition: StanzaErrorCondition) -> Vec<Delivery> {
    if stanza.attr("type") == Some("error") {
        return vec![Delivery::Drop];
    }
    vec![Delivery::Bounce(condition)]
}

/// An IQ get or set (RFC 6120 §8.2.3: a request that must be answered).
fn is_request(stanza: &Element) -> bool {
    stanza.name == "iq" && matches!(stanza.attr("type"), Some("get" | "set"))
}

/// A request by its type alone (what is not a message or a presence is an IQ by then: the
/// stream reader refuses other stanza names).
fn is_get_or_set(stanza: &Element) -> bool {
    matches!(stanza.attr("type"), Some("get" | "set"))
}

fn in_account_namespace(view: &impl RoutingView, stanza: &Element) -> bool {
    stanza
        .children()
        .next()
        .is_some_and(|p| view.account_namespace(&p.ns))
}
