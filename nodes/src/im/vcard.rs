//! vcard-temp (XEP-0054): an account's vCard, set by the account, read by anyone.

use proto::element::Element;
use proto::error::StanzaErrorCondition as Cond;
use proto::jid::Jid;

use super::roster::{error_for, result_for};
use super::writes::write_error;
use super::RosterActor;

pub const NS_VCARD: &str = "vcard-temp";

impl RosterActor {
    pub(super) fn vcard_iq(&mut self, from: &Jid, to: &Jid, iq: &Element) -> Vec<Element> {
        let Some(vcard) = iq.get_child("vCard", NS_VCARD) else {
            return vec![error_for(iq, Cond::BadRequest)];
        };
        let own = from.to_bare() == *to;
        let outcome = match iq.attr("type") {
            Some("get") => self.vcard_get(to, own).map(|v| result_for(iq, v)),
            // §3.2: only the account changes its vCard.
            Some("set") if !own => Err(Cond::Forbidden),
            Some("set") => self.vcard_set(to, vcard).map(|()| result_for(iq, None)),
            _ => Err(Cond::BadRequest),
        };
        vec![outcome.unwrap_or_else(|cond| error_for(iq, cond))]
    }

    fn vcard_get(&self, user: &Jid, own: bool) -> Result<Option<Element>, Cond> {
        let stored = self
            .vcards
            .get(&user.to_string())
            .map_err(|_| Cond::InternalServerError)?;
        match stored {
            Some(xml) => Element::parse(&xml)
                .map(Some)
                .map_err(|_| Cond::InternalServerError),
            // §3.1: the account itself may get an empty vCard (or an error); §3.3: anyone
            // else gets an error, "the same error condition" as for a user that does not
            // exist (against directory harvesting): service-unavailable, which RFC 6121
            // §8.5.1 requires for the latter.
            None if own => Ok(Some(Element::new("vCard", NS_VCARD))),
            None => Err(Cond::ServiceUnavailable),
        }
    }

    /// §3.2: the whole vCard is replaced. Its size is capped by `im.max_vcard_bytes` (the
    /// default, 64 KiB, leaves room for a small avatar; XEP-0153 asks for small ones); a
    /// larger one is `not-acceptable` (the request does not meet the server's criteria,
    /// RFC 6120 §8.3.3.11) and the stored vCard is kept.
    fn vcard_set(&mut self, user: &Jid, vcard: &Element) -> Result<(), Cond> {
        let xml = vcard.to_xml_string();
        let limit = self.limits.max_vcard_bytes;
        if xml.len() > limit {
            self.refuse_over_cap(user, "max_vcard_bytes", limit);
            return Err(Cond::NotAcceptable);
        }
        self.vcard_put(&user.to_string(), &xml).map_err(write_error)
    }
}
