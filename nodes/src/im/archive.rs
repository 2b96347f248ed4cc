//! The account shard's side of the message archive (XEP-0313, `modules::mam`): batches of
//! messages to archive (filtered by each account's preferences, XEP-0441, and committed as
//! one write), an operator's purge, and the retention steps (by age and per-account cap),
//! each a small batch so that archive writes and other operations are never stalled for
//! long.

use std::time::{SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use proto::jid::Jid;
use proto::mam::{DefaultPref, MamPrefs};
use storage::archive::{account_key, AccountMap, ArchivedMessage};
use storage::UserDataWrite;

use super::messages::{ArchiveAppend, ArchivePurge, ArchiveRetention};
use super::AccountShard;
use crate::metrics::METRICS;
use crate::modules::mam::{self, backend::Removal, Backend};

/// Messages one retention or purge step deletes at most.
const STEP: usize = 500;
/// Steps of one retention tick at most (the rest waits for the next tick).
const STEPS_PER_TICK: usize = 10;
/// Accounts over their cap trimmed per tick at most.
const TRIMS_PER_TICK: usize = 100;

impl Handler<ArchiveAppend> for AccountShard {
    type Result = Result<usize, String>;
    fn handle(&mut self, msg: ArchiveAppend, _: &mut SyncContext<Self>) -> Self::Result {
        self.archive_append(&msg.entries)
    }
}

impl Handler<ArchivePurge> for AccountShard {
    type Result = Result<u64, String>;
    fn handle(&mut self, msg: ArchivePurge, _: &mut SyncContext<Self>) -> Self::Result {
        self.archive_purge(&msg.user, "purge")
    }
}

impl Handler<ArchiveRetention> for AccountShard {
    type Result = ();
    fn handle(&mut self, msg: ArchiveRetention, _: &mut SyncContext<Self>) {
        self.archive_retention(msg.by_age);
    }
}

/// Accounts whose preferences [`PrefsCache`] holds at most (past it, it starts over).
const MAX_CACHED_PREFS: usize = 65_536;

/// The MAM preferences (XEP-0441) of the accounts whose messages the shard archived lately.
/// Reading them from sled for every account of every batch cost about 1.5 % of a busy
/// node's CPU at the carrier shape, where nearly every message is a new account's. Valid
/// while the preferences' module tree has not been written since (its write count,
/// `ModuleStore::generation`, moves with every write from any store of the placement, an
/// account's deletion and a snapshot's restore) and the configured default is the same.
#[derive(Default)]
pub(super) struct PrefsCache {
    prefs: AccountMap<MamPrefs>,
    /// The write count and the default the entries were read at.
    at: Option<(u64, DefaultPref)>,
}

impl PrefsCache {
    /// Drop everything unless it was read at `generation` with `default`.
    fn check(&mut self, generation: u64, default: DefaultPref) {
        if self.at != Some((generation, default)) || self.prefs.len() >= MAX_CACHED_PREFS {
            self.prefs.clear();
            self.at = Some((generation, default));
        }
    }
}

impl AccountShard {
    /// Whether the preferences of `account` (an account of the shard, as text) keep `msg`.
    fn archives(
        &self,
        prefs: &mut AccountMap<MamPrefs>,
        default: DefaultPref,
        account: &str,
        msg: &ArchivedMessage,
    ) -> bool {
        // Read once per account while the cache holds.
        let p = prefs.entry(account_key(account)).or_insert_with(|| {
            let stored = self
                .module_store
                .get(mam::PREFS_MODULE, account, mam::prefs_key())
                .ok()
                .flatten();
            mam::stored_prefs(stored, default)
        });
        // The roster is read only for an account that archives its contacts only.
        let in_roster = || {
            p.default == DefaultPref::Roster
                && self
                    .rosters
                    .item(account, &msg.with)
                    .ok()
                    .flatten()
                    .is_some()
        };
        // Without `<always/>` and `<never/>` JIDs (XEP-0313 §2.1.2, §2.1.3), the usual case,
        // the default alone decides: no peer JID to parse (PRECIS) for every message.
        if p.always.is_empty() && p.never.is_empty() {
            return p.archives_by_default(in_roster());
        }
        let peer = if msg.with_resource.is_empty() {
            Jid::parse(&msg.with)
        } else {
            Jid::parse(&format!("{}/{}", msg.with, msg.with_resource))
        };
        let Ok(peer) = peer else {
            return false;
        };
        p.archives(&peer, in_roster())
    }

    fn archive_append(&mut self, entries: &[(Jid, ArchivedMessage)]) -> Result<usize, String> {
        let modules = self.modules.clone();
        let Some(mam) = mam::get(&modules) else {
            return Ok(0);
        };
        let default = mam.settings().default;
        // (Taken out while `archives` borrows the shard, put back after the loop.)
        let mut cache = std::mem::take(&mut self.mam_prefs);
        cache.check(self.module_store.generation(mam::PREFS_MODULE), default);
        let mut keep = Vec::with_capacity(entries.len());
        let (mut incoming, mut outgoing) = (0, 0);
        for (user, msg) in entries {
            let account = user.to_string();
            if !self.archives(&mut cache.prefs, default, &account, msg) {
                METRICS.mam_not_archived.with_label_values(&["prefs"]).inc();
                continue;
            }
            if msg.outgoing {
                outgoing += 1;
            } else {
                incoming += 1;
            }
            if mam.settings().max_messages_per_account > 0 {
                self.archive_grown.insert(user.clone());
            }
            keep.push((account, msg));
        }
        self.mam_prefs = cache;
        if keep.is_empty() {
            return Ok(0);
        }
        let n = keep.len();
        let writes = mam.backend().append(&keep).map_err(|e| e.to_string())?;
        if !writes.is_empty() {
            self.writer
                .write(UserDataWrite::Batch(writes))
                .map_err(|e| e.to_string())?;
        }
        METRICS
            .mam_archived
            .with_label_values(&["incoming"])
            .inc_by(incoming);
        METRICS
            .mam_archived
            .with_label_values(&["outgoing"])
            .inc_by(outgoing);
        Ok(n)
    }

    /// Commit what a retention or purge step found; how many messages went.
    fn archive_remove(&self, removal: Removal, reason: &str) -> Result<u64, String> {
        let n = match removal {
            Removal::Writes(writes, n) => {
                if !writes.is_empty() {
                    self.writer
                        .write(UserDataWrite::Batch(writes))
                        .map_err(|e| e.to_string())?;
                }
                n
            }
            Removal::Done(n) => n,
        };
        METRICS.mam_deleted.with_label_values(&[reason]).inc_by(n);
        Ok(n)
    }

    /// Empty `user`'s archive, a step at a time; how many messages went.
    pub(super) fn archive_purge(&mut self, user: &Jid, reason: &str) -> Result<u64, String> {
        let modules = self.modules.clone();
        let Some(mam) = mam::get(&modules) else {
            return Ok(0);
        };
        let user = user.to_string();
        let mut total = 0;
        loop {
            let removal = mam
                .backend()
                .remove_oldest(&self.module_store, &user, STEP)
                .map_err(|e| e.to_string())?;
            let n = self.archive_remove(removal, reason)?;
            total += n;
            // PostgreSQL removes the account's rows in one statement.
            if n == 0 || matches!(mam.backend(), Backend::Postgres(_)) {
                return Ok(total);
            }
        }
    }

    fn archive_retention(&mut self, by_age: bool) {
        let modules = self.modules.clone();
        let Some(mam) = mam::get(&modules) else {
            return;
        };
        let settings = mam.settings();
        if by_age && settings.retention_days > 0 {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let cutoff = now.saturating_sub(settings.retention_days * 86_400_000);
            for _ in 0..STEPS_PER_TICK {
                let step = mam.backend().expire(
                    &self.module_store,
                    self.archive_cursor.as_deref(),
                    cutoff,
                    STEP,
                );
                let (removal, next) = match step {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "mam: retention step failed");
                        break;
                    }
                };
                if let Err(e) = self.archive_remove(removal, "retention") {
                    // Not this shard's leader any more, or a failed write: the next tick
                    // starts over.
                    tracing::debug!(error = %e, "mam: retention write failed");
                    self.archive_cursor = None;
                    break;
                }
                self.archive_cursor = next;
                if self.archive_cursor.is_none() {
                    break;
                }
            }
        }
        let cap = settings.max_messages_per_account;
        if cap > 0 {
            let grown: Vec<Jid> = self
                .archive_grown
                .iter()
                .take(TRIMS_PER_TICK)
                .cloned()
                .collect();
            for user in grown {
                self.archive_grown.remove(&user);
                let trim = mam
                    .backend()
                    .trim(&self.module_store, &user.to_string(), cap, STEP);
                let done = trim
                    .map_err(|e| e.to_string())
                    .and_then(|r| self.archive_remove(r, "cap"));
                match done {
                    // More over the cap than one step: again next tick.
                    Ok(n) if n as usize >= STEP => {
                        self.archive_grown.insert(user);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(%user, error = %e, "mam: trimming failed"),
                }
            }
        }
        if by_age {
            if let Some(rows) = mam.backend().rows() {
                METRICS.mam_rows.set(rows as i64);
            }
        }
    }
}
