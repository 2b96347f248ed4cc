//! Privacy lists (XEP-0016): the account's lists, its default list, which list each bound
//! resource has made active, and the pushes. Lists are compiled here (group and subscription
//! items resolved against the roster) into `proto::privacy::PrivacyRules`; sessions hold the
//! compiled lists (refreshed through the router whenever a list, the default or the roster
//! changes) and enforce them on what they send and receive; this shard enforces them on
//! presence broadcast, offline storage and IQs answered for the account.

use std::collections::HashMap;
use std::sync::Arc;

use proto::element::Element;
use proto::error::StanzaErrorCondition as Cond;
use proto::jid::Jid;
use proto::ns;
use proto::privacy::{Matcher, PrivacyLists, PrivacyRules, Rule, StanzaKind, StanzaKinds};
use storage::rosters::RosterItem;
use storage::{PrivacyItem, StorageError};

use super::roster::{error_for, result_for};
use super::AccountShard;
use crate::route::to_router::PrivacyChanged;

pub(super) use proto::ns::PRIVACY as NS_PRIVACY;

/// Resolve one stored list against the roster.
fn compile(items: &[PrivacyItem], roster: &[RosterItem]) -> PrivacyRules {
    let bare = |i: &RosterItem| Jid::parse(&i.jid).ok();
    let rules = items.iter().filter_map(|item| {
        let value = item.value.as_deref().unwrap_or_default();
        let matcher = match item.kind.as_deref() {
            None => Matcher::All,
            Some("jid") => Matcher::Jid(Jid::parse(value).ok()?),
            Some("group") => Matcher::AnyOf(
                roster
                    .iter()
                    .filter(|i| i.groups.iter().any(|g| g == value))
                    .filter_map(bare)
                    .collect(),
            ),
            // XEP-0016 §2.1: "none" also covers every JID not on the roster.
            Some("subscription") if value == "none" => Matcher::NotIn(
                roster
                    .iter()
                    .filter(|i| i.subscription != "none")
                    .filter_map(bare)
                    .collect(),
            ),
            Some("subscription") => Matcher::AnyOf(
                roster
                    .iter()
                    .filter(|i| i.subscription == value)
                    .filter_map(bare)
                    .collect(),
            ),
            Some(_) => return None,
        };
        Some(Rule {
            matcher,
            allow: item.allow,
            kinds: StanzaKinds {
                message: item.message,
                iq: item.iq,
                presence_in: item.presence_in,
                presence_out: item.presence_out,
            },
        })
    });
    PrivacyRules {
        items: rules.collect(),
    }
}

/// The stanza-kind children of an item, as XEP-0016 names them.
const KIND_NAMES: [&str; 4] = ["message", "iq", "presence-in", "presence-out"];

fn kinds_of(item: &PrivacyItem) -> [bool; 4] {
    [item.message, item.iq, item.presence_in, item.presence_out]
}

fn list_element(name: &str, items: &[PrivacyItem]) -> Element {
    let mut list = Element::new("list", NS_PRIVACY).with_attr("name", name);
    for i in items {
        let mut el = Element::new("item", NS_PRIVACY)
            .with_attr("action", if i.allow { "allow" } else { "deny" })
            .with_attr("order", i.order.to_string());
        if let (Some(kind), Some(value)) = (&i.kind, &i.value) {
            el.set_attr("type", kind.as_str());
            el.set_attr("value", value.as_str());
        }
        for (name, set) in KIND_NAMES.iter().zip(kinds_of(i)) {
            if set {
                el = el.with_child(Element::new(name, NS_PRIVACY));
            }
        }
        list = list.with_child(el);
    }
    list
}

