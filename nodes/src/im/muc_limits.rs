//! `[modules.muc] max_rooms_per_user`: how many rooms one user may have created and not
//! destroyed. The count belongs to the creator (module `muc`, user = the creator's bare
//! JID, one key `c:<room>` per room), so it lives in the creator's account shard, while the
//! room lives in the room's: a join that would create a room is first sent by the room's
//! shard to the creator's ([`MucCountRoom`]), which refuses it (XEP-0045 §10.1.1:
//! `not-allowed`) or records the room and sends the join back marked counted
//! ([`MucStanza::counted`]); the room's shard then creates the room, storing its creator
//! (key `creator`), and a destroyed room (or a temporary room that emptied) is taken off its
//! creator's count ([`MucReleaseRoom`]). Both operations are one-way (`tell`), so no shard
//! ever waits for another: the creator's and the room's shard may be the same, or each ask
//! the other at once.
//!
//! A join counted for a room that someone else created meanwhile, or whose creation did not
//! commit, is released at once. The count is per room, so a creation retried after a lost
//! answer counts once.

use actix::prelude::*;
use proto::element::Element;
use proto::error::StanzaErrorCondition as Cond;
use proto::jid::Jid;
use serde::{Deserialize, Serialize};
use storage::UserDataWrite;

use super::muc::{MucStanza, MODULE};
use super::AccountShard;
use crate::route::to_router::RouteStanza;
/// The room's entry naming the creator whose count it is in.
pub(super) const KEY_CREATOR: &str = "creator";
/// A creator's entries: one per room it created.
const COUNT_PREFIX: &str = "c:";

/// The write that puts `room` on `creator`'s count (`Some("")`) or takes it off (`None`).
fn count_entry(creator: &str, room: &Jid, payload: Option<String>) -> UserDataWrite {
    UserDataWrite::Module {
        module: MODULE.into(),
        user: creator.to_string(),
        key: format!("{COUNT_PREFIX}{room}"),
        payload,
    }
}

/// For the creator's shard: count the room `join` would create, then send the join back.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct MucCountRoom {
    /// The creator's bare JID (it chooses the shard).
    pub user: Jid,
    pub join: MucStanza,
}

/// For the creator's shard: the room is gone (or was not created after all).
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct MucReleaseRoom {
    pub user: Jid,
    pub room: Jid,
}

impl Handler<MucCountRoom> for AccountShard {
    type Result = ();
    fn handle(&mut self, msg: MucCountRoom, _: &mut SyncContext<Self>) {
        self.muc_count_room(msg);
    }
}

impl Handler<MucReleaseRoom> for AccountShard {
    type Result = ();
    fn handle(&mut self, msg: MucReleaseRoom, _: &mut SyncContext<Self>) {
        let write = count_entry(&msg.user.to_string(), &msg.room, None);
        if let Err(e) = self.writer.write(write) {
            // The creator keeps one room too many on its count; it can destroy another.
            tracing::warn!(user = %msg.user, room = %msg.room, error = %e, "muc: room not taken off its creator's count");
        }
    }
}

impl AccountShard {
    /// In the room's shard: whether `msg` would create a room that must first be counted
    /// (the room does not exist, the stanza is a join its sender may create by, a limit is
    /// set, the sender is no service admin, and it was not counted yet); then it goes to
    /// the creator's shard and true is returned.
    pub(super) fn muc_count_first(
        &self,
        msg: &MucStanza,
        room_exists: bool,
        may_create: bool,
    ) -> bool {
        let modules = self.modules.clone();
        let Some(muc) = crate::modules::muc::get(&modules) else {
            return false;
        };
        let settings = muc.settings();
        let join = msg.stanza.name == "presence"
            && msg.stanza.attr("type").is_none()
            && msg.to.resource().is_some();
        if room_exists
            || !join
            || !may_create
            || msg.counted
            || settings.max_rooms_per_user == 0
            || settings.is_admin(&msg.from)
        {
            return false;
        }
        let Some(shards) = &self.shards else {
            return false;
        };
        let user = msg.from.to_bare();
        shards.tell(
            &user.clone(),
            MucCountRoom {
                user,
                join: msg.clone(),
            },
        );
        true
    }

