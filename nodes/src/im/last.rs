//! Last activity (XEP-0012 §3): when an account was last available, for those allowed to see
//! its presence. The shard records the time and status of the unavailable presence that
//! takes an account offline (`presence_broadcast`).

use std::time::{SystemTime, UNIX_EPOCH};

use proto::element::Element;
use proto::error::StanzaErrorCondition as Cond;
use proto::jid::Jid;
use proto::ns;

use super::roster::{error_for, result_for};
use super::subscription::is_subscriber;
use super::RosterActor;

pub const NS_LAST: &str = proto::ns::LAST;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The status text of a presence (the first `<status/>`), if not empty.
fn status_of(presence: &Element) -> Option<String> {
    presence
        .get_child("status", ns::CLIENT)
        .map(Element::text)
        .filter(|t| !t.is_empty())
}

impl RosterActor {
    /// Follow the account's availability (from every `PresenceBroadcast`). When its last
    /// resource goes, `presence` is the unavailable presence that took it away: §3's "last
    /// logout" and status message.
    pub(super) fn note_availability(
        &mut self,
        user: &Jid,
        presence: &Element,
        account_available: bool,
    ) {
        if account_available {
            self.online.insert(user.clone());
            return;
        }
        self.online.remove(user);
        if let Err(e) = self.last_set(&user.to_string(), unix_now(), status_of(presence)) {
            tracing::error!(error = %e, "recording last activity failed");
        }
    }

    pub(super) fn last_iq(&mut self, from: &Jid, to: &Jid, iq: &Element) -> Vec<Element> {
        if iq.get_child("query", NS_LAST).is_none() {
            return vec![error_for(iq, Cond::BadRequest)];
        }
        let outcome = match iq.attr("type") {
            Some("get") => self.last_get(from, to).map(|q| result_for(iq, Some(q))),
            _ => Err(Cond::NotAllowed),
        };
        vec![outcome.unwrap_or_else(|cond| error_for(iq, cond))]
    }

    fn last_get(&self, from: &Jid, user: &Jid) -> Result<Element, Cond> {
        if !self.may_see_presence(from, user)? {
            // §3: only those authorised to see the account's presence, else forbidden.
            return Err(Cond::Forbidden);
        }
        let query = Element::new("query", NS_LAST);
        if self.online.contains(user) {
            // §3: an account with an available resource answers 0 seconds.
            return Ok(query.with_attr("seconds", "0"));
        }
        let (at, status) = self
            .last
            .get(&user.to_string())
            .map_err(|_| Cond::InternalServerError)?
            .ok_or(Cond::ItemNotFound)?;
        let query = query.with_attr("seconds", unix_now().saturating_sub(at).to_string());
        Ok(match status {
            Some(s) => query.with_text(s),
            None => query,
        })
    }

    /// The account itself, or a contact with a subscription to its presence (RFC 6121
    /// subscription from or both in the account's roster).
    fn may_see_presence(&self, from: &Jid, user: &Jid) -> Result<bool, Cond> {
        let requester = from.to_bare();
        if requester == *user {
            return Ok(true);
        }
        let item = self
            .rosters
            .item(&user.to_string(), &requester.to_string())
            .map_err(|_| Cond::InternalServerError)?;
        Ok(item.as_ref().is_some_and(is_subscriber))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_the_first_non_empty_status() {
        let p = |xml: &str| Element::parse(xml).unwrap();
        assert_eq!(
            status_of(&p(
                "<presence xmlns='jabber:client' type='unavailable'>\
                 <status>Heading Home</status><status xml:lang='fr'>Parti</status></presence>"
            )),
            Some("Heading Home".to_string())
        );
        assert_eq!(
            status_of(&p("<presence xmlns='jabber:client'><status/></presence>")),
            None
        );
        assert_eq!(status_of(&p("<presence xmlns='jabber:client'/>")), None);
    }
}
