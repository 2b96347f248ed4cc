//! XEP-0012 §5: Last Activity of the server itself, which is its uptime. Queries to an
//! account's bare JID are the account's shard's (`im::last`).

use std::time::Instant;

use super::{Extensions, IqHandler, IqOutcome, IqRequest, Support};
use crate::im::NS_LAST;
use proto::element::Element;
use proto::error::StanzaErrorCondition;

pub struct Uptime {
    started: Instant,
}

impl Uptime {
    pub fn new() -> Self {
        Uptime {
            started: Instant::now(),
        }
    }
}

impl IqHandler for Uptime {
    fn namespace(&self) -> &'static str {
        NS_LAST
    }
    fn features(&self) -> &'static [&'static str] {
        &[NS_LAST]
    }
    fn supports(&self) -> &'static [Support] {
        &[Support {
            spec: "XEP-0012",
            title: "Last Activity",
        }]
    }
    fn handle(&self, req: &IqRequest<'_>, _: &Extensions) -> IqOutcome {
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
            Element::new("query", NS_LAST).with_attr("seconds", seconds.to_string()),
        ))
    }
}
