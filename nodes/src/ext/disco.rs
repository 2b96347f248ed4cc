//! XEP-0030: Service Discovery. The server's features come from the registered handlers.

use std::collections::BTreeSet;

use super::{from_typed, to_minidom, Extensions, IqHandler, IqOutcome, IqRequest, Support};
use proto::element::Element;
use proto::error::StanzaErrorCondition;
use proto::ns;
use xmpp_parsers::disco::{DiscoInfoQuery, DiscoInfoResult, Identity};

pub struct DiscoInfo;
pub struct DiscoItems;

impl IqHandler for DiscoInfo {
    fn namespace(&self) -> &'static str {
        ns::DISCO_INFO
    }
    fn features(&self) -> &'static [&'static str] {
        &[ns::DISCO_INFO]
    }
    fn supports(&self) -> &'static [Support] {
        &[Support {
            spec: "XEP-0030",
            title: "Service Discovery",
        }]
    }
    fn handle(&self, req: &IqRequest<'_>, ext: &Extensions) -> IqOutcome {
        if req.is_set {
            return IqOutcome::Error(StanzaErrorCondition::NotAllowed);
        }
        let Some(query) = to_minidom(req.payload).and_then(|e| DiscoInfoQuery::try_from(e).ok())
        else {
            return IqOutcome::Error(StanzaErrorCondition::BadRequest);
        };
        if query.node.is_some() {
            return IqOutcome::Error(StanzaErrorCondition::ItemNotFound);
        }
        let (identity, features): (Identity, BTreeSet<String>) = if req.to.local().is_some() {
            (
                Identity::new("account", "registered", "en", ""),
                [ns::DISCO_INFO.to_string()].into(),
            )
        } else {
            (
                Identity::new("server", "im", "en", "Switchboard"),
                ext.server_features()
                    .iter()
                    .map(|f| f.to_string())
                    .collect(),
            )
        };
        let result = DiscoInfoResult {
            node: None,
            identities: vec![identity],
            features,
            extensions: Vec::new(),
        };
        match from_typed(result.into()) {
            Some(el) => IqOutcome::Result(Some(el)),
            None => IqOutcome::Error(StanzaErrorCondition::InternalServerError),
        }
    }
}

impl IqHandler for DiscoItems {
    fn namespace(&self) -> &'static str {
        ns::DISCO_ITEMS
    }
    fn features(&self) -> &'static [&'static str] {
        &[ns::DISCO_ITEMS]
    }
    fn supports(&self) -> &'static [Support] {
        &[]
    }
    fn handle(&self, req: &IqRequest<'_>, _: &Extensions) -> IqOutcome {
        if req.is_set {
            return IqOutcome::Error(StanzaErrorCondition::NotAllowed);
        }
        if req.payload.attr("node").is_some() {
            return IqOutcome::Error(StanzaErrorCondition::ItemNotFound);
        }
        // No components or services are attached yet.
        IqOutcome::Result(Some(Element::new("query", ns::DISCO_ITEMS)))
    }
}
