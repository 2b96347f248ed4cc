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

const MODULE: &str = "muc";

/// A stanza for a room (`to` the room's bare JID or one of its occupant JIDs) from a real
/// JID, for the leader of the room's shard.
#[derive(Message, Serialize, Deserialize)]
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
}

/// The rooms of one shard listed in the directory of service `probe.domain()`: (room JID,
/// name). `probe` is any JID of the service that falls in the shard to ask.
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
        let user = msg.room.to_string();
        let mut room = Room::new(msg.room.clone(), settings, now_ms());
        // Joins need the history; nothing else does.
        let with_history = msg.stanza.name == "presence";
        if let Err(e) = self.load_room(&mut room, &user, with_history) {
            tracing::error!(room = %user, error = %e, "muc: room unreadable");
            return self.muc_refuse(&msg);
        }
        let before = room.occupants.len();
        let existed = room.meta.is_some();
        let may_create = settings.may_create(&msg.from, msg.local_sender);
        room.handle(
            Input {
                from: &msg.from,
                to: &msg.to,
                stanza: msg.stanza.clone(),
                may_create,
            },
            || format!("{:032x}", rand::random::<u128>()),
        );
        let after = if room.meta.is_some() {
            room.occupants.len()
        } else {
            0
        };
        let fx = room.finish();
        // The service's directory: entries of the service's JID in the room's shard.
        let directory = |payload: Option<String>| UserDataWrite::Module {
            module: MODULE.into(),
            user: msg.room.domain().to_owned(),
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
            if let Some(entry) = fx.directory {
                writes.push(directory(entry));
            }
            match writes.len() {
                0 => None,
                1 => writes.pop(),
                _ => Some(UserDataWrite::Batch(writes)),
            }
        };
        if let Some(w) = write {
            if let Err(e) = self.writer.write(w) {
                // Nothing was said: the sender may try again (no quorum, leadership moved).
                tracing::warn!(room = %user, error = %e, "muc: room write failed");
                return self.muc_refuse(&msg);
            }
        }
        if fx.created {
            METRICS.muc_rooms.with_label_values(&["created"]).inc();
        }
        if fx.destroy && existed {
            METRICS.muc_rooms.with_label_values(&["destroyed"]).inc();
        }
        let (joined, left) = if fx.destroy {
            (0, before)
        } else {
            (after.saturating_sub(before), before.saturating_sub(after))
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
fn prefix_end(prefix: &str) -> String {
    let mut s = prefix.to_owned();
    if let Some(last) = s.pop() {
        s.push(char::from_u32(last as u32 + 1).unwrap_or(last));
    }
    s
}
