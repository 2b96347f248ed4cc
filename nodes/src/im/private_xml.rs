//! Private XML storage (XEP-0049): per-account, per-namespace XML only the account can read.

use proto::element::Element;
use proto::jid::Jid;

use super::RosterActor;

pub const NS_PRIVATE: &str = "jabber:iq:private";

impl RosterActor {
    pub(super) fn private_iq(&mut self, _from: &Jid, iq: &Element) -> Vec<Element> {
        let _ = &self.private;
        vec![super::roster::error_for(
            iq,
            proto::error::StanzaErrorCondition::FeatureNotImplemented,
        )]
    }
}
