//! Messages the account shards (`AccountShard`) accept. Each operation is defined once, here:
//! the same serde struct is the actor's message and, through `im::remote`
//! (`im_operations!`), what crosses a NodeLink to the shard's leader in a cluster.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use proto::element::Element;
use proto::error::StanzaErrorCondition;
use proto::im::{PresenceToSend, SubscriptionKind};
use proto::jid::Jid;
use proto::privacy::PrivacyRules;
use serde::{Deserialize, Serialize};

/// An IQ get/set addressed to an account's bare JID (by the account itself or by another
/// user) in a namespace the account's shard answers (`im::handles`). The result is what to
/// send the sender, in order: the reply, then e.g. the roster pushes a versioned get asked for.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "Vec<Element>")]
pub struct AccountIq {
    /// The sender's full JID.
    pub from: Jid,
    /// The addressed account (bare JID).
    pub to: Jid,
    pub iq: Element,
    /// False when the account does not exist: the shard answers `service-unavailable`
    /// (RFC 6121 §8.5.1) after the same hop an existing account's IQ takes, so the timing
    /// does not tell the two apart.
    pub exists: bool,
}

/// The user sent a presence subscription stanza (RFC 6121 §3, "user's server").
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct OutboundSubscription {
    pub user: Jid,
    pub contact: Jid,
    pub kind: SubscriptionKind,
    pub stanza: Element,
}

/// A presence probe from a remote entity reached local account `user` (RFC 6121 §4.3.2):
/// answered with the user's presence if `from` is subscribed to it.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct RemoteProbe {
    pub user: Jid,
    pub from: Jid,
}

/// A remote contact's presence that reached local account `user` as one addressee of a
/// per-domain stanza (XEP-0033, `router::multicast`): delivered to its available resources
/// only if `user` is subscribed to `from` (what a per-contact broadcast would have reached).
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct MulticastPresence {
    pub user: Jid,
    pub from: Jid,
    /// The copy for `user` (`to` set, the addresses gone).
    pub stanza: Element,
}

/// `who` (a full JID) sent its initial presence and is subscribed to local account `user`'s
/// presence, or is one of `user`'s own resources: the modules of `user`'s account state that
/// want to know (PEP sends its last items, XEP-0163 §4.3.2).
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct ContactAvailable {
    pub user: Jid,
    pub who: Jid,
}

/// A subscription stanza from `contact` reached local account `user` ("contact's server").
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct InboundSubscription {
    pub user: Jid,
    pub contact: Jid,
    pub kind: SubscriptionKind,
    pub stanza: Element,
    /// The contact's presence change that goes with the stanza (unavailable before it,
    /// available after it); `None` from other servers, which send presence themselves.
    pub sender_presence: Option<PresenceToSend>,
}

/// A resource of `from`'s account broadcast presence; the router has recorded it.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct PresenceBroadcast {
    /// Full JID of the resource.
    pub from: Jid,
    /// The presence as sent (from stamped), or a generated unavailable.
    pub presence: Element,
    /// The resource just became available (initial presence).
    pub initial: bool,
    /// The resource's priority (offline messages go only to non-negative ones).
    pub priority: i8,
    /// Whether the account has an available resource once this presence is applied
    /// (false: its last resource just went unavailable).
    pub account_available: bool,
}

/// A message for an account with no resource to take it (XEP-0160).
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "Result<(), StanzaErrorCondition>")]
pub struct StoreOffline {
    pub user: Jid,
    pub stanza: Element,
}

/// A new leader of the shard learns which sessions of its accounts exist: (full JID,
/// available).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RefreshSessions {
    pub sessions: Vec<(Jid, bool)>,
}

/// The node holding a session that just became able to take stored messages (available,
/// priority >= 0) fetches them one bounded batch at a time, delivers each itself and removes
/// it with [`RemoveOffline`] once written, then fetches the next. While one resource is
/// served, other resources' fetches get nothing (so two resources logging in at once do not
/// both get the backlog). The answer is the batch, oldest first; empty: nothing (more).
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "Vec<(u64, String)>")]
pub struct FetchOffline {
    pub user: Jid,
    /// The resource being served.
    pub holder: Jid,
    /// Only messages after this sequence number (the last of the previous batch; 0 first).
    pub after: u64,
    /// Bounds of the batch (stored XML bytes, messages); at least one message comes
    /// whatever its size. The shard clamps both (`im::offline::MAX_FETCH_BYTES`).
    pub max_bytes: usize,
    pub max_messages: usize,
}

