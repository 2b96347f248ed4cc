//! The extension-module seam: the `Module` contract every XEP implements and the one registry
//! of modules ([`MODULES`]). Prosody's `mod_*.lua` (`module:add_feature`, `module:hook`) and
//! ejabberd's `gen_mod` (options with defaults and docs, `-protocol` declarations) are the
//! models: a module declares in one place the specifications it implements, its disco
//! features and identities, the IQs it answers, its configuration section
//! (`[modules.<name>]`, defaults and one-line docs) and the hooks it wants. disco#info,
//! `switchboard features`, the stream features after authentication and README's
//! configuration reference are all generated from the registry.
//!
//! Adding a XEP is one file in this directory plus one line in [`MODULES`].

pub mod account;
pub mod blocking;
pub mod carbons;
mod config;
mod contact_addresses;
mod csi;
mod disco;
mod last;
pub mod mam;
pub mod muc;
pub mod multicast;
mod offline;
pub mod pep;
mod ping;
pub mod privacy;
mod private;
mod roster;
mod session;
pub mod stream_management;
mod time;
mod vcard;
mod version;

use std::collections::BTreeSet;
use std::sync::Arc;

use proto::element::Element;
use proto::error::StanzaErrorCondition;
use proto::jid::Jid;

use crate::config::ModulesConfig;

pub use account::{AccountCtx, AccountIq, AccountState};
pub use config::{reference_markdown, ConfigOption, Section};
pub use session::{
    AccountSeeds, Effects, Hooks, Outbound, ResourceFlag, SessionEffects, SessionModule,
};

/// Every module, in the order their hooks run. One line per module.
const MODULES: &[fn() -> Box<dyn Module>] = &[
    roster::module,
    offline::module,
    disco::module,
    ping::module,
    version::module,
    last::module,
    time::module,
    contact_addresses::module,
    multicast::module,
    // Filters before the modules that look at what passes them.
    blocking::module,
    privacy::module,
    // Before csi, which may hold what reaches the client: PEP drops the notifications the
    // client did not ask for first (XEP-0163 §4.3.3).
    pep::module,
    carbons::module,
    csi::module,
    // Per-account state hosted by the account shards.
    private::module,
    vcard::module,
    mam::module,
    // Group chat: rooms hosted by the account shards, served by a component.
    muc::module,
    stream_management::module,
];

/// A specification (RFC or XEP) a module implements, for the support table.
#[derive(Debug, Clone, Copy)]
pub struct Support {
    pub spec: &'static str,
    pub title: &'static str,
}

/// A disco identity (XEP-0030 §3.1).
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    pub category: &'static str,
    pub kind: &'static str,
    pub name: &'static str,
}

/// An IQ get/set addressed to the server or to an account's bare JID.
pub struct IqRequest<'a> {
    /// The addressed entity: a served domain, or an account's bare JID.
    pub to: &'a Jid,
    pub is_set: bool,
    /// The single child of the IQ.
    pub payload: &'a Element,
}

#[derive(Debug)]
pub enum IqOutcome {
    /// `type='result'` with an optional payload.
    Result(Option<Element>),
    /// Stanzas for the requester first, then the result (XEP-0313 §4.2: an archive query's
    /// `<result/>` messages precede the IQ result that ends it).
    ResultAfter {
        stanzas: Vec<Element>,
        payload: Option<Element>,
    },
    Error(StanzaErrorCondition),
}

/// Where a module's IQ handler answers (RFC 6120 §10.3.3: an IQ to the server is the
/// server's; an IQ to an account's bare JID is answered by the server on its behalf).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IqScope {
    /// Only `to` a served domain (or no `to`, from a client: its own server).
    Server,
    /// A served domain or an account's bare JID.
    ServerAndAccount,
}

