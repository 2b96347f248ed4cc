//! XEP-0092: Software Version of the server.

use super::{from_typed, Extensions, IqHandler, IqOutcome, IqRequest, Support};
use proto::error::StanzaErrorCondition;
use proto::ns;
use xmpp_parsers::version::VersionResult;

pub struct Version;

impl IqHandler for Version {
    fn namespace(&self) -> &'static str {
        ns::VERSION
    }
    fn features(&self) -> &'static [&'static str] {
        &[ns::VERSION]
    }
    fn supports(&self) -> &'static [Support] {
        &[Support {
            spec: "XEP-0092",
            title: "Software Version",
        }]
    }
    fn handle(&self, req: &IqRequest<'_>, _: &Extensions) -> IqOutcome {
        if req.is_set {
            return IqOutcome::Error(StanzaErrorCondition::NotAllowed);
        }
        if req.to.local().is_some() {
            // An account's software version is its clients' to tell.
            return IqOutcome::Error(StanzaErrorCondition::ServiceUnavailable);
        }
        let result = VersionResult {
            name: "Switchboard".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            os: None,
        };
        match from_typed(result.into()) {
            Some(el) => IqOutcome::Result(Some(el)),
            None => IqOutcome::Error(StanzaErrorCondition::InternalServerError),
        }
    }
}
