//! Presence subscriptions (RFC 6121 §3) as pure functions of (state, stanza).
//!
//! Every roster item carries a [`SubState`]: one of the nine states of RFC 6121 Appendix A.1
//! plus the pre-approval flag of §3.4. [`outbound`] applies a subscription stanza the owner
//! sends (the "user's server" steps of §3.x.2, table A.2) and [`inbound`] one that reaches the
//! owner (the "contact's server" steps of §3.x.3, table A.3). Each returns the next state and
//! what the caller must do: persist, push the roster item, route or deliver the stanza, answer
//! on the owner's behalf, send presence. Nothing here stores, routes or reads a clock.
//!
//! A contact with no roster item is [`SubState::default()`]; the caller creates and removes
//! items. States reachable from the default always satisfy: `pending_out` only without To,
//! `pending_in` only without From, `approved` only without From and without `pending_in`.
//!
//! ```
//! use proto::im::{inbound, outbound, PresenceToSend, SubState, Subscription, SubscriptionKind};
//!
//! // Juliet asks to see Romeo's presence: her roster shows ask='subscribe'.
//! let juliet = outbound(SubState::default(), SubscriptionKind::Subscribe);
//! assert!(juliet.route && juliet.push && juliet.state.pending_out);
//!
//! // Romeo's server notes the request (no roster item yet) and delivers it.
//! let romeo = inbound(SubState::default(), SubscriptionKind::Subscribe);
//! assert!(romeo.deliver && romeo.changed && !romeo.push && romeo.state.pending_in);
//!
//! // Romeo approves: Juliet may now see his presence, which his server sends her.
//! let romeo = outbound(romeo.state, SubscriptionKind::Subscribed);
//! assert_eq!(romeo.state.subscription, Subscription::From);
//! assert_eq!(romeo.send_presence, Some(PresenceToSend::Available));
//!
//! let juliet = inbound(juliet.state, SubscriptionKind::Subscribed);
//! assert_eq!(juliet.state.subscription, Subscription::To);
//! assert!(juliet.deliver && !juliet.state.pending_out);
//! ```

/// RFC 6121 §2.1.2.5 subscription of a roster item, from the roster owner's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Subscription {
    /// Neither sees the other's presence.
    #[default]
    None,
    /// The owner sees the contact's presence.
    To,
    /// The contact sees the owner's presence.
    From,
    /// Both see each other's presence.
    Both,
}

impl Subscription {
    /// The `subscription` attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            Subscription::None => "none",
            Subscription::To => "to",
            Subscription::From => "from",
            Subscription::Both => "both",
        }
    }

    /// Parses a `subscription` attribute value. `remove` is a roster set instruction, not a
    /// state, and gives `None` like any other unknown value.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "none" => Some(Subscription::None),
            "to" => Some(Subscription::To),
            "from" => Some(Subscription::From),
            "both" => Some(Subscription::Both),
            _ => None,
        }
    }

    /// The owner is subscribed to the contact's presence (To or Both).
    pub fn has_to(self) -> bool {
        matches!(self, Subscription::To | Subscription::Both)
    }

    /// The contact is subscribed to the owner's presence (From or Both).
    pub fn has_from(self) -> bool {
        matches!(self, Subscription::From | Subscription::Both)
    }

    fn from_flags(to: bool, from: bool) -> Self {
        match (to, from) {
            (false, false) => Subscription::None,
            (true, false) => Subscription::To,
            (false, true) => Subscription::From,
            (true, true) => Subscription::Both,
        }
    }

    fn with_to(self, to: bool) -> Self {
        Self::from_flags(to, self.has_from())
    }

    fn with_from(self, from: bool) -> Self {
        Self::from_flags(self.has_to(), from)
    }
}

/// The full state of one roster item: RFC 6121 Appendix A.1's states plus pre-approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubState {
    pub subscription: Subscription,
    /// The owner asked to subscribe and the contact has not answered: `ask='subscribe'` in the
    /// owner's roster ("Pending Out").
    pub pending_out: bool,
    /// The contact asked to subscribe and the owner has not answered ("Pending In"). Not shown
    /// in the roster, and kept even when the owner has no roster item for the contact (§3.1.3:
    /// the server MUST NOT create one for a request alone).
    pub pending_in: bool,
    /// The owner pre-approved a future request from the contact (§3.4): `approved='true'`.
    pub approved: bool,
}

/// The roster attributes an item shows (RFC 6121 §2.1.2): `subscription`, `ask` and whether
/// `approved='true'` is present. Pending In shows nothing (A.1: "None + Pending In" is
/// `subscription='none'`, "To + Pending In" is `subscription='to'`).
pub fn roster_attrs(state: SubState) -> (&'static str, Option<&'static str>, bool) {
    let ask = state.pending_out.then_some("subscribe");
    (state.subscription.as_str(), ask, state.approved)
}

/// The four presence types that manage subscriptions (RFC 6121 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum SubscriptionKind {
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
}