/// The contract. Everything but [`name`](Module::name) has a default, so a module states
/// only what it does.
pub trait Module: Send + Sync {
    /// The configuration section (`[modules.<name>]`) and the name in logs.
    fn name(&self) -> &'static str;
    /// Specifications implemented, for `switchboard features`.
    fn specs(&self) -> &'static [Support] {
        &[]
    }
    /// Features the server's disco#info lists.
    fn features(&self) -> &'static [&'static str] {
        &[]
    }
    /// Features an account's bare JID lists in its disco#info (XEP-0030 §3.1: the server
    /// answers for the account), e.g. its archive (XEP-0313 §6.1).
    fn account_features(&self) -> &'static [&'static str] {
        &[]
    }
    /// Identities an account's bare JID lists in its disco#info besides `account/registered`
    /// (XEP-0163 §6.1: `pubsub/pep`).
    fn account_identities(&self) -> &'static [Identity] {
        &[]
    }
    /// Identities the server's disco#info lists besides `server/im`.
    fn identities(&self) -> &'static [Identity] {
        &[]
    }
    /// Data forms (XEP-0128) the server's disco#info carries.
    fn disco_extensions(&self) -> Vec<Element> {
        Vec::new()
    }
    /// Options of `[modules.<name>]` besides `enabled`, with their defaults and docs.
    fn options(&self) -> &'static [ConfigOption] {
        &[]
    }
    /// Take the module's section (defaults filled in, unknown keys already refused).
    fn configure(&mut self, _section: &Section) -> Result<(), String> {
        Ok(())
    }
    /// Whether a default configuration enables it.
    fn enabled_by_default(&self) -> bool {
        true
    }
    /// Whether `enabled = false` is allowed (not for modules whose state other parts of
    /// the node serve regardless).
    fn can_disable(&self) -> bool {
        true
    }
    /// IQ payload namespaces this module answers statelessly in [`iq`](Module::iq).
    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[]
    }
    fn iq_scope(&self) -> IqScope {
        IqScope::Server
    }
    /// Answer an IQ get/set in one of [`iq_namespaces`](Module::iq_namespaces).
    fn iq(&self, _req: &IqRequest<'_>, _registry: &Registry) -> IqOutcome {
        IqOutcome::Error(StanzaErrorCondition::ServiceUnavailable)
    }
    /// Stream features offered to a client once it authenticated (RFC 6120 §4.3.2), e.g.
    /// `<csi xmlns='urn:xmpp:csi:0'/>`.
    fn stream_features(&self) -> Vec<Element> {
        Vec::new()
    }
    /// Namespaces of top-level elements (nonzas, not stanzas) a bound client may send, e.g.
    /// XEP-0352's `<active/>`; they reach [`SessionModule::nonza`].
    fn nonza_namespaces(&self) -> &'static [&'static str] {
        &[]
    }
    /// Per-session state and hooks, made when a resource binds; `None`: the module has no
    /// session hooks.
    fn session(&self) -> Option<Box<dyn SessionModule>> {
        None
    }
    /// Per-account state, hosted by the account's shard: the IQs it answers on an account's
    /// bare JID and its availability hook (see [`account`]). `None`: the module keeps nothing
    /// per account.
    fn account(&self) -> Option<&dyn AccountState> {
        None
    }
    /// The module itself, for a core part that reads its settings through
    /// [`Registry::get`] (stream management's, read by the c2s session).
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

/// The modules a node runs, configured and in hook order.
pub struct Registry {
    modules: Vec<Box<dyn Module>>,
}

/// What the core (not a module) implements, for the support table.
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

impl Registry {
    /// Every registered module with its defaults (tests, benches, `switchboard features`
    /// without a configuration).
    pub fn with_defaults() -> Registry {
        match Registry::configure(&ModulesConfig::default()) {
            Ok(r) => r,
            // The defaults are the modules' own declarations; `defaults_configure` tests them.
            Err(e) => panic!("module defaults do not configure: {e}"),
        }
    }

    /// The registered modules configured from `[modules]`: a section for an unknown module,
    /// an unknown option or a value of the wrong type is an error naming the key.
    pub fn configure(modules_config: &ModulesConfig) -> Result<Registry, String> {
        let all: Vec<Box<dyn Module>> = MODULES.iter().map(|make| make()).collect();
        config::check_sections(modules_config, all.iter().map(|m| m.name()))?;
        let mut modules = Vec::new();
        for mut m in all {
            let section = config::section(
                modules_config,
                m.name(),
                m.enabled_by_default(),
                m.options(),
            )?;
            if !section.enabled() {
                if !m.can_disable() {
                    return Err(format!("modules.{}: cannot be disabled", m.name()));
                }
                continue;
            }
            m.configure(&section)
                .map_err(|e| format!("modules.{}: {e}", m.name()))?;
            modules.push(m);
        }
        Ok(Registry { modules })
    }

    /// Every module the registry knows, whether enabled or not, with its options (README's
    /// configuration reference).
    pub fn declared() -> Vec<Box<dyn Module>> {
        MODULES.iter().map(|make| make()).collect()
    }

