//! XEP-0313 Message Archive Management with XEP-0359 stanza ids and XEP-0059 paging: every
//! chat or normal message with a body that a local account sends or receives is kept in the
//! account's archive, and its clients read it back page by page.
//!
//! The module's parts, by where they run:
//! - `router::archiver` (the Router's thread): decides what a routed message adds to which archive,
//!   assigns the time-ordered id ([`proto::stanza_id::ArchiveId`]), stamps the recipient's
//!   `<stanza-id/>` on the delivered message (stripping forged ones) and queues the entries,
//!   batched per account shard (group commit: one shard write for many messages).
//! - [`AccountState`] (the account shard's thread): `ArchiveAppend` applies the account's
//!   preferences (XEP-0441) and writes a batch; queries, preferences and metadata are IQs to
//!   the account's bare JID, answered here from the [`backend`].
//! - retention (`im::archive`): a periodic pass on each served shard deletes in small batches
//!   what is older than `retention_days` or beyond `max_messages_per_account`.

pub mod backend;
mod query;

use std::sync::OnceLock;

use proto::element::Element;
use proto::error::StanzaErrorCondition as Cond;
use proto::mam::{DefaultPref, MamPrefs};
use proto::ns;

use super::account::{AccountCtx, AccountIq, AccountState};
use super::{ConfigOption, IqOutcome, Module, Registry, Section, Support};
use crate::metrics::METRICS;
pub use backend::Backend;

/// The most messages one page may hold, whatever the client asks (XEP-0313 §4.3: the server
/// may return fewer than asked).
pub const MAX_PAGE_CAP: usize = 250;
/// The module store key of an account's preferences (module `mam`; the messages are in
/// `mam_archive`).
const PREFS_KEY: &str = "prefs";

pub fn module() -> Box<dyn Module> {
    Box::new(Mam {
        settings: Settings::default(),
        backend: OnceLock::new(),
    })
}

/// `[modules.mam]`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// What is archived for an account that set no preferences (XEP-0441 §2.1.1).
    pub default: DefaultPref,
    /// Page size when the client asks none.
    pub max_page: usize,
    /// Archive chat-state-only messages (XEP-0085) too.
    pub archive_chat_states: bool,
    pub backend: String,
    pub postgres_url: String,
    pub postgres_pool: usize,
    /// Delete messages older than this many days (0: keep them).
    pub retention_days: u64,
    /// Keep at most this many messages per account, the newest (0: no cap).
    pub max_messages_per_account: u64,
    /// Archive writes a node may have queued or in flight, in bytes of XML; beyond, new
    /// messages are delivered but not archived (and counted).
    pub max_pending_bytes: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default: DefaultPref::Always,
            max_page: 50,
            archive_chat_states: false,
            backend: "embedded".into(),
            postgres_url: String::new(),
            postgres_pool: 8,
            retention_days: 0,
            max_messages_per_account: 0,
            max_pending_bytes: 64 * 1024 * 1024,
        }
    }
}

pub struct Mam {
    settings: Settings,
    /// Opened when the node starts ([`Mam::open`]); `switchboard features` never opens it.
    backend: OnceLock<Backend>,
}

impl Mam {
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Open the configured backend: PostgreSQL is connected and its schema migrated now, so
    /// that a wrong URL or an unreachable database stops the start with a clear message.
    pub fn open(&self) -> Result<&Backend, String> {
        if let Some(b) = self.backend.get() {
            return Ok(b);
        }
        let backend = match self.settings.backend.as_str() {
            "postgres" => Backend::Postgres(
                backend::Pg::open(&self.settings.postgres_url, self.settings.postgres_pool)
                    .map_err(|e| format!("modules.mam: {e}"))?,
            ),
            _ => Backend::Embedded,
        };
        Ok(self.backend.get_or_init(|| backend))
    }

    /// The opened backend (the embedded one if the node did not open any: tests, tools).
    pub fn backend(&self) -> &Backend {
        self.backend.get_or_init(|| Backend::Embedded)
    }
}

/// The enabled archive module, if any.
pub fn get(registry: &Registry) -> Option<&Mam> {
    registry.get::<Mam>()
}

