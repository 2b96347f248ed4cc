//! Blocking command (XEP-0191): the account's blocklist, its pushes, and the presence that
//! blocking and unblocking imply. Sessions enforce the list on what they send and receive
//! (they hold a copy, refreshed through the router); this shard enforces it on what it
//! stores or delivers for the account (offline messages, subscription requests, presence
//! to contacts).

use std::sync::Arc;

use proto::element::Element;
use proto::error::StanzaErrorCondition as Cond;
use proto::jid::Jid;
use proto::ns;

use super::roster::{error_for, result_for};
use super::subscription::is_subscriber;
use super::writes::write_error;
use super::AccountShard;
use crate::route::to_router::{BlockListChanged, SendPresenceOf, SendUnavailableOf};

pub(super) use proto::ns::BLOCKING as NS_BLOCKING;

impl AccountShard {
    /// The account's blocklist as prepared JIDs.
    pub(super) fn blocklist(&self, user: &Jid) -> Vec<Jid> {
        self.blocking
            .list(&user.to_string())
            .unwrap_or_default()
            .iter()
            .filter_map(|j| Jid::parse(j).ok())
            .collect()
    }

    pub(super) fn blocks(&self, user: &Jid, sender: &Jid) -> bool {
        proto::blocklist::is_blocked(&self.blocklist(user), sender)
    }

    pub(super) fn blocking_iq(&mut self, from: &Jid, iq: &Element) -> Vec<Element> {
        let user = from.to_bare();
        let Some(payload) = iq.children().next() else {
            return vec![error_for(iq, Cond::BadRequest)];
        };
        let outcome = match (iq.attr("type"), payload.name.as_str()) {
            (Some("get"), "blocklist") => {
                let mut list = Element::new("blocklist", NS_BLOCKING);
                for j in self.blocklist(&user) {
                    list = list.with_child(item(&j));
                }
                Ok(result_for(iq, Some(list)))
            }
            (Some("set"), "block") => self.block(&user, payload).map(|()| result_for(iq, None)),
            (Some("set"), "unblock") => self.unblock(&user, payload).map(|()| result_for(iq, None)),
            _ => Err(Cond::BadRequest),
        };
        vec![outcome.unwrap_or_else(|cond| error_for(iq, cond))]
    }

    /// The `<item jid/>` children of a block or unblock request, prepared.
    fn items(payload: &Element) -> Result<Vec<Jid>, Cond> {
        payload
            .children()
            .filter(|c| c.is("item", NS_BLOCKING))
            .map(|c| {
                let jid = c.attr("jid").ok_or(Cond::BadRequest)?;
                Jid::parse(jid).map_err(|_| Cond::JidMalformed)
            })
            .collect()
    }

    /// XEP-0191 §3.3.
    fn block(&mut self, user: &Jid, payload: &Element) -> Result<(), Cond> {
        let jids = Self::items(payload)?;
        if jids.is_empty() {
            return Err(Cond::BadRequest);
        }
        let current = self.blocklist(user);
        let mut added: Vec<&Jid> = jids.iter().filter(|j| !current.contains(j)).collect();
        added.sort_unstable_by_key(|j| j.to_string());
        added.dedup();
        let limit = self.limits.max_blocklist_items;
        if current.len() + added.len() > limit {
            // XEP-0191 defines no error for a full list: the configured cap is a local
            // service policy (RFC 6120 §8.3.3.12); nothing of the request is stored.
            self.refuse_over_cap(user, "max_blocklist_items", limit);
            return Err(Cond::PolicyViolation);
        }
        let keys: Vec<String> = jids.iter().map(Jid::to_string).collect();
        self.blocklist_add(&user.to_string(), &keys)
            .map_err(write_error)?;
        // Blocked subscribers see the account go offline (XEP-0191 §3.3: only those allowed
        // to receive its presence).
        for contact in self.subscribers_covered_by(user, &jids) {
            self.router.do_send(SendUnavailableOf {
                contact: user.clone(),
                to: contact,
            });
        }
        self.blocklist_changed(user, "block", &jids);
        Ok(())
    }

    /// XEP-0191 §3.4: no items means everything.
    fn unblock(&mut self, user: &Jid, payload: &Element) -> Result<(), Cond> {
        let jids = Self::items(payload)?;
        let key = user.to_string();
        let before = self.blocklist(user);
        let result = if jids.is_empty() {
            self.blocklist_clear(&key)
        } else {
            let keys: Vec<String> = jids.iter().map(Jid::to_string).collect();
            self.blocklist_remove(&key, &keys)
        };
        result.map_err(write_error)?;
        let freed: Vec<Jid> = before
            .into_iter()
            .filter(|b| jids.is_empty() || jids.contains(b))
            .collect();
        // Subscribers that were blocked get the account's presence again (after the
        // sessions have the new list: they filter it).
        self.blocklist_changed(user, "unblock", &jids);
        for contact in self.subscribers_covered_by(user, &freed) {
            self.router.do_send(SendPresenceOf {
                contact: user.clone(),
                to: contact,
            });
        }
        Ok(())
    }

    /// The account's presence subscribers that one of `items` covers.
    fn subscribers_covered_by(&self, user: &Jid, items: &[Jid]) -> Vec<Jid> {
        let Ok((_, roster)) = self.rosters.get(&user.to_string()) else {
            return Vec::new();
        };
        roster
            .iter()
            .filter(|i| is_subscriber(i))
            .filter_map(|i| Jid::parse(&i.jid).ok())
            .filter(|c| proto::blocklist::is_blocked(items, c))
            .collect()
    }

    /// Push the change to the account's resources and refresh their copies of the list.
    fn blocklist_changed(&mut self, user: &Jid, what: &str, jids: &[Jid]) {
        let mut change = Element::new(what, NS_BLOCKING);
        for j in jids {
            change = change.with_child(item(j));
        }
        self.push_seq += 1;
        let push = Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", format!("block{}", self.push_seq))
            .with_child(change);
        self.router.do_send(BlockListChanged {
            user: user.clone(),
            list: Arc::new(self.blocklist(user)),
        });
        self.push_to_user(user, push);
    }
}

fn item(jid: &Jid) -> Element {
    Element::new("item", NS_BLOCKING).with_attr("jid", jid.to_string())
}
