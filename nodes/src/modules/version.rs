//! XEP-0092: Software Version of the server.

use super::{from_typed, IqOutcome, IqRequest, IqScope, Module, Registry, Support};
use proto::error::StanzaErrorCondition;
use proto::ns;
use xmpp_parsers::version::VersionResult;

pub fn module() -> Box<dyn Module> {
    Box::new(Version)
}

struct Version;

impl Module for Version {
    fn name(&self) -> &'static str {
        "version"
    }
    fn specs(&self) -> &'static [Support] {
        &[Support {
            spec: "XEP-0092",
            title: "Software Version",
        }]
    }
    fn features(&self) -> &'static [&'static str] {
        &[ns::VERSION]
    }
    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[ns::VERSION]
    }
    fn iq_scope(&self) -> IqScope {
        // An account's version is its clients' to tell: refused below, not left to the
        // generic answer, so the error is the same as before modules.
        IqScope::ServerAndAccount
    }
    fn iq(&self, req: &IqRequest<'_>, _: &Registry) -> IqOutcome {
        if req.is_set {
            return IqOutcome::Error(StanzaErrorCondition::NotAllowed);
        }
        if req.to.local().is_some() {
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