/// One `<item/>` of a list set, validated (XEP-0016 §2.1).
fn parse_item(el: &Element, groups: &[&str]) -> Result<PrivacyItem, Cond> {
    if !el.is("item", NS_PRIVACY) {
        return Err(Cond::BadRequest);
    }
    let allow = match el.attr("action") {
        Some("allow") => true,
        Some("deny") => false,
        _ => return Err(Cond::BadRequest),
    };
    let order = el
        .attr("order")
        .and_then(|o| o.parse::<u32>().ok())
        .ok_or(Cond::BadRequest)?;
    let (kind, value) = match (el.attr("type"), el.attr("value")) {
        (None, None) => (None, None),
        (Some("jid"), Some(v)) => {
            let jid = Jid::parse(v).map_err(|_| Cond::BadRequest)?;
            (Some("jid"), Some(jid.to_string()))
        }
        (Some("group"), Some(v)) => {
            // XEP-0016: a group the roster does not have is item-not-found.
            if !groups.contains(&v) {
                return Err(Cond::ItemNotFound);
            }
            (Some("group"), Some(v.to_string()))
        }
        (Some("subscription"), Some(v)) if matches!(v, "none" | "to" | "from" | "both") => {
            (Some("subscription"), Some(v.to_string()))
        }
        _ => return Err(Cond::BadRequest),
    };
    let mut kinds = [false; 4];
    for child in el.children() {
        let i = KIND_NAMES
            .iter()
            .position(|n| child.is(n, NS_PRIVACY))
            .ok_or(Cond::BadRequest)?;
        kinds[i] = true;
    }
    let [message, iq, presence_in, presence_out] = kinds;
    Ok(PrivacyItem {
        kind: kind.map(str::to_string),
        value,
        allow,
        order,
        message,
        iq,
        presence_in,
        presence_out,
    })
}

fn storage_error(e: StorageError) -> Cond {
    match e {
        StorageError::DuplicateOrder { .. } => Cond::BadRequest,
        StorageError::NoSuchList(_) => Cond::ItemNotFound,
        StorageError::InvalidKey(_) => Cond::BadRequest,
        StorageError::Unavailable(_) => Cond::ResourceConstraint,
        _ => Cond::InternalServerError,
    }
}

impl AccountShard {
    /// All of `user`'s lists, compiled against its current roster.
    pub(super) fn privacy_lists(&self, user: &Jid) -> PrivacyLists {
        let key = user.to_string();
        let names = self.privacy.lists(&key).unwrap_or_default();
        if names.is_empty() {
            return PrivacyLists::default();
        }
        let roster = self.rosters.get(&key).map(|(_, r)| r).unwrap_or_default();
        let lists = names
            .into_iter()
            .filter_map(|name| {
                let items = self.privacy.get(&key, &name).ok().flatten()?;
                Some((name, Arc::new(compile(&items, &roster))))
            })
            .collect();
        PrivacyLists {
            default: self.privacy.default_list(&key).ok().flatten(),
            lists,
        }
    }

    /// Whether the rules in force for `resource` (a full JID; `None`: the account's default
    /// list, for stanzas to the bare JID or stored offline) let `kind` pass with `peer`.
    pub(super) fn privacy_allows(
        &self,
        user: &Jid,
        resource: Option<&Jid>,
        kind: StanzaKind,
        peer: &Jid,
    ) -> bool {
        self.privacy_rules(user, resource)
            .is_none_or(|r| r.allows(kind, peer))
    }

    /// The compiled list in force for `resource` (see `privacy_allows`), if any.
    pub(super) fn privacy_rules(&self, user: &Jid, resource: Option<&Jid>) -> Option<PrivacyRules> {
        let key = user.to_string();
        let active = resource
            .and_then(|r| self.bound.active(r).cloned())
            .flatten();
        let name = active.or_else(|| self.privacy.default_list(&key).ok().flatten())?;
        let items = self.privacy.get(&key, &name).ok().flatten()?;
        let roster = self.rosters.get(&key).map(|(_, r)| r).unwrap_or_default();
        Some(compile(&items, &roster))
    }

    /// The roster changed: sessions of an account with lists get them recompiled.
    pub(super) fn roster_changed(&mut self, user: &Jid) {
        let has_lists = self
            .privacy
            .lists(&user.to_string())
            .is_ok_and(|l| !l.is_empty());
        if has_lists {
            self.send_privacy(user);
        }
    }

