//! Blocking command (XEP-0191).

use proto::element::Element;
use proto::jid::Jid;

use super::RosterActor;

pub const NS_BLOCKING: &str = "urn:xmpp:blocking";

impl RosterActor {
    pub(super) fn blocking_iq(&mut self, _from: &Jid, iq: &Element) -> Vec<Element> {
        let _ = &self.blocking;
        vec![super::roster::error_for(
            iq,
            proto::error::StanzaErrorCondition::FeatureNotImplemented,
        )]
    }
}
