//! vcard-temp (XEP-0054): an account's vCard, set by the account, read by anyone.

use proto::element::Element;
use proto::jid::Jid;

use super::RosterActor;

pub const NS_VCARD: &str = "vcard-temp";

impl RosterActor {
    pub(super) fn vcard_iq(&mut self, _from: &Jid, _to: &Jid, iq: &Element) -> Vec<Element> {
        let _ = &self.vcards;
        vec![super::roster::error_for(
            iq,
            proto::error::StanzaErrorCondition::FeatureNotImplemented,
        )]
    }
}