/// Exactly these stored messages (sequence numbers of one batch) were delivered.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "Result<(), String>")]
pub struct RemoveOffline {
    pub user: Jid,
    pub seqs: Vec<u64>,
}

/// `holder`'s delivery ended early (connection gone, removal failed): its claim on the
/// stored messages goes, and what was not removed stays for the next fetch.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct ReleaseOffline {
    pub user: Jid,
    pub holder: Jid,
}

/// An operator's roster import for one account (`switchboard roster import`): each item
/// replaces the stored one; the account's online resources get pushes. The result is how many
/// items changed.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "Result<usize, String>")]
pub struct ImportRoster {
    pub user: Jid,
    pub items: Vec<storage::RosterItem>,
}

/// Delete everything stored for an account (the account itself goes next).
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "Result<(), String>")]
pub struct DeleteAccountData {
    pub user: Jid,
}

/// What a session that is being bound filters: the account's blocklist (XEP-0191) and its
/// privacy lists (XEP-0016); and what modules' account state seeds its session hooks with
/// (`AccountState::session_seed`).
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "Filters")]
pub struct GetFilters {
    pub user: Jid,
}

#[derive(Default, Clone, Serialize, Deserialize)]
#[serde(from = "FiltersWire", into = "FiltersWire")]
pub struct Filters {
    pub blocked: Vec<Jid>,
    pub privacy: Arc<proto::privacy::PrivacyLists>,
    /// (module, payload) for the session's hooks, as `modules::AccountSeeds`.
    pub seeds: Vec<(String, String)>,
}

/// [`Filters`] as it crosses a NodeLink: the compiled lists by name.
#[derive(Serialize, Deserialize)]
struct FiltersWire {
    blocked: Vec<Jid>,
    default: Option<String>,
    lists: Vec<(String, PrivacyRules)>,
    #[serde(default)]
    seeds: Vec<(String, String)>,
}

impl From<Filters> for FiltersWire {
    fn from(f: Filters) -> Self {
        FiltersWire {
            blocked: f.blocked,
            default: f.privacy.default.clone(),
            lists: f
                .privacy
                .lists
                .iter()
                .map(|(k, v)| (k.clone(), (**v).clone()))
                .collect(),
            seeds: f.seeds,
        }
    }
}

impl From<FiltersWire> for Filters {
    fn from(w: FiltersWire) -> Self {
        Filters {
            blocked: w.blocked,
            privacy: Arc::new(proto::privacy::PrivacyLists {
                default: w.default,
                lists: w
                    .lists
                    .into_iter()
                    .map(|(name, rules)| (name, Arc::new(rules)))
                    .collect::<HashMap<_, _>>(),
            }),
            seeds: w.seeds,
        }
    }
}

/// The router bound (`bound`) or dropped a resource of one of the shard's accounts (a
/// resource's active privacy list lives as long as it does).
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct ResourceBinding {
    pub jid: Jid,
    pub bound: bool,
}

/// Archive these messages (XEP-0313), (account, message), all of accounts of one shard, as
/// one write (group commit); the shard drops those the account's preferences exclude. The
/// result is how many were archived. Appending is idempotent: a batch sent again after a
/// lost answer archives nothing twice.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "Result<usize, String>")]
pub struct ArchiveAppend {
    /// An account of the shard (the first entry's), which routes the batch.
    pub user: Jid,
    /// Shared with the Router's archiver, which keeps the batch until it is confirmed (to
    /// send it again) without copying the messages.
    pub entries: Arc<Vec<(Jid, storage::archive::ArchivedMessage)>>,
}

impl ArchiveAppend {
    /// `None` for no entries.
    pub fn new(entries: Arc<Vec<(Jid, storage::archive::ArchivedMessage)>>) -> Option<Self> {
        let user = entries.first()?.0.clone();
        Some(ArchiveAppend { user, entries })
    }
}

/// Empty `user`'s archive (`switchboard mam purge`); how many messages went.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "Result<u64, String>")]
pub struct ArchivePurge {
    pub user: Jid,
}

/// One step of the archive's retention on a shard this node serves (sent by the node's
/// retention timer, never over a NodeLink).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ArchiveRetention {
    /// Only the first shard of a single node walks the node-wide store by age (every
    /// local shard shares it); in a cluster each shard has its own.
    pub by_age: bool,
}