    fn send_privacy(&self, user: &Jid) {
        self.router.do_send(PrivacyChanged {
            user: user.clone(),
            lists: Arc::new(self.privacy_lists(user)),
        });
    }

    pub(super) fn privacy_iq(&mut self, from: &Jid, iq: &Element) -> Vec<Element> {
        let Some(query) = iq.get_child("query", NS_PRIVACY) else {
            return vec![error_for(iq, Cond::BadRequest)];
        };
        let children: Vec<&Element> = query.children().collect();
        let outcome = match (iq.attr("type"), children.as_slice()) {
            (Some("get"), []) => self.privacy_names(from).map(Some),
            (Some("get"), [list]) if list.is("list", NS_PRIVACY) => {
                self.privacy_get(from, list).map(Some)
            }
            (Some("set"), [one]) if one.is("active", NS_PRIVACY) => {
                self.set_active(from, one.attr("name")).map(|()| None)
            }
            (Some("set"), [one]) if one.is("default", NS_PRIVACY) => {
                self.set_default(from, one.attr("name")).map(|()| None)
            }
            (Some("set"), [one]) if one.is("list", NS_PRIVACY) => {
                self.set_list(from, one).map(|()| None)
            }
            // XEP-0016 §2.3: one list at a time.
            _ => Err(Cond::BadRequest),
        };
        let reply = outcome.map(|payload| result_for(iq, payload));
        vec![reply.unwrap_or_else(|cond| error_for(iq, cond))]
    }

    /// XEP-0016 §2.3: the names of the lists, the active one and the default one.
    fn privacy_names(&self, from: &Jid) -> Result<Element, Cond> {
        let user = from.to_bare();
        let key = user.to_string();
        let mut q = Element::new("query", NS_PRIVACY);
        if let Some(active) = self.bound.active(from).cloned() {
            q = q.with_child(active_like("active", active.as_deref()));
        }
        let default = self
            .privacy
            .default_list(&key)
            .map_err(|_| Cond::InternalServerError)?;
        q = q.with_child(active_like("default", default.as_deref()));
        for name in self
            .privacy
            .lists(&key)
            .map_err(|_| Cond::InternalServerError)?
        {
            q = q.with_child(Element::new("list", NS_PRIVACY).with_attr("name", name));
        }
        Ok(q)
    }

    fn privacy_get(&self, from: &Jid, list: &Element) -> Result<Element, Cond> {
        let name = list.attr("name").ok_or(Cond::BadRequest)?;
        let items = self
            .privacy
            .get(&from.to_bare().to_string(), name)
            .map_err(storage_error)?
            .ok_or(Cond::ItemNotFound)?;
        Ok(Element::new("query", NS_PRIVACY).with_child(list_element(name, &items)))
    }

    /// The other bound resources of `from`'s account and their active lists.
    fn other_resources<'a>(&'a self, from: &'a Jid) -> impl Iterator<Item = Option<&'a str>> {
        self.bound.others(from)
    }

    /// Whether another resource uses the default list (it has no active list).
    fn default_in_use_elsewhere(&self, from: &Jid, default: Option<&str>) -> bool {
        default.is_some() && self.other_resources(from).any(|a| a.is_none())
    }

    /// XEP-0016 §2.4: the active list is the session's; `None` declines it.
    fn set_active(&mut self, from: &Jid, name: Option<&str>) -> Result<(), Cond> {
        let key = from.to_bare().to_string();
        if let Some(name) = name {
            self.privacy
                .get(&key, name)
                .map_err(storage_error)?
                .ok_or(Cond::ItemNotFound)?;
        }
        if let Some(active) = self.bound.active_mut(from) {
            *active = name.map(str::to_string);
        }
        Ok(())
    }

