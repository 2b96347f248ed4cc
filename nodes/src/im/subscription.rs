//! Presence subscriptions (RFC 6121 §3): the state machine is `proto::im`; this applies it to
//! stored roster items and carries out what it decides.

use proto::element::Element;
use proto::im::{self, PresenceToSend, SubState, Subscription, SubscriptionKind};
use proto::jid::Jid;
use proto::ns;
use storage::rosters::RosterItem;

use super::messages::{InboundSubscription, OutboundSubscription};
use super::roster::{item_element, state_of};
use super::{cap_tripped, AccountShard};
use crate::route::to_router::{
    DeliverToAvailable, DeliverToResource, RouteStanza, SendPresenceOf, SendUnavailableOf,
};
use proto::error::{stanza_error_reply, StanzaErrorCondition as Cond};

impl AccountShard {
    /// One key lookup, whatever the number of requests pending.
    pub(super) fn has_pending_in(&self, user: &Jid, contact: &Jid) -> bool {
        self.rosters
            .has_pending_in(&user.to_string(), &contact.to_string())
            .unwrap_or(false)
    }

    fn load_state(&self, user: &Jid, contact: &Jid) -> (Option<RosterItem>, SubState) {
        let item = self
            .rosters
            .item(&user.to_string(), &contact.to_string())
            .ok()
            .flatten();
        let state = state_of(item.as_ref(), self.has_pending_in(user, contact));
        (item, state)
    }

    /// Store `state` for `contact` in `user`'s roster and push the item if it shows.
    /// A pending inbound request alone does not put the contact on the roster (RFC 6121
    /// §3.1.3); it is kept as its sender and status text instead (all that is redelivered).
    fn store_state(
        &mut self,
        user: &Jid,
        contact: &Jid,
        item: Option<RosterItem>,
        before: SubState,
        after: SubState,
        request: Option<&Element>,
    ) {
        let key = user.to_string();
        let contact_key = contact.to_string();
        if after.pending_in != before.pending_in {
            let stored = match (after.pending_in, request) {
                (true, Some(req)) => {
                    self.pending_put(&key, &contact_key, request_status(req).as_deref())
                }
                (true, None) => Ok(()),
                (false, _) => self.pending_remove(&key, &contact_key).map(|_| ()),
            };
            if let Err(e) = stored {
                tracing::error!(error = %e, "storing a pending subscription request failed");
            }
        }
        if item.is_none() && !shows(&after) {
            return;
        }
        if item.is_some() && shown(&after) == shown(&before) {
            return;
        }
        let mut updated = item.unwrap_or_else(|| RosterItem {
            jid: contact_key,
            name: None,
            groups: Vec::new(),
            subscription: String::new(),
            pending_out: false,
            pending_in: false,
            approved: false,
        });
        updated.subscription = after.subscription.as_str().to_string();
        updated.pending_out = after.pending_out;
        updated.approved = after.approved;
        match self.roster_item_put(&key, &updated) {
            Ok(version) => self.push(user, item_element(&updated), version),
            Err(e) => tracing::error!(error = %e, "storing a roster item failed"),
        }
    }

    /// The user sent `kind` to `contact` (RFC 6121 §3.x.2, the user's server).
    pub(super) fn outbound_subscription(&mut self, msg: OutboundSubscription) {
        let OutboundSubscription {
            user,
            contact,
            kind,
            mut stanza,
        } = msg;
        let (item, before) = self.load_state(&user, &contact);
        let out = im::outbound(before, kind);
        if item.is_none() && shows(&out.state) && self.roster_full(&user) {
            // RFC 6121 §3.1.2 (and §3.1.5, §3.4 for approvals) would add the contact to
            // the roster; a full roster refuses that as a roster set would (not-allowed,
            // `im.max_roster_items`), and the stanza is not routed.
            let limit = self.limits.max_roster_items;
            let text = cap_tripped(&mut self.cap_refusals, &user, "max_roster_items", limit);
            let mut bounce = stanza_error_reply(&stanza, Cond::NotAllowed, Some(&text));
            bounce
                .children
                .retain(|n| matches!(n, proto::element::Node::Element(e) if e.name == "error"));
            if let Some(to) = stanza.attr("from").and_then(|f| Jid::parse(f).ok()) {
                self.router
                    .do_send(DeliverToResource { to, stanza: bounce });
            }
            return;
        }
        self.store_state(&user, &contact, item, before, out.state, None);
        if out.route {
            // RFC 6121 §3.1.2: the request carries the user's bare JID.
            stanza.set_attr("from", user.to_string());
            stanza.set_attr("to", contact.to_string());
            self.route_subscription(&user, &contact, kind, stanza, out.send_presence);
        } else {
            self.send_presence(&user, &contact, out.send_presence);
        }
    }