impl Module for Mam {
    fn name(&self) -> &'static str {
        "mam"
    }
    fn specs(&self) -> &'static [Support] {
        &[
            Support {
                spec: "XEP-0313",
                title: "Message Archive Management (urn:xmpp:mam:2, #extended)",
            },
            Support {
                spec: "XEP-0359",
                title: "Unique and Stable Stanza IDs",
            },
            Support {
                spec: "XEP-0059",
                title: "Result Set Management (archive paging)",
            },
            Support {
                spec: "XEP-0441",
                title: "Message Archive Management Preferences",
            },
        ]
    }
    fn features(&self) -> &'static [&'static str] {
        // XEP-0359 §5: the server advertises it assigns stanza ids.
        &[ns::SID]
    }
    fn account_features(&self) -> &'static [&'static str] {
        // XEP-0313 §6.1: the archive is the account's, advertised on its bare JID.
        &[ns::MAM, ns::MAM_EXTENDED, ns::SID]
    }
    fn options(&self) -> &'static [ConfigOption] {
        &[
            ConfigOption {
                key: "default",
                default: "\"always\"",
                doc: "what is archived for an account without preferences: `always`, `roster` (contacts only) or `never`",
            },
            ConfigOption {
                key: "max_page",
                default: "50",
                doc: "messages per page when the client asks no RSM `max` (a client's `max` is capped at 250)",
            },
            ConfigOption {
                key: "archive_chat_states",
                default: "false",
                doc: "also archive messages that carry only a chat state (XEP-0085)",
            },
            ConfigOption {
                key: "backend",
                default: "\"embedded\"",
                doc: "`embedded` (in the account's shard, replicated with it) or `postgres`",
            },
            ConfigOption {
                key: "postgres_url",
                default: "\"\"",
                doc: "with `backend = \"postgres\"`: `postgres://user:password@host:port/db` or `host=… user=… dbname=…`; the node creates and migrates the schema",
            },
            ConfigOption {
                key: "postgres_pool",
                default: "8",
                doc: "connections to PostgreSQL at most",
            },
            ConfigOption {
                key: "retention_days",
                default: "0",
                doc: "delete archived messages older than this many days (0: keep them)",
            },
            ConfigOption {
                key: "max_messages_per_account",
                default: "0",
                doc: "keep only an account's newest messages, this many (0: no cap)",
            },
            ConfigOption {
                key: "max_pending_bytes",
                default: "67108864",
                doc: "archive writes a node may have queued for its shards; beyond, messages are delivered but not archived (counted in `switchboard_mam_not_archived_total`)",
            },
        ]
    }
    fn configure(&mut self, section: &Section) -> Result<(), String> {
        let default: String = section.get("default")?;
        let settings = Settings {
            default: DefaultPref::parse(&default).ok_or_else(|| {
                format!("default: {default:?} is not one of always, roster, never")
            })?,
            max_page: section.get("max_page")?,
            archive_chat_states: section.get("archive_chat_states")?,
            backend: section.get("backend")?,
            postgres_url: section.get("postgres_url")?,
            postgres_pool: section.get("postgres_pool")?,
            retention_days: section.get("retention_days")?,
            max_messages_per_account: section.get("max_messages_per_account")?,
            max_pending_bytes: section.get("max_pending_bytes")?,
        };
        if !(1..=MAX_PAGE_CAP).contains(&settings.max_page) {
            return Err(format!("max_page must be between 1 and {MAX_PAGE_CAP}"));
        }
        match settings.backend.as_str() {
            "embedded" => {}
            "postgres" if settings.postgres_url.trim().is_empty() => {
                return Err("backend = \"postgres\" needs postgres_url".into())
            }
            "postgres" => {}
            other => return Err(format!("backend: {other:?} is not embedded or postgres")),
        }
        if settings.postgres_pool == 0 {
            return Err("postgres_pool must be above 0".into());
        }
        self.settings = settings;
        Ok(())
    }
    fn account(&self) -> Option<&dyn AccountState> {
        Some(self)
    }
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

impl AccountState for Mam {
    fn namespaces(&self) -> &'static [&'static str] {
        &[ns::MAM]
    }

    fn iq(&self, ctx: &mut AccountCtx<'_>, req: &AccountIq<'_>) -> IqOutcome {
        // §3: the archive is the account's own (its contacts query a MUC's or a pubsub
        // node's archive, not a user's).
        if !req.own {
            return IqOutcome::Error(Cond::Forbidden);
        }
        let Some(payload) = req.iq.children().next() else {
            return IqOutcome::Error(Cond::BadRequest);
        };
        let (kind, outcome) = match (payload.name.as_str(), req.is_set()) {
            ("query", true) => ("query", query::run(self, ctx, req, payload)),
            // §5.1: the fields a query may use.
            ("query", false) => (
                "form",
                IqOutcome::Result(Some(proto::mam::query_fields_form())),
            ),
            ("metadata", false) => ("metadata", query::metadata(self, ctx)),
            ("prefs", false) => ("prefs", prefs_get(self, ctx)),
            ("prefs", true) => ("prefs", prefs_set(ctx, payload)),
            _ => ("other", IqOutcome::Error(Cond::BadRequest)),
        };
        let result = if matches!(outcome, IqOutcome::Error(_)) {
            "error"
        } else {
            "ok"
        };
        METRICS.mam_queries.with_label_values(&[kind, result]).inc();
        outcome
    }
}

/// The account's stored preferences, or the configured default.
pub fn stored_prefs(stored: Option<String>, default: DefaultPref) -> MamPrefs {
    stored
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(MamPrefs {
            default,
            always: Vec::new(),
            never: Vec::new(),
        })
}

/// XEP-0441 §2.1.
fn prefs_get(mam: &Mam, ctx: &AccountCtx<'_>) -> IqOutcome {
    match ctx.get(PREFS_KEY) {
        Ok(stored) => IqOutcome::Result(Some(
            stored_prefs(stored, mam.settings.default).to_element(),
        )),
        Err(c) => IqOutcome::Error(c),
    }
}

/// XEP-0441 §2.2: the reply is the preferences as stored.
fn prefs_set(ctx: &mut AccountCtx<'_>, payload: &Element) -> IqOutcome {
    let prefs = match MamPrefs::parse(payload) {
        Ok(p) => p,
        Err(e) => return IqOutcome::Error(e.condition()),
    };
    let Ok(json) = serde_json::to_string(&prefs) else {
        return IqOutcome::Error(Cond::InternalServerError);
    };
    ctx.put(PREFS_KEY, Some(json));
    IqOutcome::Result(Some(prefs.to_element()))
}

/// The module name whose store holds the preferences (the shard reads them when archiving).
pub const PREFS_MODULE: &str = "mam";
/// See [`PREFS_KEY`].
pub fn prefs_key() -> &'static str {
    PREFS_KEY
}