impl SubscriptionKind {
    /// Parses a presence `type` attribute; other types (available, unavailable, probe, error)
    /// give `None`.
    pub fn parse(type_attr: &str) -> Option<Self> {
        match type_attr {
            "subscribe" => Some(SubscriptionKind::Subscribe),
            "subscribed" => Some(SubscriptionKind::Subscribed),
            "unsubscribe" => Some(SubscriptionKind::Unsubscribe),
            "unsubscribed" => Some(SubscriptionKind::Unsubscribed),
            _ => None,
        }
    }

    /// The presence `type` attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionKind::Subscribe => "subscribe",
            SubscriptionKind::Subscribed => "subscribed",
            SubscriptionKind::Unsubscribe => "unsubscribe",
            SubscriptionKind::Unsubscribed => "unsubscribed",
        }
    }
}

/// Presence the owner's server sends to the contact, from each of the owner's available
/// resources, because the contact gained or lost its subscription to the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum PresenceToSend {
    /// The owner's current presence, sent after the stanza that granted the subscription
    /// (§3.1.5, §3.4).
    Available,
    /// `type='unavailable'`. When the owner's own `unsubscribed` causes it, it goes before that
    /// stanza is routed, while the contact is still subscribed (§3.2.2); after an inbound
    /// `unsubscribe` it follows the delivery (§3.3.3 item 3).
    Unavailable,
}

/// What the owner's server does with a subscription stanza the owner sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outbound {
    pub state: SubState,
    /// The state differs from the one given: persist it.
    pub changed: bool,
    /// What the roster shows ([`roster_attrs`]) differs: push the item to the owner's
    /// interested resources (and create it if it did not exist).
    pub push: bool,
    /// Route the stanza to the contact's bare JID, `from` set to the owner's bare JID.
    pub route: bool,
    /// Presence to send from the owner's available resources to the contact; see
    /// [`PresenceToSend`] for its order relative to the routed stanza.
    pub send_presence: Option<PresenceToSend>,
}

impl Outbound {
    fn new(
        before: SubState,
        state: SubState,
        route: bool,
        send_presence: Option<PresenceToSend>,
    ) -> Self {
        Outbound {
            state,
            changed: state != before,
            push: roster_attrs(state) != roster_attrs(before),
            route,
            send_presence,
        }
    }
}

/// What the owner's server does with a subscription stanza from the contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inbound {
    pub state: SubState,
    /// The state differs from the one given: persist it. This includes Pending In alone,
    /// which no roster push shows.
    pub changed: bool,
    /// What the roster shows ([`roster_attrs`]) differs: push the item to the owner's
    /// interested resources (and create it if it did not exist).
    pub push: bool,
    /// Deliver the stanza to the owner: a `subscribe` to the available resources, and while
    /// `state.pending_in` stays set again whenever a resource becomes available (§3.1.3);
    /// the other kinds to the interested resources (§3.1.6, §3.2.3, §3.3.3).
    pub deliver: bool,
    /// Answer the contact on the owner's behalf with this type, from the owner's bare JID
    /// (§3.1.3 when the contact is already subscribed, §3.4 when the owner pre-approved).
    pub auto_reply: Option<SubscriptionKind>,
    /// Presence to send from the owner's available resources to the contact, after the
    /// auto-reply if there is one.
    pub send_presence: Option<PresenceToSend>,
}

impl Inbound {
    fn new(
        before: SubState,
        state: SubState,
        deliver: bool,
        auto_reply: Option<SubscriptionKind>,
        send_presence: Option<PresenceToSend>,
    ) -> Self {
        Inbound {
            state,
            changed: state != before,
            push: roster_attrs(state) != roster_attrs(before),
            deliver,
            auto_reply,
            send_presence,
        }
    }

    fn ignore(state: SubState) -> Self {
        Self::new(state, state, false, None, None)
    }
}

