//! XEP-0199: XMPP Ping, answered by the server for itself and for its accounts.

use super::{Extensions, IqHandler, IqOutcome, IqRequest, Support};
use proto::error::StanzaErrorCondition;
use proto::ns;

pub struct Ping;

impl IqHandler for Ping {
    fn namespace(&self) -> &'static str {
        ns::PING
    }
    fn features(&self) -> &'static [&'static str] {
        &[ns::PING]
    }
    fn supports(&self) -> &'static [Support] {
        &[Support {
            spec: "XEP-0199",
            title: "XMPP Ping",
        }]
    }
    fn handle(&self, req: &IqRequest<'_>, _: &Extensions) -> IqOutcome {
        if req.is_set || req.payload.name != "ping" {
            return IqOutcome::Error(StanzaErrorCondition::BadRequest);
        }
        IqOutcome::Result(None)
    }
}
