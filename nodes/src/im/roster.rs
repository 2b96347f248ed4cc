//! Roster get and set (RFC 6121 §2), with versioning (§2.6) and pushes (§2.1.6).

use proto::element::Element;
use proto::error::{stanza_error_reply, StanzaErrorCondition as Cond};
use proto::im::{PresenceToSend, SubState, Subscription, SubscriptionKind};
use proto::jid::Jid;
use proto::ns;
use storage::rosters::{RosterChange, RosterItem};

use super::writes::write_error;
use super::AccountShard;

pub const NS_ROSTER: &str = "jabber:iq:roster";
/// Longest item name or group name accepted (roster sets and operator imports).
pub const MAX_NAME: usize = 1023;

/// The subscription state stored in a roster item.
pub(super) fn state_of(item: Option<&RosterItem>, pending_in: bool) -> SubState {
    match item {
        Some(i) => SubState {
            subscription: Subscription::parse(&i.subscription).unwrap_or_default(),
            pending_out: i.pending_out,
            pending_in,
            approved: i.approved,
        },
        None => SubState {
            pending_in,
            ..SubState::default()
        },
    }
}

/// `<item/>` as the owner sees it (RFC 6121 §2.1.2).
pub(super) fn item_element(item: &RosterItem) -> Element {
    let mut el = Element::new("item", NS_ROSTER)
        .with_attr("jid", item.jid.as_str())
        .with_attr("subscription", item.subscription.as_str());
    if let Some(name) = &item.name {
        el.set_attr("name", name.as_str());
    }
    if item.pending_out {
        el.set_attr("ask", "subscribe");
    }
    if item.approved {
        el.set_attr("approved", "true");
    }
    for g in &item.groups {
        el = el.with_child(Element::new("group", NS_ROSTER).with_text(g.as_str()));
    }
    el
}

fn removed_element(jid: &str) -> Element {
    Element::new("item", NS_ROSTER)
        .with_attr("jid", jid)
        .with_attr("subscription", "remove")
}

pub(super) fn result_for(iq: &Element, payload: Option<Element>) -> Element {
    let mut reply = Element::new("iq", ns::CLIENT)
        .with_attr("type", "result")
        .with_attr("id", iq.attr("id").unwrap_or_default());
    if let Some(p) = payload {
        reply = reply.with_child(p);
    }
    reply
}

pub(super) fn error_for(iq: &Element, cond: Cond) -> Element {
    let mut reply = stanza_error_reply(iq, cond, None);
    reply.remove_attr("from");
    reply
}

impl AccountShard {
    pub(super) fn roster_iq(&mut self, from: &Jid, iq: &Element) -> Vec<Element> {
        let user = from.to_bare();
        let Some(query) = iq.get_child("query", NS_ROSTER) else {
            return vec![error_for(iq, Cond::BadRequest)];
        };
        let outcome = match iq.attr("type") {
            Some("get") => self.roster_get(&user, iq, query),
            Some("set") => self
                .roster_set(&user, query)
                .map(|()| vec![result_for(iq, None)]),
            _ => Err(Cond::BadRequest),
        };
        outcome.unwrap_or_else(|cond| vec![error_for(iq, cond)])
    }

    fn roster_get(
        &mut self,
        user: &Jid,
        iq: &Element,
        query: &Element,
    ) -> Result<Vec<Element>, Cond> {
        let key = user.to_string();
        if let Some(ver) = query.attr("ver").and_then(|v| v.parse::<u64>().ok()) {
            // RFC 6121 §2.6.3: an up-to-date cache gets an empty result; a stale one the
            // missed changes as pushes, when we still know them.
            if let Some((_, changes)) = self
                .rosters
                .changes_since(&key, ver)
                .map_err(|_| Cond::InternalServerError)?
            {
                let mut out = vec![result_for(iq, None)];
                // Each interim push carries the version of its own change, so a client that
                // drops off midway resumes from the last one it applied.
                for (version, change) in changes {
                    let item = match &change {
                        RosterChange::Updated(i) => item_element(i),
                        RosterChange::Removed(jid) => removed_element(jid),
                    };
                    out.push(self.push_stanza(item, version));
                }
                return Ok(out);
            }
        }
        let (version, items) = self
            .rosters
            .get(&key)
            .map_err(|_| Cond::InternalServerError)?;
        let mut q = Element::new("query", NS_ROSTER).with_attr("ver", version.to_string());
        for i in &items {
            q = q.with_child(item_element(i));
        }
        Ok(vec![result_for(iq, Some(q))])
    }