    /// `contact`'s `kind` reached local account `user` (RFC 6121 §3.x.3).
    pub(super) fn inbound_subscription(&mut self, msg: InboundSubscription) {
        let InboundSubscription {
            user,
            contact,
            kind,
            mut stanza,
            sender_presence,
        } = msg;
        if self.blocks(&user, &contact) {
            // XEP-0191 §3.5: presence stanzas from a blocked contact go nowhere.
            return;
        }
        stanza.set_attr("from", contact.to_string());
        stanza.set_attr("to", user.to_string());
        if sender_presence == Some(PresenceToSend::Unavailable) {
            self.send_presence(&contact, &user, sender_presence);
        }
        let (item, before) = self.load_state(&user, &contact);
        let inb = im::inbound(before, kind);
        if inb.state.pending_in && !before.pending_in && self.pending_full(&user) {
            // A new request the account has no room for: bounce it (RFC 6121 §3.1.3 lets the
            // contact's server refuse; resource-constraint, type wait, RFC 6120 §8.3.3.18:
            // there is room again once the user answers some). Nothing is stored, so a
            // domain flooding one account with requests from ever new JIDs stores at most
            // the cap.
            let limit = self.limits.max_pending_subscriptions;
            let text = cap_tripped(
                &mut self.cap_refusals,
                &user,
                "max_pending_subscriptions",
                limit,
            );
            let mut bounce = stanza_error_reply(&stanza, Cond::ResourceConstraint, Some(&text));
            bounce
                .children
                .retain(|n| matches!(n, proto::element::Node::Element(e) if e.name == "error"));
            self.router.do_send(RouteStanza {
                from: user.clone(),
                to: contact.clone(),
                stanza: bounce,
            });
            return;
        }
        self.store_state(&user, &contact, item, before, inb.state, Some(&stanza));
        if inb.deliver {
            self.router.do_send(DeliverToAvailable {
                to: user.clone(),
                stanza,
            });
        }
        if sender_presence == Some(PresenceToSend::Available) {
            self.send_presence(&contact, &user, sender_presence);
        }
        if let Some(reply) = inb.auto_reply {
            let answer = Element::new("presence", ns::CLIENT)
                .with_attr("type", reply.as_str())
                .with_attr("from", user.to_string())
                .with_attr("to", contact.to_string());
            self.route_subscription(&user, &contact, reply, answer, inb.send_presence);
        } else {
            self.send_presence(&user, &contact, inb.send_presence);
        }
    }

    /// Deliver a subscription stanza from `user` to `contact`, with `user`'s presence change
    /// that goes with it: unavailable before an `unsubscribed` (RFC 6121 §3.2.2), presence
    /// after a `subscribed` (§3.1.5). A local contact's shard does both in that order; for
    /// a remote contact the router carries them.
    pub(super) fn route_subscription(
        &mut self,
        user: &Jid,
        contact: &Jid,
        kind: SubscriptionKind,
        stanza: Element,
        presence: Option<PresenceToSend>,
    ) {
        let local = self.shards.as_ref().filter(|_| self.is_local(contact));
        match local {
            Some(shards) => shards.tell(
                contact,
                InboundSubscription {
                    user: contact.clone(),
                    contact: user.clone(),
                    kind,
                    stanza,
                    sender_presence: presence,
                },
            ),
            None => {
                if presence == Some(PresenceToSend::Unavailable) {
                    self.send_presence(user, contact, presence);
                }
                self.router.do_send(RouteStanza {
                    from: user.clone(),
                    to: contact.clone(),
                    stanza,
                });
                if presence == Some(PresenceToSend::Available) {
                    self.send_presence(user, contact, presence);
                }
            }
        }
    }

