//! A room's own message archive (XEP-0313 §5 "Querying a MUC archive"), in the room's
//! shard: the groupchat messages the room reflects are archived with the room's bare JID as
//! the owner, through the same `modules::mam` backend as accounts' archives (embedded: in
//! the batch that commits the room's own writes, so one Raft entry carries both; PostgreSQL:
//! written once that batch committed, before the message is routed). Queries to the room's
//! JID are answered by the account archive's query code (`modules::mam`'s `AccountState`),
//! with the room as the archive's owner, after the room's access rule
//! (`Room::may_read_archive`).

use proto::element::Element;
use proto::error::StanzaErrorCondition as Cond;
use proto::jid::Jid;
use proto::ns;
use storage::archive::{ArchiveQuery, ArchivedMessage};
use storage::UserDataWrite;

use super::muc::MucStanza;
use super::AccountShard;
use crate::metrics::METRICS;
use crate::modules::account::{AccountIq, AccountState};
use crate::modules::mam::{self, Backend};
use crate::modules::muc::room::{ArchiveEntry, HistoryEntry, Room};
use crate::modules::IqOutcome;
use crate::route::to_router::RouteStanza;

/// Whether `stanza` (to `to`) is an archive request to the room itself.
pub(super) fn is_mam_request(to: &Jid, stanza: &Element) -> bool {
    stanza.name == "iq"
        && to.resource().is_none()
        && matches!(stanza.attr("type"), Some("get" | "set"))
        && stanza.children().next().is_some_and(|c| c.ns == ns::MAM)
}

fn archived(room: &Jid, e: &ArchiveEntry) -> ArchivedMessage {
    ArchivedMessage {
        id: e.id.0,
        // `with` is the sender's occupant JID (room/nick): a query's `with` names a nick,
        // never a real JID, which an anonymous room must not reveal.
        with: room.to_string(),
        with_resource: e.nick.clone(),
        outgoing: false,
        xml: e.xml.as_str().into(),
    }
}

/// Append what the room archived to `backend` (embedded: the writes to commit).
fn append(
    backend: &Backend,
    room: &Jid,
    entries: &[ArchiveEntry],
) -> Result<Vec<UserDataWrite>, storage::archive::ArchiveError> {
    let owner = room.to_string();
    let msgs: Vec<ArchivedMessage> = entries.iter().map(|e| archived(room, e)).collect();
    let refs: Vec<(String, &ArchivedMessage)> = msgs.iter().map(|m| (owner.clone(), m)).collect();
    backend.append(&refs)
}

impl AccountShard {
    /// Whether this shard's rooms keep archives: `[modules.muc] archive` and the `mam`
    /// module on.
    pub(super) fn rooms_archived(&self) -> bool {
        let modules = self.modules.clone();
        let muc = crate::modules::muc::get(&modules).is_some_and(|m| m.settings().archive);
        muc && mam::get(&modules).is_some()
    }

    /// The id of the groupchat message being handled: an archive id.
    pub(super) fn room_message_id(&mut self, now_ms: u64) -> proto::stanza_id::ArchiveId {
        self.room_ids.next(now_ms)
    }

    /// The embedded archive's writes for what the room archived, to commit with the room's
    /// own (PostgreSQL: none, see [`Self::room_archive_after_commit`]).
    pub(super) fn room_archive_writes(
        &self,
        room: &Jid,
        entries: &[ArchiveEntry],
    ) -> Vec<UserDataWrite> {
        let modules = self.modules.clone();
        let Some(mam) = mam::get(&modules) else {
            return Vec::new();
        };
        if entries.is_empty() || !matches!(mam.backend(), Backend::Embedded) {
            return Vec::new();
        }
        match append(mam.backend(), room, entries) {
            Ok(w) => {
                METRICS
                    .mam_archived
                    .with_label_values(&["groupchat"])
                    .inc_by(entries.len() as u64);
                w
            }
            Err(e) => {
                tracing::warn!(%room, error = %e, "muc: groupchat not archived");
                Vec::new()
            }
        }
    }

