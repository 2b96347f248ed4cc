//! Last activity (XEP-0012): when an account was last available, for those allowed to see
//! its presence.

use proto::element::Element;
use proto::jid::Jid;

use super::RosterActor;

pub const NS_LAST: &str = "jabber:iq:last";

impl RosterActor {
    pub(super) fn last_iq(&mut self, _from: &Jid, _to: &Jid, iq: &Element) -> Vec<Element> {
        let _ = &self.last;
        vec![super::roster::error_for(
            iq,
            proto::error::StanzaErrorCondition::FeatureNotImplemented,
        )]
    }
}
