//! XEP-0033 Extended Stanza Addressing, served by the server itself on its domains (§2.2):
//! per-domain presence over federation (issue 22).
//!
//! - Sending: a presence change for contacts on a remote domain goes there once, the
//!   contacts as `bcc` addresses, when the domain has `min_contacts` or more of them and
//!   advertises XEP-0033 in its disco#info (asked once per domain and remembered,
//!   `router::multicast`). Otherwise, and until it has answered, one stanza per contact.
//! - Receiving: a stanza to one of our domains with `<addresses/>` is copied to each
//!   addressee (`router::multicast`): from a remote sender only to addressees at that
//!   domain, a presence only to those whose roster is subscribed to the sender (the
//!   account's shard checks, `im::presence`), so that one stanza cannot reach accounts a
//!   normal broadcast would not; from a local sender to every addressee, as if sent to each.
//!
//! Prosody has no server-side XEP-0033; ejabberd's `mod_multicast` is a separate service.

use proto::ns;

use super::{ConfigOption, Module, Registry, Section, Support};

pub fn module() -> Box<dyn Module> {
    Box::new(Multicast {
        settings: Settings::default(),
    })
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// Contacts on one remote domain from which a presence goes there as one stanza.
    pub min_contacts: usize,
    /// Addressees one stanza may name (more are refused: `not-acceptable`).
    pub max_addresses: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            min_contacts: 2,
            max_addresses: 1000,
        }
    }
}

pub struct Multicast {
    settings: Settings,
}

impl Multicast {
    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}

/// The enabled multicast module, if any.
pub fn get(registry: &Registry) -> Option<&Multicast> {
    registry.get::<Multicast>()
}

impl Module for Multicast {
    fn name(&self) -> &'static str {
        "multicast"
    }
    fn specs(&self) -> &'static [Support] {
        &[Support {
            spec: "XEP-0033",
            title: "Extended Stanza Addressing (per-domain presence over federation)",
        }]
    }
    fn features(&self) -> &'static [&'static str] {
        // §2.2: a server that does multicast itself advertises it on its domain.
        &[ns::ADDRESS]
    }
    fn options(&self) -> &'static [ConfigOption] {
        &[
            ConfigOption {
                key: "min_contacts",
                default: "2",
                doc: "contacts on one remote domain from which a presence change goes there as one stanza with their addresses (when the domain supports XEP-0033)",
            },
            ConfigOption {
                key: "max_addresses",
                default: "1000",
                doc: "addressees one stanza may name, sent or received; a stanza naming more is refused (`not-acceptable`)",
            },
        ]
    }
    fn configure(&mut self, section: &Section) -> Result<(), String> {
        let settings = Settings {
            min_contacts: section.get("min_contacts")?,
            max_addresses: section.get("max_addresses")?,
        };
        if settings.min_contacts < 2 {
            return Err("min_contacts must be 2 or more".into());
        }
        if settings.max_addresses < settings.min_contacts {
            return Err("max_addresses must be at least min_contacts".into());
        }
        self.settings = settings;
        Ok(())
    }
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}
