//! Group chat rooms (XEP-0045) in the account shards: a room is stored like an account's
//! module state (module `muc`, user = the room's bare JID), so it lives in the shard of its
//! bare JID, replicated by that shard's Raft group. The shard's leader handles every stanza
//! for the room ([`MucStanza`], one-way, sent by the component on whichever node received
//! the stanza): it loads the room from its trees (the store is the truth, so a new leader
//! after a failover serves the room, occupants included, at once), runs the state machine
//! (`modules::muc::room`), commits what it wrote as one batch, and only then routes what it
//! sends through the Router.

use std::ops::Bound;

use actix::prelude::*;
use proto::element::Element;
use proto::jid::Jid;
use serde::{Deserialize, Serialize};
use storage::UserDataWrite;

use super::AccountShard;
use crate::metrics::METRICS;
use crate::modules::muc::room::{self, Input, Room};
use crate::route::to_router::RouteStanza;

/// The module whose state rooms (and the creators' room counts) are.
pub(super) const MODULE: &str = "muc";

/// A stanza for a room (`to` the room's bare JID or one of its occupant JIDs) from a real
/// JID, for the leader of the room's shard.
#[derive(Message, Clone, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct MucStanza {
    /// The room's bare JID (it chooses the shard).
    pub room: Jid,
    /// The real JID of the sender, as its server stamped it.
    pub from: Jid,
    pub to: Jid,
    pub stanza: Element,
    /// Whether the sender is a user of a served domain (the creation policy `local`).
    pub local_sender: bool,
    /// A join that creates the room, already counted in its creator's shard
    /// (`max_rooms_per_user`, `im::muc_limits`). Absent from an older node: false.
    #[serde(default)]
    pub counted: bool,
}

/// The directory entries of one shard's rooms of service `probe.domain()`: (room JID, the
/// entry as stored, `modules::muc::room::DirectoryEntry`). `probe` is any JID of the service
/// that falls in the shard to ask.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "Vec<(String, String)>")]
pub struct MucDirectory {
    pub probe: Jid,
}

impl Handler<MucDirectory> for AccountShard {
    type Result = MessageResult<MucDirectory>;
    fn handle(&mut self, msg: MucDirectory, _: &mut SyncContext<Self>) -> Self::Result {
        let listed = self
            .module_store
            .entries(MODULE, msg.probe.domain())
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "muc: directory unreadable");
                Vec::new()
            });
        MessageResult(listed)
    }
}

/// A page of this shard's rooms of service `service` (after room `after`, at most `limit`),
/// each with its occupants' sessions at the served domains (real full JIDs): what the group
/// chat sweep (`node::muc_sweep`) checks against the routing table. Occupants at other
/// servers are left out: their sessions are not in our table (a bounce removes them). Only
/// this node's own actors are asked (never over the NodeLink), on the shards it serves.
#[derive(Message)]
#[rtype(result = "Vec<(Jid, Vec<Jid>)>")]
pub struct MucLocalOccupants {
    pub service: String,
    pub after: Option<String>,
    pub limit: usize,
}

impl Handler<MucLocalOccupants> for AccountShard {
    type Result = MessageResult<MucLocalOccupants>;
    fn handle(&mut self, msg: MucLocalOccupants, _: &mut SyncContext<Self>) -> Self::Result {
        MessageResult(self.muc_local_occupants(&msg).unwrap_or_else(|e| {
            tracing::warn!(service = %msg.service, error = %e, "muc: rooms unreadable for the sweep");
            Vec::new()
        }))
    }
}

/// Destroy a room (the operator's `switchboard muc destroy`): its occupants hear it (XEP-0045
/// §10.9). The answer: whether there was such a room.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "Result<bool, String>")]
pub struct MucDestroy {
    pub room: Jid,
    pub reason: Option<String>,
}

impl Handler<MucDestroy> for AccountShard {
    type Result = Result<bool, String>;
    fn handle(&mut self, msg: MucDestroy, _: &mut SyncContext<Self>) -> Self::Result {
        self.muc_destroy(msg)
    }
}

/// A room's size before and after a stanza, for the metrics.
struct Counts {
    existed: bool,
    occupants: usize,
}

impl Counts {
    fn of(room: &Room<'_>) -> Counts {
        Counts {
            existed: room.meta.is_some(),
            occupants: if room.meta.is_some() {
                room.occupants.len()
            } else {
                0
            },
        }
    }
}