    /// The enabled module of type `T`, if any.
    pub fn get<T: 'static>(&self) -> Option<&T> {
        self.modules
            .iter()
            .find_map(|m| m.as_any().and_then(|a| a.downcast_ref::<T>()))
    }

    pub fn modules(&self) -> impl Iterator<Item = &dyn Module> {
        self.modules.iter().map(|m| m.as_ref())
    }

    /// Features for the server's disco#info, sorted and without duplicates.
    pub fn server_features(&self) -> Vec<&'static str> {
        let f: BTreeSet<&'static str> = self
            .modules
            .iter()
            .flat_map(|m| m.features().iter().copied())
            .collect();
        f.into_iter().collect()
    }

    /// Features for an account's disco#info, sorted and without duplicates.
    pub fn account_features(&self) -> Vec<&'static str> {
        let f: BTreeSet<&'static str> = self
            .modules
            .iter()
            .flat_map(|m| m.account_features().iter().copied())
            .collect();
        f.into_iter().collect()
    }

    pub fn account_identities(&self) -> impl Iterator<Item = &Identity> {
        self.modules
            .iter()
            .flat_map(|m| m.account_identities().iter())
    }

    pub fn identities(&self) -> impl Iterator<Item = &Identity> {
        self.modules.iter().flat_map(|m| m.identities().iter())
    }

    pub fn disco_extensions(&self) -> Vec<Element> {
        self.modules
            .iter()
            .flat_map(|m| m.disco_extensions())
            .collect()
    }

    /// Every specification implemented, core first.
    pub fn support_table(&self) -> Vec<Support> {
        let mut t: Vec<Support> = CORE_SUPPORT.to_vec();
        for s in self.modules.iter().flat_map(|m| m.specs().iter()) {
            if !t.iter().any(|x| x.spec == s.spec) {
                t.push(*s);
            }
        }
        t
    }

    /// Stream features for an authenticated client, in module order.
    pub fn stream_features(&self) -> Vec<Element> {
        self.modules
            .iter()
            .flat_map(|m| m.stream_features())
            .collect()
    }

    pub fn nonza_namespaces(&self) -> Vec<&'static str> {
        self.modules
            .iter()
            .flat_map(|m| m.nonza_namespaces().iter().copied())
            .collect()
    }

    /// The session hooks of every module that has some, for a newly bound resource.
    pub fn session_hooks(self: &Arc<Self>) -> Hooks {
        Hooks::new(self.modules.iter().filter_map(|m| m.session()).collect())
    }

    /// Answer an IQ get/set addressed to the server or an account. `None`: no module answers
    /// the payload's namespace there (the caller replies service-unavailable).
    pub fn handle_iq(&self, req: &IqRequest<'_>) -> Option<IqOutcome> {
        let to_account = req.to.local().is_some();
        let module = self.modules.iter().find(|m| {
            m.iq_namespaces().contains(&req.payload.ns.as_str())
                && (!to_account || m.iq_scope() == IqScope::ServerAndAccount)
        })?;
        Some(module.iq(req, self))
    }
}

impl Registry {
    /// The enabled module whose account state answers IQs in `ns` on an account's bare JID.
    pub fn account_state(&self, ns: &str) -> Option<(&'static str, &dyn AccountState)> {
        self.account_states()
            .find(|(_, a)| a.namespaces().contains(&ns))
    }

    /// Every enabled module's account state, in hook order, with the module's name (its
    /// store).
    pub fn account_states(&self) -> impl Iterator<Item = (&'static str, &dyn AccountState)> {
        self.modules
            .iter()
            .filter_map(|m| m.account().map(|a| (m.name(), a)))
    }
}

/// The namespaces any registered module (enabled or not) answers on an account's bare JID:
/// IQs in them go to the account's shard, which answers `service-unavailable` for a module
/// that is disabled.
pub fn account_namespaces() -> &'static [&'static str] {
    static NS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    NS.get_or_init(|| {
        Registry::declared()
            .iter()
            .filter_map(|m| m.account().map(|a| a.namespaces()))
            .flatten()
            .copied()
            .collect()
    })
}

/// Convert a typed xmpp-parsers payload to our element type (IQ handlers; not the hot path).
fn from_typed(el: minidom::Element) -> Option<Element> {
    Element::parse(&String::from(&el)).ok()
}

/// Convert our element to minidom for typed parsing with xmpp-parsers.
fn to_minidom(el: &Element) -> Option<minidom::Element> {
    el.to_xml_string().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_configure() {
        let r = Registry::configure(&ModulesConfig::default()).expect("defaults");
        assert!(r.modules().any(|m| m.name() == "disco"));
    }

    #[test]
    fn module_names_are_unique() {
        let names: Vec<&str> = MODULES.iter().map(|m| m().name()).collect();
        let unique: BTreeSet<&&str> = names.iter().collect();
        assert_eq!(names.len(), unique.len(), "{names:?}");
    }
}