    /// RFC 6121 §2.3-2.5: add, update or remove exactly one item.
    fn roster_set(&mut self, user: &Jid, query: &Element) -> Result<(), Cond> {
        let mut items = query.children();
        let (Some(item), None) = (items.next(), items.next()) else {
            return Err(Cond::BadRequest);
        };
        if !item.is("item", NS_ROSTER) {
            return Err(Cond::BadRequest);
        }
        let contact = item
            .attr("jid")
            .ok_or(Cond::BadRequest)
            .and_then(|j| Jid::parse(j).map_err(|_| Cond::JidMalformed))?;
        let contact_key = contact.to_string();
        let key = user.to_string();
        // RFC 6121 §2.1.2.5: in a roster set the server MUST ignore every 'subscription'
        // value other than "remove" (the client cannot set subscription states).
        if item.attr("subscription") == Some("remove") {
            return self.roster_remove(user, &contact);
        }
        let name = item
            .attr("name")
            .filter(|n| !n.is_empty())
            .map(str::to_string);
        if name.as_ref().is_some_and(|n| n.len() > MAX_NAME) {
            return Err(Cond::NotAcceptable);
        }
        let mut groups: Vec<String> = Vec::new();
        for g in item.children() {
            if !g.is("group", NS_ROSTER) {
                continue;
            }
            let text = g.text();
            if text.is_empty() || text.len() > MAX_NAME {
                return Err(Cond::NotAcceptable);
            }
            if groups.contains(&text) {
                return Err(Cond::BadRequest);
            }
            groups.push(text);
        }
        if groups.len() > self.limits.max_roster_groups {
            // RFC 6121 §2.3.3 leaves limits on an item to the server; a count over the
            // configured one is a local service policy the client can meet by sending fewer
            // (policy-violation, type modify, RFC 6120 §8.3.3.12), the text naming the limit.
            self.refuse_over_cap(user, "max_roster_groups", self.limits.max_roster_groups);
            return Err(Cond::PolicyViolation);
        }
        let existing = self
            .rosters
            .item(&key, &contact_key)
            .map_err(|_| Cond::InternalServerError)?;
        let updated = match existing {
            Some(mut i) => {
                i.name = name;
                i.groups = groups;
                i
            }
            None => {
                let count = self
                    .rosters
                    .count(&key)
                    .map_err(|_| Cond::InternalServerError)?;
                if count >= self.limits.max_roster_items {
                    // RFC 6121 §2.5.3 (roster size).
                    self.refuse_over_cap(user, "max_roster_items", self.limits.max_roster_items);
                    return Err(Cond::NotAllowed);
                }
                RosterItem {
                    jid: contact_key,
                    name,
                    groups,
                    subscription: Subscription::None.as_str().to_string(),
                    pending_out: false,
                    pending_in: false,
                    approved: false,
                }
            }
        };
        let version = self.roster_item_put(&key, &updated).map_err(write_error)?;
        self.push(user, item_element(&updated), version);
        Ok(())
    }