    /// XEP-0016 §2.5: changing or declining the default while another resource uses it is a
    /// conflict.
    fn set_default(&mut self, from: &Jid, name: Option<&str>) -> Result<(), Cond> {
        let user = from.to_bare();
        let key = user.to_string();
        let current = self
            .privacy
            .default_list(&key)
            .map_err(|_| Cond::InternalServerError)?;
        if current.as_deref() == name {
            return Ok(());
        }
        if self.default_in_use_elsewhere(from, current.as_deref()) {
            return Err(Cond::Conflict);
        }
        self.privacy_set_default(&key, name)
            .map_err(storage_error)?;
        self.send_privacy(&user);
        Ok(())
    }

    /// XEP-0016 §2.6-§2.8: create, replace, or (no items) remove a list.
    fn set_list(&mut self, from: &Jid, list: &Element) -> Result<(), Cond> {
        let user = from.to_bare();
        let key = user.to_string();
        let name = list
            .attr("name")
            .filter(|n| !n.is_empty())
            .ok_or(Cond::BadRequest)?;
        if list.children().next().is_none() {
            let default = self
                .privacy
                .default_list(&key)
                .map_err(|_| Cond::InternalServerError)?;
            let is_default = default.as_deref() == Some(name);
            if self.other_resources(from).any(|a| a == Some(name))
                || (is_default && self.default_in_use_elsewhere(from, default.as_deref()))
            {
                return Err(Cond::Conflict);
            }
            if !self.privacy_remove(&key, name).map_err(storage_error)? {
                return Err(Cond::ItemNotFound);
            }
            if let Some(active) = self.bound.active_mut(from) {
                if active.as_deref() == Some(name) {
                    *active = None;
                }
            }
        } else {
            let roster = self
                .rosters
                .get(&key)
                .map(|(_, r)| r)
                .map_err(|_| Cond::InternalServerError)?;
            let groups: Vec<&str> = roster
                .iter()
                .flat_map(|i| i.groups.iter().map(String::as_str))
                .collect();
            let max_items = self.limits.max_privacy_items;
            if list.children().count() > max_items {
                // XEP-0016 sets no limit; the configured one is a local service policy
                // (RFC 6120 §8.3.3.12). Nothing is stored.
                self.refuse_over_cap(&user, "max_privacy_items", max_items);
                return Err(Cond::PolicyViolation);
            }
            let names = self
                .privacy
                .lists(&key)
                .map_err(|_| Cond::InternalServerError)?;
            let max_lists = self.limits.max_privacy_lists;
            if !names.iter().any(|n| n == name) && names.len() >= max_lists {
                self.refuse_over_cap(&user, "max_privacy_lists", max_lists);
                return Err(Cond::PolicyViolation);
            }
            let items = list
                .children()
                .map(|el| parse_item(el, &groups))
                .collect::<Result<Vec<_>, _>>()?;
            self.privacy_put(&key, name, &items)
                .map_err(storage_error)?;
        }
        self.send_privacy(&user);
        // XEP-0016 §2.6: every resource learns which list changed.
        self.push_seq += 1;
        let push = Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", format!("privacy{}", self.push_seq))
            .with_child(
                Element::new("query", NS_PRIVACY)
                    .with_child(Element::new("list", NS_PRIVACY).with_attr("name", name)),
            );
        self.push_to_user(&user, push);
        Ok(())
    }

    /// A resource of the account was bound (`true`) or went away: it starts with no active
    /// list.
    pub(super) fn privacy_resource(&mut self, jid: Jid, bound: bool) {
        if bound {
            self.bound.bind(jid);
        } else {
            self.bound.unbind(&jid);
        }
    }
}

/// Bound resources of a shard's accounts and their active privacy lists. Kept lean (a
/// resource string per session, one vector per account): it costs every session.
#[derive(Default)]
pub(super) struct BoundResources(HashMap<Jid, Vec<(String, Option<String>)>>);

impl BoundResources {
    fn entry(&self, full: &Jid) -> Option<&(String, Option<String>)> {
        let resource = full.resource()?;
        self.0
            .get(&full.to_bare())?
            .iter()
            .find(|(r, _)| r == resource)
    }

    /// `Some(active list)` if `full` is bound.
    fn active(&self, full: &Jid) -> Option<&Option<String>> {
        self.entry(full).map(|(_, a)| a)
    }