impl Handler<MucStanza> for AccountShard {
    type Result = ();
    fn handle(&mut self, msg: MucStanza, _: &mut SyncContext<Self>) {
        self.muc_stanza(msg);
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl AccountShard {
    fn muc_stanza(&mut self, msg: MucStanza) {
        let modules = self.modules.clone();
        let Some(muc) = crate::modules::muc::get(&modules) else {
            return;
        };
        let settings = muc.settings();
        let now = now_ms();
        let mut room = Room::new(msg.room.clone(), settings, now);
        // Joins need the history; nothing else does (an unavailable or error presence is
        // no join).
        let with_history = msg.stanza.name == "presence" && msg.stanza.attr("type").is_none();
        if let Err(e) = self.load_room(&mut room, &msg.room.to_string(), with_history) {
            tracing::error!(room = %msg.room, error = %e, "muc: room unreadable");
            return self.muc_refuse(&msg);
        }
        room.archive = self.rooms_archived();
        if room.archive && super::muc_archive::is_mam_request(&msg.to, &msg.stanza) {
            return self.room_mam_iq(&msg, &room);
        }
        if msg.stanza.name == "message" && msg.stanza.attr("type") == Some("groupchat") {
            // The `<stanza-id/>` the room stamps is the archive's id (XEP-0359, XEP-0313 §5).
            room.message_id = Some(self.room_message_id(now));
        }
        room.max_vcard_bytes = self.limits.max_vcard_bytes;
        if let Err(e) = self.load_room_vcard(&mut room, &msg) {
            tracing::error!(room = %msg.room, error = %e, "muc: room vCard unreadable");
            return self.muc_refuse(&msg);
        }
        let may_create = settings.may_create(&msg.from, msg.local_sender);
        if self.muc_count_first(&msg, room.meta.is_some(), may_create) {
            // Back here once the creator's shard counted it (or refused it there).
            return;
        }
        let before = Counts::of(&room);
        room.handle(
            Input {
                from: &msg.from,
                to: &msg.to,
                stanza: msg.stanza.clone(),
                may_create,
            },
            || format!("{:032x}", rand::random::<u128>()),
        );
        let created = !before.existed && room.meta.is_some();
        let creator = self.muc_counted_outcome(&msg, created);
        if let Err(e) = self.muc_commit(&msg.room, before, room, creator) {
            // Nothing was said: the sender may try again (no quorum, leadership moved).
            tracing::warn!(room = %msg.room, error = %e, "muc: room write failed");
            if msg.counted && created {
                self.muc_release(&msg.from.to_bare(), &msg.room);
            }
            self.muc_refuse(&msg);
        }
    }

    /// Commit what the room wrote (one batch: one Raft entry), count it, then route what it
    /// sends. Nothing is sent when the write fails.
    /// `extra`: a write of the room's to commit with it (its creator).
    fn muc_commit(
        &mut self,
        jid: &Jid,
        before: Counts,
        room: Room<'_>,
        extra: Option<UserDataWrite>,
    ) -> Result<(), String> {
        let user = jid.to_string();
        let after = Counts::of(&room);
        let mut fx = room.finish();
        let archive = std::mem::take(&mut fx.archive);
        // The service's directory: entries of the service's JID in the room's shard.
        let directory = |payload: Option<String>| UserDataWrite::Module {
            module: MODULE.into(),
            user: jid.domain().to_owned(),
            key: user.clone(),
            payload,
        };
        let write = if fx.destroy {
            Some(UserDataWrite::Batch(vec![
                UserDataWrite::DeleteUser { user: user.clone() },
                directory(None),
            ]))
        } else {
            let mut writes: Vec<UserDataWrite> = fx
                .writes
                .into_iter()
                .map(|(key, payload)| UserDataWrite::Module {
                    module: MODULE.into(),
                    user: user.clone(),
                    key,
                    payload,
                })
                .collect();
            // The room's archive, in the same batch as its history (embedded backend).
            writes.extend(self.room_archive_writes(jid, &archive));
            writes.extend(extra);
            if let Some(entry) = fx.directory {
                writes.push(directory(
                    entry.and_then(|e| serde_json::to_string(&e).ok()),
                ));
            }
            match writes.len() {
                0 => None,
                1 => writes.pop(),
                _ => Some(UserDataWrite::Batch(writes)),
            }
        };
        // A room going away leaves its creator's count (`max_rooms_per_user`).
        let creator = (fx.destroy && before.existed)
            .then(|| self.muc_creator(jid))
            .flatten();
        if let Some(w) = write {
            self.writer.write(w).map_err(|e| e.to_string())?;
        }
        if let Some(creator) = creator {
            self.muc_release(&creator, jid);
        }
        self.room_archive_after_commit(jid, &archive, fx.destroy && before.existed);
        if fx.created {
            METRICS.muc_rooms.with_label_values(&["created"]).inc();
        }
        if fx.destroy && before.existed {
            METRICS.muc_rooms.with_label_values(&["destroyed"]).inc();
        }
        let (joined, left) = if fx.destroy {
            (0, before.occupants)
        } else {
            (
                after.occupants.saturating_sub(before.occupants),
                before.occupants.saturating_sub(after.occupants),
            )
        };
        if joined > 0 {
            METRICS
                .muc_occupants
                .with_label_values(&["joined"])
                .inc_by(joined as u64);
        }
        if left > 0 {
            METRICS
                .muc_occupants
                .with_label_values(&["left"])
                .inc_by(left as u64);
        }
        METRICS
            .muc_messages
            .with_label_values(&["received"])
            .inc_by(fx.reflected as u64);
        METRICS
            .muc_messages
            .with_label_values(&["delivered"])
            .inc_by(fx.out.len() as u64);
        for stanza in fx.out {
            let from = stanza.attr("from").and_then(|f| Jid::parse(f).ok());
            let to = stanza.attr("to").and_then(|t| Jid::parse(t).ok());
            if let (Some(from), Some(to)) = (from, to) {
                self.router.do_send(RouteStanza { from, to, stanza });
            }
        }
        Ok(())
    }

    /// `switchboard muc destroy`: whether the room existed.
    fn muc_destroy(&mut self, msg: MucDestroy) -> Result<bool, String> {
        let modules = self.modules.clone();
        let Some(muc) = crate::modules::muc::get(&modules) else {
            return Err("group chat is disabled ([modules.muc] enabled = false)".into());
        };
        let mut room = Room::new(msg.room.clone(), muc.settings(), now_ms());
        self.load_room(&mut room, &msg.room.to_string(), false)?;
        if room.meta.is_none() {
            return Ok(false);
        }
        let before = Counts::of(&room);
        room.destroy_by_operator(msg.reason.as_deref());
        self.muc_commit(&msg.room, before, room, None)?;
        Ok(true)
    }

    /// Read the room's entries: its record, affiliations, occupants and (`with_history`)
    /// the last `max_history` messages.
    fn load_room(&self, room: &mut Room<'_>, user: &str, with_history: bool) -> Result<(), String> {
        let store = &self.module_store;
        let get = |key: &str| store.get(MODULE, user, key).map_err(|e| e.to_string());
        room.meta = match get(room::KEY_META)? {
            Some(m) => Some(serde_json::from_str(&m).map_err(|e| e.to_string())?),
            None => None,
        };
        if room.meta.is_none() {
            return Ok(());
        }
        room.next_seq = get(room::KEY_SEQ)?
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        room.affs = match get(room::KEY_AFF)? {
            Some(a) => serde_json::from_str(&a).map_err(|e| e.to_string())?,
            None => Default::default(),
        };
        let occupants_end = prefix_end(room::OCCUPANT_PREFIX);
        for kv in store
            .range(
                MODULE,
                user,
                Bound::Included(room::OCCUPANT_PREFIX),
                Bound::Excluded(occupants_end.as_str()),
                false,
            )
            .map_err(|e| e.to_string())?
        {
            let (k, v) = kv.map_err(|e| e.to_string())?;
            let nick = k.trim_start_matches(room::OCCUPANT_PREFIX).to_owned();
            room.occupants
                .insert(nick, serde_json::from_str(&v).map_err(|e| e.to_string())?);
        }
        if with_history {
            let max = self
                .modules
                .clone()
                .get::<crate::modules::muc::Muc>()
                .map_or(0, |m| m.settings().max_history);
            let end = prefix_end(room::HISTORY_PREFIX);
            let mut newest_first = Vec::new();
            for kv in store
                .range(
                    MODULE,
                    user,
                    Bound::Included(room::HISTORY_PREFIX),
                    Bound::Excluded(end.as_str()),
                    true,
                )
                .map_err(|e| e.to_string())?
                .take(max)
            {
                let (_, v) = kv.map_err(|e| e.to_string())?;
                newest_first.push(serde_json::from_str(&v).map_err(|e| e.to_string())?);
            }
            newest_first.reverse();
            room.history = newest_first;
            if self.rooms_archived() {
                // The archived messages are history from the archive (`im::muc_archive`);
                // the entries above are those it does not hold (older than the archive,
                // or `<no-store/>`).
                let archived = self.room_history_from_archive(user, max)?;
                room.history.extend(archived);
                room.history.sort_by_key(|h| h.ms);
                let excess = room.history.len().saturating_sub(max);
                room.history.drain(..excess);
            }
        }
        Ok(())
    }

    /// See [`MucLocalOccupants`]: the rooms are the service's directory entries in this
    /// shard (every room has one from its creation), in key order from `after`.
    fn muc_local_occupants(&self, msg: &MucLocalOccupants) -> Result<Vec<(Jid, Vec<Jid>)>, String> {
        let store = &self.module_store;
        let lower = msg
            .after
            .as_deref()
            .map_or(Bound::Unbounded, Bound::Excluded);
        let rooms: Vec<String> = store
            .range(MODULE, &msg.service, lower, Bound::Unbounded, false)
            .map_err(|e| e.to_string())?
            .take(msg.limit)
            .map(|kv| kv.map(|(k, _)| k).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let occupants_end = prefix_end(room::OCCUPANT_PREFIX);
        let mut out = Vec::with_capacity(rooms.len());
        for user in rooms {
            let Ok(jid) = Jid::parse(&user) else { continue };
            let mut sessions = Vec::new();
            for kv in store
                .range(
                    MODULE,
                    &user,
                    Bound::Included(room::OCCUPANT_PREFIX),
                    Bound::Excluded(occupants_end.as_str()),
                    false,
                )
                .map_err(|e| e.to_string())?
            {
                let (_, v) = kv.map_err(|e| e.to_string())?;
                let Ok(occ) = serde_json::from_str::<room::Occupant>(&v) else {
                    continue;
                };
                sessions.extend(
                    occ.sessions()
                        .iter()
                        .filter_map(|s| Jid::parse(s).ok())
                        .filter(|s| self.domains.iter().any(|d| d == s.domain())),
                );
            }
            // Every room is listed, so the caller's next page starts after the last one.
            out.push((jid, sessions));
        }
        Ok(out)
    }

    /// A vcard-temp request to the room's bare JID reads the room's vCard (XEP-0486); no
    /// other stanza needs it.
    fn load_room_vcard(&self, room: &mut Room<'_>, msg: &MucStanza) -> Result<(), String> {
        let wanted = room.meta.is_some()
            && msg.stanza.name == "iq"
            && msg.to.resource().is_none()
            && msg
                .stanza
                .children()
                .next()
                .is_some_and(|p| p.ns == room::NS_VCARD);
        if wanted {
            room.vcard = self
                .module_store
                .get(MODULE, &msg.room.to_string(), room::KEY_VCARD)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The room could not act (unreadable, or its write did not commit): the sender of a
    /// request hears `resource-constraint` (RFC 6120 §8.3.3.18, `wait`: retry).
    fn muc_refuse(&self, msg: &MucStanza) {
        if msg.stanza.attr("type") == Some("error") {
            return;
        }
        let mut s = msg.stanza.clone();
        s.set_attr("from", msg.from.to_string());
        s.set_attr("to", msg.to.to_string());
        let reply = proto::error::stanza_error_reply(
            &s,
            proto::error::StanzaErrorCondition::ResourceConstraint,
            None,
        );
        self.router.do_send(RouteStanza {
            from: msg.to.clone(),
            to: msg.from.clone(),
            stanza: reply,
        });
    }
}

/// The first key after every key starting with `prefix` (its last byte + 1; the prefixes
/// here end in `:`).
pub(super) fn prefix_end(prefix: &str) -> String {
    let mut s = prefix.to_owned();
    if let Some(last) = s.pop() {
        s.push(char::from_u32(last as u32 + 1).unwrap_or(last));
    }
    s
}