    fn muc_count_room(&mut self, msg: MucCountRoom) {
        let modules = self.modules.clone();
        let Some(muc) = crate::modules::muc::get(&modules) else {
            return;
        };
        let limit = muc.settings().max_rooms_per_user;
        let user = msg.user.to_string();
        let key = format!("{COUNT_PREFIX}{}", msg.join.room);
        let end = super::muc::prefix_end(COUNT_PREFIX);
        let counted = self.module_store.get(MODULE, &user, &key);
        let held = self.module_store.range(
            MODULE,
            &user,
            std::ops::Bound::Included(COUNT_PREFIX),
            std::ops::Bound::Excluded(end.as_str()),
            false,
        );
        let outcome = match (counted, held) {
            // Counted already (a retried creation): as it was.
            (Ok(Some(_)), _) => Ok(()),
            (Ok(None), Ok(held)) => {
                // At most `limit` entries read, whatever the count.
                if held.take(limit).count() >= limit {
                    Err((
                        Cond::NotAllowed,
                        Some(format!("at most {limit} rooms per user")),
                    ))
                } else {
                    let write = count_entry(&user, &msg.join.room, Some(String::new()));
                    self.writer.write(write).map(|_| ()).map_err(|e| {
                        tracing::warn!(%user, error = %e, "muc: room count not written");
                        (Cond::ResourceConstraint, None)
                    })
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(%user, error = %e, "muc: room count unreadable");
                Err((Cond::InternalServerError, None))
            }
        };
        let mut join = msg.join;
        match outcome {
            Ok(()) => {
                join.counted = true;
                if let Some(shards) = &self.shards {
                    shards.tell(&join.room.clone(), join);
                }
            }
            Err((cond, text)) => {
                // §10.1.1: the creator's join is refused, from the occupant JID it asked.
                let mut s: Element = join.stanza;
                s.set_attr("from", join.from.to_string());
                s.set_attr("to", join.to.to_string());
                let reply = proto::error::stanza_error_reply(&s, cond, text.as_deref());
                self.router.do_send(RouteStanza {
                    from: join.to,
                    to: join.from,
                    stanza: reply,
                });
            }
        }
    }

    /// In the room's shard, after a counted join: the creator to store with a room it
    /// created (`created`), else the count to give back.
    pub(super) fn muc_counted_outcome(
        &self,
        msg: &MucStanza,
        created: bool,
    ) -> Option<UserDataWrite> {
        if !msg.counted {
            return None;
        }
        let creator = msg.from.to_bare();
        if created {
            return Some(UserDataWrite::Module {
                module: MODULE.into(),
                user: msg.room.to_string(),
                key: KEY_CREATOR.into(),
                payload: Some(creator.to_string()),
            });
        }
        // A second counted join of the creator's own, racing the first: the room is its.
        if self.muc_creator(&msg.room).as_ref() != Some(&creator) {
            self.muc_release(&creator, &msg.room);
        }
        None
    }

    /// Take `room` off `creator`'s count (in the creator's shard).
    pub(super) fn muc_release(&self, creator: &Jid, room: &Jid) {
        if let Some(shards) = &self.shards {
            shards.tell(
                &creator.clone(),
                MucReleaseRoom {
                    user: creator.clone(),
                    room: room.clone(),
                },
            );
        }
    }

    /// The creator in whose count the room is (rooms created with no limit set have none).
    pub(super) fn muc_creator(&self, room: &Jid) -> Option<Jid> {
        self.module_store
            .get(MODULE, &room.to_string(), KEY_CREATOR)
            .ok()
            .flatten()
            .and_then(|c| Jid::parse(&c).ok())
    }
}