    fn active_mut(&mut self, full: &Jid) -> Option<&mut Option<String>> {
        let resource = full.resource()?;
        self.0
            .get_mut(&full.to_bare())?
            .iter_mut()
            .find(|(r, _)| r == resource)
            .map(|(_, a)| a)
    }

    /// The active lists of the account's other bound resources.
    fn others<'a>(&'a self, full: &'a Jid) -> impl Iterator<Item = Option<&'a str>> {
        let resource = full.resource().unwrap_or_default();
        self.0
            .get(&full.to_bare())
            .into_iter()
            .flatten()
            .filter(move |(r, _)| r != resource)
            .map(|(_, a)| a.as_deref())
    }

    fn bind(&mut self, full: Jid) {
        let Some(resource) = full.resource().map(str::to_string) else {
            return;
        };
        let list = self.0.entry(full.to_bare()).or_default();
        if !list.iter().any(|(r, _)| *r == resource) {
            list.push((resource, None));
        }
    }

    fn unbind(&mut self, full: &Jid) {
        let (Some(resource), bare) = (full.resource(), full.to_bare()) else {
            return;
        };
        if let Some(list) = self.0.get_mut(&bare) {
            list.retain(|(r, _)| r != resource);
            if list.is_empty() {
                self.0.remove(&bare);
            }
        }
    }
}

fn active_like(name: &str, list: Option<&str>) -> Element {
    let mut el = Element::new(name, NS_PRIVACY);
    if let Some(l) = list {
        el.set_attr("name", l);
    }
    el
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roster_item(jid: &str, subscription: &str, groups: &[&str]) -> RosterItem {
        RosterItem {
            jid: jid.to_string(),
            name: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            subscription: subscription.to_string(),
            pending_out: false,
            pending_in: false,
            approved: false,
        }
    }

    fn parse(xml: &str) -> Result<PrivacyItem, Cond> {
        let el = Element::parse(&format!("<item xmlns='{NS_PRIVACY}' {xml}")).unwrap();
        parse_item(&el, &["friends"])
    }

    #[test]
    fn items_are_validated() {
        assert!(parse("action='deny' order='1'/>").is_ok());
        assert_eq!(parse("action='block' order='1'/>"), Err(Cond::BadRequest));
        assert_eq!(parse("action='deny' order='-1'/>"), Err(Cond::BadRequest));
        assert_eq!(
            parse("type='subscription' value='some' action='deny' order='1'/>"),
            Err(Cond::BadRequest)
        );
        assert_eq!(
            parse("type='jid' value='a@b@c' action='deny' order='1'/>"),
            Err(Cond::BadRequest)
        );
        assert_eq!(
            parse("type='group' value='enemies' action='deny' order='1'/>"),
            Err(Cond::ItemNotFound)
        );
        let item = parse(
            "type='jid' value='A@Example.com' action='allow' order='3'><message/><presence-out/></item>",
        )
        .unwrap();
        assert_eq!(item.value.as_deref(), Some("a@example.com"));
        assert!(item.allow && item.message && item.presence_out && !item.iq);
        assert_eq!(
            parse("action='deny' order='1'><chat/></item>"),
            Err(Cond::BadRequest)
        );
    }

    #[test]
    fn roster_items_are_resolved() {
        let roster = [
            roster_item("friend@x", "both", &["friends"]),
            roster_item("lurker@x", "none", &[]),
        ];
        let items = [
            parse("type='group' value='friends' action='allow' order='1'/>").unwrap(),
            parse("type='subscription' value='none' action='deny' order='2'/>").unwrap(),
        ];
        let rules = compile(&items, &roster);
        let j = |s: &str| Jid::parse(s).unwrap();
        assert!(rules.allows(StanzaKind::Message, &j("friend@x/r")));
        assert!(!rules.allows(StanzaKind::Message, &j("lurker@x/r")));
        assert!(!rules.allows(StanzaKind::Message, &j("stranger@y")));
    }
}