    /// Once the room's writes committed: PostgreSQL appends what the room archived, and a
    /// destroyed room's archive is emptied there (the embedded archive went with the room's
    /// `DeleteUser`).
    pub(super) fn room_archive_after_commit(
        &mut self,
        room: &Jid,
        entries: &[ArchiveEntry],
        destroyed: bool,
    ) {
        let modules = self.modules.clone();
        let Some(mam) = mam::get(&modules) else {
            return;
        };
        if !matches!(mam.backend(), Backend::Postgres(_)) {
            return;
        }
        if destroyed {
            if let Err(e) = self.archive_purge(room, "room") {
                tracing::warn!(%room, error = %e, "muc: the destroyed room's archive was not purged");
            }
            return;
        }
        if entries.is_empty() {
            return;
        }
        match append(mam.backend(), room, entries) {
            Ok(_) => METRICS
                .mam_archived
                .with_label_values(&["groupchat"])
                .inc_by(entries.len() as u64),
            Err(e) => {
                METRICS
                    .mam_not_archived
                    .with_label_values(&["backend"])
                    .inc_by(entries.len() as u64);
                tracing::warn!(%room, error = %e, "muc: groupchat not archived");
            }
        }
    }

    /// The room's newest `max` archived messages, oldest first, as history on join
    /// (XEP-0045 §7.2.15): one bounded read, the archive's last page.
    pub(super) fn room_history_from_archive(
        &self,
        room: &str,
        max: usize,
    ) -> Result<Vec<HistoryEntry>, String> {
        let modules = self.modules.clone();
        let Some(mam) = mam::get(&modules) else {
            return Ok(Vec::new());
        };
        if max == 0 {
            return Ok(Vec::new());
        }
        let q = ArchiveQuery {
            max,
            from_end: true,
            ..ArchiveQuery::default()
        };
        let page = mam
            .backend()
            .query(&self.module_store, room, &q)
            .map_err(|e| e.to_string())?;
        Ok(page
            .messages
            .into_iter()
            .map(|m| HistoryEntry {
                ms: m.millis(),
                xml: m.xml.to_string(),
            })
            .collect())
    }

    /// An archive request to the room (XEP-0313 §5): a query (and its form) or the
    /// metadata, answered from the room's archive by the account archive's own code, if
    /// the sender may read it. Preferences are an account's: not a room's.
    pub(super) fn room_mam_iq(&mut self, msg: &MucStanza, room: &Room<'_>) {
        let mut iq = msg.stanza.clone();
        iq.set_attr("from", msg.from.to_string());
        iq.set_attr("to", msg.to.to_string());
        let modules = self.modules.clone();
        let outcome = match (mam::get(&modules), room.may_read_archive(&msg.from)) {
            (None, _) => IqOutcome::Error(Cond::ServiceUnavailable),
            (_, Err(c)) => IqOutcome::Error(c),
            (Some(mam), Ok(())) => {
                let name = iq.children().next().map(|c| c.name.clone());
                match name.as_deref() {
                    Some("query" | "metadata") => {
                        let mut ctx = self.account_ctx(mam::PREFS_MODULE, &msg.room, false);
                        let req = AccountIq {
                            from: &msg.from,
                            // The access rule above stands for the owner's check.
                            own: true,
                            iq: &iq,
                        };
                        mam.iq(&mut ctx, &req)
                    }
                    _ => IqOutcome::Error(Cond::FeatureNotImplemented),
                }
            }
        };
        let (stanzas, payload) = match outcome {
            IqOutcome::Result(p) => (Vec::new(), p),
            IqOutcome::ResultAfter { stanzas, payload } => (stanzas, payload),
            IqOutcome::Error(cond) => {
                let reply = proto::error::stanza_error_reply(&iq, cond, None);
                return self.route_from_room(msg, reply);
            }
        };
        for s in stanzas {
            self.route_from_room(msg, s);
        }
        let mut result = Element::new("iq", ns::CLIENT)
            .with_attr("type", "result")
            .with_attr("id", iq.attr("id").unwrap_or_default())
            .with_attr("from", msg.to.to_string())
            .with_attr("to", msg.from.to_string());
        if let Some(p) = payload {
            result = result.with_child(p);
        }
        self.route_from_room(msg, result);
    }

    fn route_from_room(&self, msg: &MucStanza, stanza: Element) {
        self.router.do_send(RouteStanza {
            from: msg.to.clone(),
            to: msg.from.clone(),
            stanza,
        });
    }
}