    /// `user`'s presence (or its end) for a contact that gained or lost the subscription.
    fn send_presence(&self, user: &Jid, contact: &Jid, what: Option<PresenceToSend>) {
        match what {
            Some(PresenceToSend::Available) => self.router.do_send(SendPresenceOf {
                contact: user.clone(),
                to: contact.clone(),
            }),
            Some(PresenceToSend::Unavailable) => self.router.do_send(SendUnavailableOf {
                contact: user.clone(),
                to: contact.clone(),
            }),
            None => {}
        }
    }

    /// Whether `user`'s roster holds as many items as it may (a counter, no scan).
    fn roster_full(&self, user: &Jid) -> bool {
        self.rosters
            .count(&user.to_string())
            .is_ok_and(|n| n >= self.limits.max_roster_items)
    }

    /// Whether `user` holds as many unanswered requests as it may (a counter, no scan).
    fn pending_full(&self, user: &Jid) -> bool {
        self.rosters
            .pending_count(&user.to_string())
            .is_ok_and(|n| n >= self.limits.max_pending_subscriptions)
    }

    fn is_local(&self, jid: &Jid) -> bool {
        self.domains.iter().any(|d| d == jid.domain())
    }
}

/// What a roster item shows of a subscription state (a pending inbound request does not
/// show: it is kept apart, RFC 6121 §3.1.3).
fn shown(s: &SubState) -> (Subscription, bool, bool) {
    (s.subscription, s.pending_out, s.approved)
}

/// Whether the state needs a roster item (it differs from "none" in what an item shows).
fn shows(s: &SubState) -> bool {
    shown(s) != shown(&SubState::default())
}

/// Longest `<status/>` text kept with a pending request; the rest is cut (at a character
/// boundary). The request itself is what matters; the text is a courtesy.
pub(super) const MAX_PENDING_STATUS: usize = 1024;

/// The `<status/>` text of a subscription request, as much of it as is kept.
fn request_status(req: &Element) -> Option<String> {
    let mut text = req.get_child("status", ns::CLIENT)?.text();
    if text.len() > MAX_PENDING_STATUS {
        let mut cut = MAX_PENDING_STATUS;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    Some(text).filter(|t| !t.is_empty())
}

/// Who gets `user`'s presence broadcasts: contacts subscribed to it (From or Both).
pub(super) fn is_subscriber(item: &RosterItem) -> bool {
    Subscription::parse(&item.subscription).is_some_and(|s| s.has_from())
}

/// Whose presence `user` receives: contacts it is subscribed to (To or Both).
pub(super) fn is_subscription(item: &RosterItem) -> bool {
    Subscription::parse(&item.subscription).is_some_and(|s| s.has_to())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_status_text_of_a_request_is_kept_and_bounded() {
        let req = |inner: &str| {
            Element::parse(&format!(
                "<presence xmlns='jabber:client' type='subscribe'>{inner}</presence>"
            ))
            .unwrap()
        };
        assert_eq!(request_status(&req("")), None);
        assert_eq!(request_status(&req("<status/>")), None);
        assert_eq!(
            request_status(&req("<status>hi</status><x xmlns='urn:x'>big</x>")).as_deref(),
            Some("hi")
        );
        let long = "é".repeat(MAX_PENDING_STATUS);
        let kept = request_status(&req(&format!("<status>{long}</status>"))).unwrap();
        assert!(kept.len() <= MAX_PENDING_STATUS && kept.len() >= MAX_PENDING_STATUS - 1);
        assert!(kept.chars().all(|c| c == 'é'));
    }
}
