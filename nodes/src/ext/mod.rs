//! Server-side IQ handlers, one module per XEP. Each declares the namespace it answers, the
//! disco features it adds and the specifications it implements, so disco#info and the
//! `switchboard features` table are generated from the code rather than kept by hand.

mod disco;
mod last;
mod ping;
mod version;

use proto::element::Element;
use proto::error::StanzaErrorCondition;
use proto::jid::Jid;

/// A specification (RFC or XEP) a handler implements, for the support table.
#[derive(Debug, Clone, Copy)]
pub struct Support {
    pub spec: &'static str,
    pub title: &'static str,
}

/// An IQ addressed to the server or to an account's bare JID.
pub struct IqRequest<'a> {
    /// The addressed entity: a served domain, or an account's bare JID.
    pub to: &'a Jid,
    pub is_set: bool,
    /// The single child of the IQ.
    pub payload: &'a Element,
}

pub enum IqOutcome {
    /// `type='result'` with an optional payload.
    Result(Option<Element>),
    Error(StanzaErrorCondition),
}

pub trait IqHandler: Send + Sync {
    /// The namespace of the payload this handler answers.
    fn namespace(&self) -> &'static str;
    /// Features advertised in the server's disco#info.
    fn features(&self) -> &'static [&'static str];
    fn supports(&self) -> &'static [Support];
    fn handle(&self, req: &IqRequest<'_>, ext: &Extensions) -> IqOutcome;
}

/// Every registered handler.
pub struct Extensions {
    handlers: Vec<Box<dyn IqHandler>>,
}

impl Default for Extensions {
    fn default() -> Self {
        Extensions {
            handlers: vec![
                Box::new(disco::DiscoInfo),
                Box::new(disco::DiscoItems),
                Box::new(last::Uptime::new()),
                Box::new(ping::Ping),
                Box::new(version::Version),
            ],
        }
    }
}

/// What the core (not a handler) implements, for the support table.
const CORE_SUPPORT: &[Support] = &[
    Support {
        spec: "RFC 6120",
        title: "XMPP Core: STARTTLS, SASL, resource binding, stream and stanza errors",
    },
    Support {
        spec: "RFC 7622",
        title: "XMPP Address Format (PRECIS)",
    },
    Support {
        spec: "RFC 7677",
        title: "SCRAM-SHA-256 (and SCRAM-SHA-1, SCRAM-SHA-512, -PLUS)",
    },
    Support {
        spec: "RFC 9266",
        title: "Channel bindings for TLS 1.3 (tls-exporter)",
    },
    Support {
        spec: "XEP-0368",
        title: "SRV records for XMPP over TLS: direct TLS listener",
    },
    Support {
        spec: "XEP-0440",
        title: "SASL channel-binding type capability",
    },
];

impl Extensions {
    /// Features for the server's disco#info, sorted and without duplicates.
    pub fn server_features(&self) -> Vec<&'static str> {
        let mut f: Vec<&'static str> = self
            .handlers
            .iter()
            .flat_map(|h| h.features().iter().copied())
            .chain(crate::im::FEATURES.iter().copied())
            .collect();
        f.sort_unstable();
        f.dedup();
        f
    }

    /// Every specification implemented, core first.
    pub fn support_table(&self) -> Vec<Support> {
        let mut t: Vec<Support> = CORE_SUPPORT.to_vec();
        let specs = self
            .handlers
            .iter()
            .flat_map(|h| h.supports().iter())
            .chain(crate::im::SUPPORT.iter());
        for s in specs {
            if !t.iter().any(|x| x.spec == s.spec) {
                t.push(*s);
            }
        }
        t
    }

    /// Answer an IQ of type get or set addressed to the server or an account. `None`: no
    /// handler knows the payload's namespace (the caller replies service-unavailable).
    pub fn handle(&self, req: &IqRequest<'_>) -> Option<IqOutcome> {
        let handler = self
            .handlers
            .iter()
            .find(|h| h.namespace() == req.payload.ns)?;
        Some(handler.handle(req, self))
    }
}

/// Convert a typed xmpp-parsers payload to our element type (handlers only; not the hot path).
fn from_typed(el: minidom::Element) -> Option<Element> {
    Element::parse(&String::from(&el)).ok()
}

/// Convert our element to minidom for typed parsing with xmpp-parsers.
fn to_minidom(el: &Element) -> Option<minidom::Element> {
    el.to_xml_string().parse().ok()
}
