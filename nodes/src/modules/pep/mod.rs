//! Personal eventing (XEP-0163) on the publish-subscribe core of `proto::pubsub` (XEP-0060):
//! every account is a PEP service. Nodes and items are the module's account state (the
//! module store through the account's shard, so a cluster replicates them like a vCard);
//! notifications go to the account's own resources and to its contacts with a `from` or
//! `both` subscription, and each recipient session keeps those whose node its client's
//! entity capabilities (XEP-0115) list as `<node>+notify` ([`session`]).

mod avatar;
mod bookmarks;
mod compat;
mod service;
mod session;

use std::sync::Arc;

use super::account::AccountState;
use super::session::SessionModule;
use super::{ConfigOption, Identity, Module, Section, Support};
use proto::pubsub::{NS_OWNER, NS_PUBSUB};

pub fn module() -> Box<dyn Module> {
    Box::new(Pep {
        limits: Limits::default(),
        caps: Arc::new(session::CapsCache::new(1000)),
    })
}

/// The caps of `[modules.pep]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_nodes: usize,
    pub max_items_per_node: u32,
    pub max_item_bytes: usize,
    pub max_bytes_per_account: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_nodes: 256,
            max_items_per_node: 256,
            max_item_bytes: 64 * 1024,
            max_bytes_per_account: 1024 * 1024,
        }
    }
}

struct Pep {
    limits: Limits,
    caps: Arc<session::CapsCache>,
}

const FEATURES: &[&str] = &[
    NS_PUBSUB,
    "http://jabber.org/protocol/pubsub#access-open",
    "http://jabber.org/protocol/pubsub#access-presence",
    "http://jabber.org/protocol/pubsub#access-roster",
    "http://jabber.org/protocol/pubsub#access-whitelist",
    "http://jabber.org/protocol/pubsub#auto-create",
    "http://jabber.org/protocol/pubsub#auto-subscribe",
    "http://jabber.org/protocol/pubsub#config-node",
    "http://jabber.org/protocol/pubsub#create-and-configure",
    "http://jabber.org/protocol/pubsub#create-nodes",
    "http://jabber.org/protocol/pubsub#delete-items",
    "http://jabber.org/protocol/pubsub#delete-nodes",
    "http://jabber.org/protocol/pubsub#filtered-notifications",
    "http://jabber.org/protocol/pubsub#item-ids",
    "http://jabber.org/protocol/pubsub#last-published",
    "http://jabber.org/protocol/pubsub#persistent-items",
    "http://jabber.org/protocol/pubsub#publish",
    "http://jabber.org/protocol/pubsub#publish-options",
    "http://jabber.org/protocol/pubsub#purge-nodes",
    "http://jabber.org/protocol/pubsub#retract-items",
    "http://jabber.org/protocol/pubsub#retrieve-affiliations",
    "http://jabber.org/protocol/pubsub#retrieve-default",
    "http://jabber.org/protocol/pubsub#retrieve-items",
    proto::bookmarks::FEATURE_COMPAT,
    proto::bookmarks::FEATURE_COMPAT_PEP,
    proto::avatar::FEATURE_CONVERSION,
];

impl Module for Pep {
    fn name(&self) -> &'static str {
        "pep"
    }
    fn specs(&self) -> &'static [Support] {
        &[
            Support {
                spec: "XEP-0060",
                title: "Publish-Subscribe (the part PEP uses)",
            },
            Support {
                spec: "XEP-0163",
                title: "Personal Eventing Protocol",
            },
            Support {
                spec: "XEP-0115",
                title: "Entity Capabilities (notification filtering)",
            },
            Support {
                spec: "XEP-0402",
                title: "PEP Native Bookmarks (with #compat and #compat-pep: XEP-0048 kept in step)",
            },
            Support {
                spec: "XEP-0398",
                title: "User Avatar to vCard-Based Avatars Conversion",
            },
        ]
    }
    fn account_features(&self) -> &'static [&'static str] {
        FEATURES
    }
    fn features(&self) -> &'static [&'static str] {
        // On the server too, as Prosody and ejabberd do: clients (profanity 0.13) look for
        // `#publish-options` on their server before using it for OMEMO's nodes.
        FEATURES
    }
    fn account_identities(&self) -> &'static [Identity] {
        // XEP-0163 §6.1.
        &[Identity {
            category: "pubsub",
            kind: "pep",
            name: "",
        }]
    }
    fn options(&self) -> &'static [ConfigOption] {
        &[
            ConfigOption {
                key: "max_nodes",
                default: "256",
                doc: "PEP nodes per account",
            },
            ConfigOption {
                key: "max_items_per_node",
                default: "256",
                doc: "items a node keeps at most (what `pubsub#max_items = max` means)",
            },
            ConfigOption {
                key: "max_item_bytes",
                default: "65536",
                doc: "largest item payload, serialised",
            },
            ConfigOption {
                key: "max_bytes_per_account",
                default: "1048576",
                doc: "item bytes an account keeps in all its nodes",
            },
            ConfigOption {
                key: "caps_cache_size",
                default: "1000",
                doc: "entity capabilities (XEP-0115) remembered per node, verified",
            },
        ]
    }
    fn configure(&mut self, section: &Section) -> Result<(), String> {
        self.limits = Limits {
            max_nodes: section.get("max_nodes")?,
            max_items_per_node: section.get("max_items_per_node")?,
            max_item_bytes: section.get("max_item_bytes")?,
            max_bytes_per_account: section.get("max_bytes_per_account")?,
        };
        self.caps = Arc::new(session::CapsCache::new(section.get("caps_cache_size")?));
        Ok(())
    }
    fn account(&self) -> Option<&dyn AccountState> {
        Some(self)
    }
    fn session(&self) -> Option<Box<dyn SessionModule>> {
        Some(Box::new(session::PepSession::new(self.caps.clone())))
    }
}

impl AccountState for Pep {
    fn namespaces(&self) -> &'static [&'static str] {
        // disco#items on an account lists its nodes (XEP-0163 §9); disco#info stays the
        // disco module's (it needs no store).
        &[NS_PUBSUB, NS_OWNER, proto::ns::DISCO_ITEMS]
    }
    fn iq(&self, ctx: &mut super::AccountCtx<'_>, req: &super::AccountIq<'_>) -> super::IqOutcome {
        service::iq(&self.limits, ctx, req)
    }
    fn wants_contact_available(&self) -> bool {
        true
    }
    fn contact_available(&self, ctx: &mut super::AccountCtx<'_>, who: &proto::jid::Jid) {
        service::send_last_items(ctx, who);
    }
    fn session_seed(&self, ctx: &super::AccountCtx<'_>) -> Option<String> {
        // XEP-0398 §4: the session puts the photo's hash in the client's presence.
        avatar::vcard_photo_id(ctx)
    }
    fn after_own_set(
        &self,
        ctx: &mut super::AccountCtx<'_>,
        module: &'static str,
        req: &super::AccountIq<'_>,
    ) {
        compat::after_own_set(&self.limits, ctx, module, req);
    }
}
