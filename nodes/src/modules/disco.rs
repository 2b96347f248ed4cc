//! XEP-0030: Service Discovery. The server's identities, features and forms (XEP-0128) are
//! those the registered modules declare.

use std::collections::BTreeSet;

use super::{from_typed, to_minidom, IqOutcome, IqRequest, IqScope, Module, Registry, Support};
use proto::element::{Element, Node};
use proto::error::StanzaErrorCondition;
use proto::ns;
use xmpp_parsers::disco::{DiscoInfoQuery, DiscoInfoResult, Identity};

pub fn module() -> Box<dyn Module> {
    Box::new(Disco)
}

struct Disco;

impl Module for Disco {
    fn name(&self) -> &'static str {
        "disco"
    }
    fn specs(&self) -> &'static [Support] {
        &[Support {
            spec: "XEP-0030",
            title: "Service Discovery",
        }]
    }
    fn features(&self) -> &'static [&'static str] {
        &[ns::DISCO_INFO, ns::DISCO_ITEMS]
    }
    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[ns::DISCO_INFO, ns::DISCO_ITEMS]
    }
    fn iq_scope(&self) -> IqScope {
        IqScope::ServerAndAccount
    }
    fn iq(&self, req: &IqRequest<'_>, registry: &Registry) -> IqOutcome {
        if req.is_set {
            return IqOutcome::Error(StanzaErrorCondition::NotAllowed);
        }
        if req.payload.ns == ns::DISCO_ITEMS {
            return items(req, registry);
        }
        info(req, registry)
    }
}

fn info(req: &IqRequest<'_>, registry: &Registry) -> IqOutcome {
    let Some(query) = to_minidom(req.payload).and_then(|e| DiscoInfoQuery::try_from(e).ok()) else {
        return IqOutcome::Error(StanzaErrorCondition::BadRequest);
    };
    if query.node.is_some() {
        return IqOutcome::Error(StanzaErrorCondition::ItemNotFound);
    }
    let account = req.to.local().is_some();
    let (identities, features): (Vec<Identity>, BTreeSet<String>) = if account {
        let mut features: BTreeSet<String> = [ns::DISCO_INFO.to_string()].into();
        features.extend(registry.account_features().iter().map(|f| f.to_string()));
        let mut ids = vec![Identity::new("account", "registered", "en", "")];
        ids.extend(
            registry
                .account_identities()
                .map(|i| Identity::new(i.category, i.kind, "en", i.name)),
        );
        (ids, features)
    } else {
        let mut ids = vec![Identity::new("server", "im", "en", "Switchboard")];
        ids.extend(
            registry
                .identities()
                .map(|i| Identity::new(i.category, i.kind, "en", i.name)),
        );
        (
            ids,
            registry
                .server_features()
                .iter()
                .map(|f| f.to_string())
                .collect(),
        )
    };
    let result = DiscoInfoResult {
        node: None,
        identities,
        features,
        extensions: Vec::new(),
    };
    let Some(mut el) = from_typed(result.into()) else {
        return IqOutcome::Error(StanzaErrorCondition::InternalServerError);
    };
    if !account {
        // XEP-0128: the forms follow the identities and features.
        el.children
            .extend(registry.disco_extensions().into_iter().map(Node::Element));
    }
    IqOutcome::Result(Some(el))
}

fn items(req: &IqRequest<'_>, registry: &Registry) -> IqOutcome {
    if req.payload.attr("node").is_some() {
        return IqOutcome::Error(StanzaErrorCondition::ItemNotFound);
    }
    let mut query = Element::new("query", ns::DISCO_ITEMS);
    // XEP-0030 §4 / XEP-0045 §6.1: the services on the server's own subdomains, found by
    // clients through the server's items.
    if let (Some(muc), None) = (super::muc::get(registry), req.to.local()) {
        query.push_child(
            Element::new("item", ns::DISCO_ITEMS)
                .with_attr("jid", muc.settings().service_domain(req.to.domain())),
        );
    }
    IqOutcome::Result(Some(query))
}
