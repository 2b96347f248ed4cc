//! XEP-0012 §5: Last Activity of the server itself, which is its uptime. Queries to an
//! account's bare JID are the account's shard's (`im::last`).

use std::time::Instant;

use super::{IqOutcome, IqRequest, IqScope, Module, Registry, Support};
use proto::element::Element;
use proto::error::StanzaErrorCondition;
use proto::ns;

pub fn module() -> Box<dyn Module> {
    Box::new(Uptime {
        started: Instant::now(),
    })
}

struct Uptime {
    started: Instant,
}

impl Module for Uptime {
    fn name(&self) -> &'static str {
        "last"
    }
    fn specs(&self) -> &'static [Support] {
        &[Support {
            spec: "XEP-0012",
            title: "Last Activity",
        }]
    }
    fn features(&self) -> &'static [&'static str] {
        &[ns::LAST]
    }
    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[ns::LAST]
    }
    fn iq_scope(&self) -> IqScope {
        IqScope::ServerAndAccount
    }
    fn iq(&self, req: &IqRequest<'_>, _: &Registry) -> IqOutcome {
        if req.is_set {
            return IqOutcome::Error(StanzaErrorCondition::NotAllowed);
        }
        if req.payload.name != "query" {
            return IqOutcome::Error(StanzaErrorCondition::BadRequest);
        }
        if req.to.local().is_some() {
            // Accounts are answered by their shard, never here.
            return IqOutcome::Error(StanzaErrorCondition::ServiceUnavailable);
        }
        // §5: the seconds the server has been up, and no character data.
        let seconds = self.started.elapsed().as_secs();
        IqOutcome::Result(Some(
            Element::new("query", ns::LAST).with_attr("seconds", seconds.to_string()),
        ))
    }
}