/// The owner sends `kind` to the contact: RFC 6121 §3.1.2, §3.1.5, §3.2.2, §3.3.2, §3.4.2 and
/// table A.2 (the user's server).
pub fn outbound(state: SubState, kind: SubscriptionKind) -> Outbound {
    let s = state;
    match kind {
        // A.2.1: routed from every state (the contact's server answers even when the owner is
        // already subscribed, which resynchronises both ends); a state without To gains
        // Pending Out.
        SubscriptionKind::Subscribe => {
            let next = if s.subscription.has_to() {
                s
            } else {
                SubState {
                    pending_out: true,
                    ..s
                }
            };
            Outbound::new(s, next, true, None)
        }
        // A.2.2, §3.3.2: routed from every state; To and Pending Out end.
        SubscriptionKind::Unsubscribe => {
            let next = SubState {
                subscription: s.subscription.with_to(false),
                pending_out: false,
                ..s
            };
            Outbound::new(s, next, true, None)
        }
        SubscriptionKind::Subscribed => {
            if s.subscription.has_from() {
                // A.2.3 From, From + Pending Out, Both; §3.4.2 item 1: silently ignored.
                Outbound::new(s, s, false, None)
            } else if s.pending_in {
                // A.2.3 None + Pending In, None + Pending Out+In, To + Pending In; §3.1.5: the
                // approval is routed, then the owner's presence follows.
                let next = SubState {
                    subscription: s.subscription.with_from(true),
                    pending_in: false,
                    approved: false,
                    ..s
                };
                Outbound::new(s, next, true, Some(PresenceToSend::Available))
            } else {
                // A.2.3 None, None + Pending Out, To, footnote: §3.4.2 items 3 and 4, a
                // pre-approval, which MUST NOT be routed.
                let next = SubState {
                    approved: true,
                    ..s
                };
                Outbound::new(s, next, false, None)
            }
        }
        SubscriptionKind::Unsubscribed => {
            if s.subscription.has_from() {
                // A.2.4 From, From + Pending Out, Both; §3.2.2: unavailable from the owner's
                // resources, then the cancellation.
                let next = SubState {
                    subscription: s.subscription.with_from(false),
                    pending_in: false,
                    approved: false,
                    ..s
                };
                Outbound::new(s, next, true, Some(PresenceToSend::Unavailable))
            } else if s.pending_in {
                // A.2.4 None + Pending In, None + Pending Out+In, To + Pending In: the request
                // is declined (§3.1.4). The contact never had the owner's presence, so no
                // unavailable goes with it.
                let next = SubState {
                    pending_in: false,
                    approved: false,
                    ..s
                };
                Outbound::new(s, next, true, None)
            } else {
                // A.2.4 None, None + Pending Out, To, footnote: a pre-approval, if any, is
                // cancelled; §3.2.2: SHOULD NOT be routed.
                let next = SubState {
                    approved: false,
                    ..s
                };
                Outbound::new(s, next, false, None)
            }
        }
    }
}

/// The contact's `kind` reaches the owner's server: RFC 6121 §3.1.3, §3.1.6, §3.2.3, §3.3.3,
/// §3.4 and table A.3 (the contact's server, seen from the receiving account).
pub fn inbound(state: SubState, kind: SubscriptionKind) -> Inbound {
    let s = state;
    match kind {
        SubscriptionKind::Subscribe => {
            if s.subscription.has_from() {
                // A.3.1 From, From + Pending Out, Both ("no *"); §3.1.3 item 2: the server
                // MUST auto-reply `subscribed` and not bother the owner.
                Inbound::new(s, s, false, Some(SubscriptionKind::Subscribed), None)
            } else if s.approved {
                // §3.4: pre-approved, so the server approves on the owner's behalf and the
                // pre-approval is used up.
                let next = SubState {
                    subscription: s.subscription.with_from(true),
                    pending_in: false,
                    approved: false,
                    ..s
                };
                Inbound::new(
                    s,
                    next,
                    false,
                    Some(SubscriptionKind::Subscribed),
                    Some(PresenceToSend::Available),
                )
            } else if s.pending_in {
                // A.3.1 None + Pending In, None + Pending Out+In, To + Pending In: a duplicate
                // request is not delivered again.
                Inbound::ignore(s)
            } else {
                // A.3.1 None, None + Pending Out, To; §3.1.3 items 3 and 4.
                let next = SubState {
                    pending_in: true,
                    ..s
                };
                Inbound::new(s, next, true, None, None)
            }
        }
        SubscriptionKind::Subscribed => {
            if s.pending_out {
                // A.3.3 None + Pending Out, None + Pending Out+In, From + Pending Out; §3.1.6.
                let next = SubState {
                    subscription: s.subscription.with_to(true),
                    pending_out: false,
                    ..s
                };
                Inbound::new(s, next, true, None, None)
            } else {
                // A.3.3 every other state; §3.1.6: no request is pending, silently ignored.
                Inbound::ignore(s)
            }
        }
        SubscriptionKind::Unsubscribe => {
            if s.subscription.has_from() {
                // A.3.2 From, From + Pending Out, Both; §3.3.3: deliver, push, and
                // unavailable from the owner's resources to the former subscriber.
                let next = SubState {
                    subscription: s.subscription.with_from(false),
                    pending_in: false,
                    ..s
                };
                Inbound::new(s, next, true, None, Some(PresenceToSend::Unavailable))
            } else if s.pending_in {
                // A.3.2 None + Pending In, None + Pending Out+In, To + Pending In: the contact
                // withdrew its request (§3.3.3, note). It never had the owner's presence.
                let next = SubState {
                    pending_in: false,
                    ..s
                };
                Inbound::new(s, next, true, None, None)
            } else {
                // A.3.2 None, None + Pending Out, To; §3.3.3: silently ignored.
                Inbound::ignore(s)
            }
        }
        SubscriptionKind::Unsubscribed => {
            if s.subscription.has_to() || s.pending_out {
                // A.3.4 None + Pending Out, None + Pending Out+In, To, To + Pending In,
                // From + Pending Out, Both; §3.2.3: a refusal or a cancellation.
                let next = SubState {
                    subscription: s.subscription.with_to(false),
                    pending_out: false,
                    ..s
                };
                Inbound::new(s, next, true, None, None)
            } else {
                // A.3.4 None, None + Pending In, From; §3.2.3: silently ignored.
                Inbound::ignore(s)
            }
        }
    }
}
