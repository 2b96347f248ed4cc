//! Multi-User Chat (XEP-0045) as a module: its declarations (specs, `[modules.muc]`), its
//! settings, and the room state machine ([`room`]). A room lives in the account shard of its
//! bare JID (`im::muc` loads it, runs [`room::Room`] and commits what it wrote, replicated
//! like an account's module state: module `muc`, user = the room's bare JID); the component
//! on `conference.<domain>` (`crate::muc`) hands every stanza for a room to that shard.
//! The vocabulary (roles, affiliations, forms, status codes) is `proto::muc`.

pub mod room;

use proto::jid::Jid;

use super::{ConfigOption, Module, Registry, Section, Support};

pub fn module() -> Box<dyn Module> {
    Box::new(Muc {
        settings: Settings::default(),
    })
}

/// Who may create rooms (`[modules.muc] creation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creation {
    /// Any user, local or federated.
    Anyone,
    /// Users of the served domains.
    Local,
    /// Only the JIDs in `admins`.
    Admins,
}

/// `[modules.muc]`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The service's domain; `{domain}` stands for each served domain.
    pub domain: String,
    pub creation: Creation,
    pub admins: Vec<String>,
    pub max_occupants: usize,
    pub max_history: usize,
    pub max_message_bytes: usize,
    /// Keep each room's groupchat messages in its own archive (XEP-0313 §5), when the
    /// `mam` module is on too.
    pub archive: bool,
    /// Rooms one user may have created and not destroyed (0: no limit; `admins` exempt).
    pub max_rooms_per_user: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            domain: "conference.{domain}".into(),
            creation: Creation::Anyone,
            admins: Vec::new(),
            max_occupants: 200,
            max_history: 50,
            max_message_bytes: 16 * 1024,
            archive: true,
            max_rooms_per_user: 100,
        }
    }
}

impl Settings {
    /// The MUC service's domain for served domain `served`.
    pub fn service_domain(&self, served: &str) -> String {
        self.domain.replace("{domain}", served)
    }

    /// Whether `who` is one of the service's `admins` (bare JIDs).
    pub fn is_admin(&self, who: &Jid) -> bool {
        let bare = who.to_bare().to_string();
        self.admins.contains(&bare)
    }

    /// Whether `who` may create a room (`local`: whether it is a user of a served domain).
    pub fn may_create(&self, who: &Jid, local: bool) -> bool {
        match self.creation {
            Creation::Anyone => true,
            Creation::Local => local,
            Creation::Admins => self.is_admin(who),
        }
    }
}

pub struct Muc {
    settings: Settings,
}

impl Muc {
    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}

/// The enabled MUC module, if any.
pub fn get(registry: &Registry) -> Option<&Muc> {
    registry.get::<Muc>()
}

impl Module for Muc {
    fn name(&self) -> &'static str {
        "muc"
    }
    fn specs(&self) -> &'static [Support] {
        &[
            Support {
                spec: "XEP-0045",
                title: "Multi-User Chat (rooms replicated in the account shards)",
            },
            Support {
                spec: "XEP-0249",
                title: "Direct MUC Invitations (passed through)",
            },
            Support {
                spec: "XEP-0410",
                title: "MUC Self-Ping (answered by the room)",
            },
            Support {
                spec: "XEP-0421",
                title: "Anonymous unique occupant identifiers for MUCs",
            },
            Support {
                spec: "XEP-0486",
                title: "MUC Avatars (the room's vcard-temp, set by its owners)",
            },
        ]
    }
    fn options(&self) -> &'static [ConfigOption] {
        &[
            ConfigOption {
                key: "domain",
                default: "\"conference.{domain}\"",
                doc: "the service's domain; `{domain}` stands for each served domain",
            },
            ConfigOption {
                key: "creation",
                default: "\"anyone\"",
                doc: "who may create rooms: `anyone`, `local` (users of the served domains) or `admins`",
            },
            ConfigOption {
                key: "admins",
                default: "[]",
                doc: "bare JIDs that may create rooms when `creation = \"admins\"`",
            },
            ConfigOption {
                key: "max_occupants",
                default: "200",
                doc: "occupants of one room at most (a room's own `maxusers` may be lower)",
            },
            ConfigOption {
                key: "max_history",
                default: "50",
                doc: "groupchat messages a room keeps for history on join",
            },
            ConfigOption {
                key: "max_message_bytes",
                default: "16384",
                doc: "largest groupchat or private message through a room, serialised",
            },
            ConfigOption {
                key: "archive",
                default: "true",
                doc: "keep each room's groupchat messages in the room's own archive, queried at the room's JID (XEP-0313 §5); needs `[modules.mam]` on, and uses its backend",
            },
            ConfigOption {
                key: "max_rooms_per_user",
                default: "100",
                doc: "rooms one user may have created and not yet destroyed (0: no limit; `admins` are exempt); beyond, the creating join is refused with `not-allowed`",
            },
        ]
    }
    fn configure(&mut self, section: &Section) -> Result<(), String> {
        let creation = match section.get::<String>("creation")?.as_str() {
            "anyone" => Creation::Anyone,
            "local" => Creation::Local,
            "admins" => Creation::Admins,
            other => {
                return Err(format!(
                    "creation: {other:?} is not one of anyone, local, admins"
                ))
            }
        };
        let domain: String = section.get("domain")?;
        if domain.is_empty() {
            return Err("domain: empty".into());
        }
        self.settings = Settings {
            domain,
            creation,
            admins: section.get("admins")?,
            max_occupants: section.get("max_occupants")?,
            max_history: section.get("max_history")?,
            max_message_bytes: section.get("max_message_bytes")?,
            archive: section.get("archive")?,
            max_rooms_per_user: section.get("max_rooms_per_user")?,
        };
        Ok(())
    }
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}
