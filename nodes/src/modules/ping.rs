//! XEP-0199: XMPP Ping, answered by the server for itself and for its accounts.

use super::{IqOutcome, IqRequest, IqScope, Module, Registry, Support};
use proto::error::StanzaErrorCondition;
use proto::ns;

pub fn module() -> Box<dyn Module> {
    Box::new(Ping)
}

struct Ping;

impl Module for Ping {
    fn name(&self) -> &'static str {
        "ping"
    }
    fn specs(&self) -> &'static [Support] {
        &[Support {
            spec: "XEP-0199",
            title: "XMPP Ping",
        }]
    }
    fn features(&self) -> &'static [&'static str] {
        &[ns::PING]
    }
    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[ns::PING]
    }
    fn iq_scope(&self) -> IqScope {
        IqScope::ServerAndAccount
    }
    fn iq(&self, req: &IqRequest<'_>, _: &Registry) -> IqOutcome {
        if req.is_set || req.payload.name != "ping" {
            return IqOutcome::Error(StanzaErrorCondition::BadRequest);
        }
        IqOutcome::Result(None)
    }
}