    /// An operator's import: the items replace the stored ones (no subscription handshake,
    /// no presence sent: the contacts' presence follows at the user's next probe, i.e. its
    /// next initial presence). The user's online resources get a push per changed item, as
    /// for a roster set, and the privacy rules that follow the roster are refreshed once.
    pub(super) fn roster_import(
        &mut self,
        user: &Jid,
        items: Vec<RosterItem>,
    ) -> Result<usize, String> {
        let key = user.to_string();
        let stored = self.rosters.count(&key).map_err(|e| e.to_string())?;
        let mut added = 0;
        for item in &items {
            if self
                .rosters
                .item(&key, &item.jid)
                .map_err(|e| e.to_string())?
                .is_none()
            {
                added += 1;
            }
        }
        let groups = self.limits.max_roster_groups;
        if let Some(item) = items.iter().find(|i| i.groups.len() > groups) {
            return Err(format!(
                "{key}: item {} has more than im.max_roster_groups ({groups}) groups",
                item.jid
            ));
        }
        let limit = self.limits.max_roster_items;
        if stored + added > limit {
            return Err(format!(
                "{key}: more than im.max_roster_items ({limit}) roster items"
            ));
        }
        let before = self.rosters.version(&key).map_err(|e| e.to_string())?;
        let changed = self
            .roster_items_import(&key, items)
            .map_err(|e| e.to_string())?;
        if changed > 0 {
            if let Ok(Some((_, changes))) = self.rosters.changes_since(&key, before) {
                for (version, change) in changes {
                    if let RosterChange::Updated(item) = change {
                        let push = self.push_stanza(item_element(&item), version);
                        self.push_to_user(user, push);
                    }
                }
            }
            self.roster_changed(user);
        }
        Ok(changed)
    }

    /// RFC 6121 §2.5.2: removing an item also cancels the subscriptions both ways.
    fn roster_remove(&mut self, user: &Jid, contact: &Jid) -> Result<(), Cond> {
        let key = user.to_string();
        let contact_key = contact.to_string();
        let Some(existing) = self
            .rosters
            .item(&key, &contact_key)
            .map_err(|_| Cond::InternalServerError)?
        else {
            return Err(Cond::ItemNotFound);
        };
        let pending_in = self.has_pending_in(user, contact);
        let state = state_of(Some(&existing), pending_in);
        let Some(version) = self
            .roster_item_remove(&key, &contact_key)
            .map_err(write_error)?
        else {
            return Err(Cond::ItemNotFound);
        };
        if pending_in {
            let _ = self.pending_remove(&key, &contact_key);
        }
        self.push(user, removed_element(&contact_key), version);
        // Tell the contact, as if the user had sent these (the item is gone, so they only
        // route and, for `unsubscribed`, withdraw presence).
        if state.subscription.has_to() || state.pending_out {
            self.send_as_user(user, contact, SubscriptionKind::Unsubscribe);
        }
        if state.subscription.has_from() || state.pending_in {
            self.send_as_user(user, contact, SubscriptionKind::Unsubscribed);
        }
        Ok(())
    }

    fn send_as_user(&mut self, user: &Jid, contact: &Jid, kind: SubscriptionKind) {
        let stanza = Element::new("presence", ns::CLIENT)
            .with_attr("type", kind.as_str())
            .with_attr("from", user.to_string())
            .with_attr("to", contact.to_string());
        let presence =
            (kind == SubscriptionKind::Unsubscribed).then_some(PresenceToSend::Unavailable);
        self.route_subscription(user, contact, kind, stanza, presence);
    }

    fn push_stanza(&mut self, item: Element, version: u64) -> Element {
        self.push_seq += 1;
        Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", format!("push{}", self.push_seq))
            .with_child(
                Element::new("query", NS_ROSTER)
                    .with_attr("ver", version.to_string())
                    .with_child(item),
            )
    }

    /// Send a roster push to every resource of `user` (RFC 6121 §2.1.6).
    pub(super) fn push(&mut self, user: &Jid, item: Element, version: u64) {
        let stanza = self.push_stanza(item, version);
        self.push_to_user(user, stanza);
        // Group and subscription items of privacy lists follow the roster.
        self.roster_changed(user);
    }
}
