//! Everything kept for an account besides the account itself (roster, pending subscription
//! requests, offline messages, block list, privacy lists, and every module's per-account
//! state in [`ModuleStore`]), as one unit: [`UserData`] opens the trees of one placement (the node's own trees, or one
//! replicated shard's), applies [`UserDataWrite`]s, and dumps and restores the whole unit for
//! Raft snapshots.
//!
//! Every write the IM layer makes is a [`UserDataWrite`]: a node without a cluster applies it
//! at once, a cluster node commits it to the shard's Raft log first and every replica applies
//! it. Applying is deterministic (the same writes on the same data give the same data and the
//! same [`WriteOutcome`]), which is what keeps replicas identical.

use serde::{Deserialize, Serialize};

use crate::module_store::{
    legacy_entry, private_key, LastActivity, ModTree, ModuleStore, LEGACY_TREES,
};
use crate::{
    wipe_user, BlockStore, OfflineStore, PrivacyItem, PrivacyStore, RosterItem, RosterStore,
    StorageError,
};

/// The trees of one placement. Cheap to clone (sled trees are handles).
#[derive(Clone)]
pub struct UserData {
    pub rosters: RosterStore,
    pub offline: OfflineStore,
    pub blocking: BlockStore,
    pub privacy: PrivacyStore,
    /// The modules' per-account state (`mod.<module>` trees).
    pub modules: ModuleStore,
}

/// One write to an account's data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UserDataWrite {
    RosterPut {
        user: String,
        item: RosterItem,
    },
    RosterRemove {
        user: String,
        contact: String,
    },
    /// An operator's bulk import (`switchboard roster import`): each item replaces the stored
    /// one if it differs. One entry per account, so a large population imports in few commits.
    RosterImport {
        user: String,
        items: Vec<RosterItem>,
    },
    /// An inbound subscription request, kept as its status text only (entries written
    /// before carried the whole stanza as `xml`, which is now ignored).
    PendingPut {
        user: String,
        contact: String,
        #[serde(default)]
        status: Option<String>,
    },
    PendingRemove {
        user: String,
        contact: String,
    },
    OfflinePush {
        user: String,
        xml: String,
        quota: usize,
        /// The byte quota (`im.max_offline_bytes`); absent in entries written before it
        /// existed, which then have none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_bytes: Option<u64>,
    },
    OfflineRemoveUpto {
        user: String,
        seq: u64,
    },
    /// Exactly these messages were delivered (a batch, by sequence number).
    OfflineRemove {
        user: String,
        seqs: Vec<u64>,
    },
    Block {
        user: String,
        jids: Vec<String>,
    },
    Unblock {
        user: String,
        jids: Vec<String>,
    },
    UnblockAll {
        user: String,
    },
    PrivacyPut {
        user: String,
        name: String,
        items: Vec<PrivacyItem>,
    },
    PrivacyRemove {
        user: String,
        name: String,
    },
    PrivacyDefault {
        user: String,
        name: Option<String>,
    },
    /// A module's write to its own per-account state (`mod.<module>`): the payload stored
    /// under `key` (empty for a module with one entry per account), or removed (`None`).
    /// The outcome is `Existed`.
    Module {
        module: String,
        user: String,
        #[serde(default)]
        key: String,
        payload: Option<String>,
    },
    /// A message for `user`'s archive (XEP-0313): its record and by-peer index entries
    /// (`crate::archive::embedded`), as one write rather than one `Module` write per entry:
    /// a Raft entry carries the message once, and applying it builds the keys without the
    /// tree's and the account's names copied into each (issue 19). The outcome is `Done`.
    ArchiveAppend {
        user: String,
        msg: crate::archive::ArchivedMessage,
    },
    /// Legacy (before modules had a store): read from old logs only, applied as the vcard
    /// module's write.
    VCardPut {
        user: String,
        xml: String,
    },
    /// Legacy: applied as the private module's write.
    PrivatePut {
        user: String,
        name: String,
        ns: String,
        xml: String,
    },
    /// Legacy: applied as the last module's write.
    LastSet {
        user: String,
        secs: u64,
        status: Option<String>,
    },
    /// Everything of the account goes (the account itself is deleted by the caller).
    DeleteUser {
        user: String,
    },
    /// Group commit: these writes, applied in order, as one write (one Raft entry, one
    /// flush). The node commits many archived messages so (`crate::archive::embedded`).
    /// The writes must belong to one shard (the first one's account decides it); a batch
    /// inside a batch is refused. See [`UserData::apply`] for what a refusal leaves.
    Batch(Vec<UserDataWrite>),
}

impl UserDataWrite {
    /// The account the write is for: it decides the shard.
    pub fn user(&self) -> &str {
        use UserDataWrite::*;
        match self {
            RosterPut { user, .. }
            | RosterRemove { user, .. }
            | RosterImport { user, .. }
            | PendingPut { user, .. }
            | PendingRemove { user, .. }
            | OfflinePush { user, .. }
            | OfflineRemoveUpto { user, .. }
            | OfflineRemove { user, .. }
            | Block { user, .. }
            | Unblock { user, .. }
            | UnblockAll { user }
            | PrivacyPut { user, .. }
            | PrivacyRemove { user, .. }
            | PrivacyDefault { user, .. }
            | Module { user, .. }
            | ArchiveAppend { user, .. }
            | VCardPut { user, .. }
            | PrivatePut { user, .. }
            | LastSet { user, .. }
            | DeleteUser { user } => user,
            Batch(writes) => writes.first().map_or("", UserDataWrite::user),
        }
    }
}

/// What a write reports back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOutcome {
    Done,
    /// The roster version the write produced (`RosterPut`).
    Version(u64),
    /// `RosterRemove`: the new version, if the item existed.
    Removed(Option<u64>),
    /// `PendingRemove`, `PrivacyRemove`, `Module`: whether there was something to remove
    /// (or replace);
    /// `PendingPut`: whether it replaced a request already pending.
    Existed(bool),
    /// `OfflinePush`: the message's sequence number.
    Seq(u64),
    /// `OfflineRemoveUpto`, `OfflineRemove`: how many messages went; `RosterImport`: how many
    /// items changed; `Batch`: how many writes it held.
    Count(usize),
}

/// A write that applying refused, in a form that crosses nodes and turns back into the
/// [`StorageError`] a local write would have given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusedWrite {
    InvalidKey(String),
    InvalidSubscription(String),
    QuotaExceeded {
        user: String,
        quota: usize,
    },
    ByteQuotaExceeded {
        user: String,
        quota: u64,
    },
    DuplicateOrder {
        list: String,
        order: u32,
    },
    NoSuchList(String),
    InvalidWrite(String),
    /// Anything else (corrupt record, disk error), as text.
    Failed(String),
}

impl From<&StorageError> for RefusedWrite {
    fn from(e: &StorageError) -> Self {
        match e {
            StorageError::InvalidKey(k) => RefusedWrite::InvalidKey(k.clone()),
            StorageError::InvalidSubscription(s) => RefusedWrite::InvalidSubscription(s.clone()),
            StorageError::QuotaExceeded { user, quota } => RefusedWrite::QuotaExceeded {
                user: user.clone(),
                quota: *quota,
            },
            StorageError::ByteQuotaExceeded { user, quota } => RefusedWrite::ByteQuotaExceeded {
                user: user.clone(),
                quota: *quota,
            },
            StorageError::DuplicateOrder { list, order } => RefusedWrite::DuplicateOrder {
                list: list.clone(),
                order: *order,
            },
            StorageError::NoSuchList(l) => RefusedWrite::NoSuchList(l.clone()),
            StorageError::InvalidWrite(w) => RefusedWrite::InvalidWrite(w.clone()),
            other => RefusedWrite::Failed(other.to_string()),
        }
    }
}

impl From<RefusedWrite> for StorageError {
    fn from(r: RefusedWrite) -> Self {
        match r {
            RefusedWrite::InvalidKey(k) => StorageError::InvalidKey(k),
            RefusedWrite::InvalidSubscription(s) => StorageError::InvalidSubscription(s),
            RefusedWrite::QuotaExceeded { user, quota } => {
                StorageError::QuotaExceeded { user, quota }
            }
            RefusedWrite::ByteQuotaExceeded { user, quota } => {
                StorageError::ByteQuotaExceeded { user, quota }
            }
            RefusedWrite::DuplicateOrder { list, order } => {
                StorageError::DuplicateOrder { list, order }
            }
            RefusedWrite::NoSuchList(l) => StorageError::NoSuchList(l),
            RefusedWrite::InvalidWrite(w) => StorageError::InvalidWrite(w),
            RefusedWrite::Failed(m) => StorageError::Unavailable(m),
        }
    }
}

/// Entries of one module tree an account deletion removes per sled batch (see
/// [`UserData::delete_user`]).
const WIPE_CHUNK: usize = 10_000;

/// Tree names of one placement, in dump order; the module trees (`mod.<module>`) follow
/// them. The node's own trees have no prefix; a replicated shard's are `shardNNN.` + name.
const TREES: &[&str] = &[
    "roster",
    "roster_meta",
    "roster_pending",
    "offline",
    "offline_meta",
    "blocklist",
    "privacy",
    "privacy_default",
];

impl UserData {
    /// `durable`: flush after every write (a node's own data). Replicated shards apply
    /// without flushing: their Raft log is durable and rebuilds them.
    pub(crate) fn open(
        db: &sled::Db,
        lsm: &crate::lsm::Lsm,
        prefix: &str,
        durable: bool,
    ) -> Result<UserData, StorageError> {
        let t = |name: &str| db.open_tree(format!("{prefix}{name}"));
        let data = UserData {
            rosters: RosterStore::new(t("roster")?, t("roster_meta")?, t("roster_pending")?),
            offline: OfflineStore::new(t("offline")?, t("offline_meta")?),
            blocking: BlockStore::new(t("blocklist")?),
            privacy: PrivacyStore::new(t("privacy")?, t("privacy_default")?),
            modules: ModuleStore::new(db.clone(), lsm.clone(), prefix, durable),
        };
        data.modules.migrate_legacy()?;
        data.modules.migrate_to_lsm()?;
        crate::archive::embedded::migrate_index(&data.modules)?;
        Ok(if durable {
            data
        } else {
            UserData {
                rosters: data.rosters.volatile(),
                offline: data.offline.volatile(),
                blocking: data.blocking.volatile(),
                privacy: data.privacy.volatile(),
                modules: data.modules,
            }
        })
    }

    fn trees(&self) -> [&sled::Tree; 8] {
        [
            &self.rosters.items,
            &self.rosters.meta,
            &self.rosters.pending,
            &self.offline.messages,
            &self.offline.meta,
            &self.blocking.tree,
            &self.privacy.lists,
            &self.privacy.default,
        ]
    }

    /// Apply one write.
    ///
    /// A `Batch` of `Module` writes only (what the archive commits) is one sled transaction
    /// over the module trees: all of it or, when refused, none of it. Any other batch is
    /// applied write by write without flushing, and flushed once at the end on a durable
    /// placement; a refused write stops it there and the writes before it stay applied.
    /// Either way every replica ends in the same state, which is what the Raft log needs.
    pub fn apply(&self, w: &UserDataWrite) -> Result<WriteOutcome, StorageError> {
        use UserDataWrite::*;
        use WriteOutcome::*;
        Ok(match w {
            RosterPut { user, item } => Version(self.rosters.put(user, item)?),
            RosterRemove { user, contact } => Removed(self.rosters.remove(user, contact)?),
            RosterImport { user, items } => {
                let mut changed = 0;
                for item in items {
                    if self.rosters.item(user, &item.jid)?.as_ref() != Some(item) {
                        self.rosters.put(user, item)?;
                        changed += 1;
                    }
                }
                Count(changed)
            }
            PendingPut {
                user,
                contact,
                status,
            } => Existed(
                !self
                    .rosters
                    .put_pending_in(user, contact, status.as_deref())?,
            ),
            PendingRemove { user, contact } => {
                Existed(self.rosters.remove_pending_in(user, contact)?)
            }
            OfflinePush {
                user,
                xml,
                quota,
                max_bytes,
            } => {
                Seq(self
                    .offline
                    .push_bounded(user, xml, *quota, max_bytes.unwrap_or(u64::MAX))?)
            }
            OfflineRemoveUpto { user, seq } => Count(self.offline.remove_upto(user, *seq)?),
            OfflineRemove { user, seqs } => Count(self.offline.remove(user, seqs)?),
            Block { user, jids } => {
                self.blocking.block(user, jids)?;
                Done
            }
            Unblock { user, jids } => {
                self.blocking.unblock(user, jids)?;
                Done
            }
            UnblockAll { user } => {
                self.blocking.unblock_all(user)?;
                Done
            }
            PrivacyPut { user, name, items } => {
                self.privacy.put(user, name, items)?;
                Done
            }
            PrivacyRemove { user, name } => Existed(self.privacy.remove(user, name)?),
            PrivacyDefault { user, name } => {
                self.privacy.set_default(user, name.as_deref())?;
                Done
            }
            Module {
                module,
                user,
                key,
                payload,
            } => Existed(self.modules.put(module, user, key, payload.as_deref())?),
            ArchiveAppend { user, msg } => {
                let mut lsm = Vec::with_capacity(2);
                crate::archive::embedded::lsm_writes(user, msg, &mut lsm)?;
                self.modules.put_all(&[], lsm)?;
                Done
            }
            VCardPut { user, xml } => Existed(self.modules.put("vcard", user, "", Some(xml))?),
            PrivatePut {
                user,
                name,
                ns,
                xml,
            } => Existed(
                self.modules
                    .put("private", user, &private_key(ns, name), Some(xml))?,
            ),
            LastSet { user, secs, status } => {
                let last = LastActivity {
                    secs: *secs,
                    status: status.clone(),
                };
                Existed(self.modules.put("last", user, "", Some(&last.payload()))?)
            }
            DeleteUser { user } => {
                self.delete_user(user)?;
                Done
            }
            Batch(writes) => Count(self.apply_batch(writes)?),
        })
    }

    /// See [`UserData::apply`].
    fn apply_batch(&self, writes: &[UserDataWrite]) -> Result<usize, StorageError> {
        let mut modules = Vec::with_capacity(writes.len());
        let mut archived = Vec::new();
        let mut others = 0;
        for w in writes {
            match w {
                UserDataWrite::Batch(_) => {
                    return Err(StorageError::InvalidWrite("a batch inside a batch".into()))
                }
                UserDataWrite::Module {
                    module,
                    user,
                    key,
                    payload,
                } => modules.push((
                    module.as_str(),
                    user.as_str(),
                    key.as_str(),
                    payload.as_deref(),
                )),
                UserDataWrite::ArchiveAppend { user, msg } => {
                    crate::archive::embedded::lsm_writes(user, msg, &mut archived)?
                }
                _ => others += 1,
            }
        }
        // Module writes and archived messages only (what the archive commits): one fjall
        // batch and one sled transaction.
        if others == 0 {
            self.modules.put_all(&modules, archived)?;
            return Ok(writes.len());
        }
        let volatile = self.volatile();
        for w in writes {
            volatile.apply(w)?;
        }
        if self.modules.durable() {
            self.rosters.items.flush()?;
        }
        Ok(writes.len())
    }

    /// The same trees, written without flushing (a batch flushes once at its end).
    fn volatile(&self) -> UserData {
        UserData {
            rosters: self.rosters.clone().volatile(),
            offline: self.offline.clone().volatile(),
            blocking: self.blocking.clone().volatile(),
            privacy: self.privacy.clone().volatile(),
            modules: self.modules.clone().volatile(),
        }
    }

    /// Remove everything stored for `user` in these trees, in one transaction (see
    /// [`crate::Store::delete_user_data`]).
    pub fn delete_user(&self, user: &str) -> Result<(), StorageError> {
        let _caches = self.modules.writing_all();
        let modules = self.modules.trees()?;
        // One transaction holds every key it removes in memory: an archive of millions of
        // messages (`mod.mam`) would not fit. While an account has more than `WIPE_CHUNK`
        // entries in a module tree, they go first in batches of that many; what is left goes
        // in the transaction with the rest. A crash in between leaves the account with part
        // of that module's data, and the deletion is simply run again.
        let pfx = crate::prefix(user)?;
        let mut sled_modules = Vec::new();
        for (_, tree) in &modules {
            loop {
                let keys: Vec<Vec<u8>> = tree
                    .scan_prefix(&pfx)
                    .map(|kv| kv.map(|(k, _)| k.to_vec()))
                    .take(WIPE_CHUNK + 1)
                    .collect::<Result<_, _>>()?;
                // A fjall tree (the archive) is not in the sled transaction: its entries
                // all go in chunks.
                let lsm = !matches!(tree, ModTree::Sled(_));
                if keys.is_empty() || (!lsm && keys.len() <= WIPE_CHUNK) {
                    break;
                }
                tree.apply(
                    keys.into_iter()
                        .take(WIPE_CHUNK)
                        .map(|k| (k, None))
                        .collect(),
                )?;
            }
            if let ModTree::Sled(t) = tree {
                sled_modules.push(t);
            } else if self.modules.durable() {
                tree.flush()?;
            }
        }
        let mut prefixed = vec![
            &self.rosters.items,
            &self.rosters.pending,
            &self.offline.messages,
            &self.blocking.tree,
            &self.privacy.lists,
        ];
        // Every module's entries of the account start with `user \0`.
        prefixed.extend(sled_modules);
        wipe_user(
            user,
            &prefixed,
            &[&self.offline.meta, &self.privacy.default],
            Some(&self.rosters.meta),
        )
    }

    /// Every entry of every tree, as bytes: `u32` tree count, then per tree its name and
    /// `u64` entry count, then each key and value, all length-prefixed (`u32`, big-endian).
    /// The module trees come after the fixed ones, named `mod.<module>`, so a new module's
    /// state is in the snapshots without code of its own.
    pub fn dump(&self) -> Result<Vec<u8>, StorageError> {
        // Empty module trees are left out: replicas that never saw a module's write and
        // those that saw it come and go dump the same bytes.
        let mut modules = self.modules.trees()?;
        modules.retain(|(_, t)| !t.is_empty().unwrap_or(false));
        let names: Vec<String> = TREES
            .iter()
            .map(|n| n.to_string())
            .chain(modules.iter().map(|(n, _)| format!("mod.{n}")))
            .collect();
        let trees = self
            .trees()
            .into_iter()
            .map(|t| ModTree::Sled(t.clone()))
            .chain(modules.iter().map(|(_, t)| t.clone()));
        let mut out = Vec::new();
        put_u32(&mut out, names.len());
        for (name, tree) in names.iter().zip(trees) {
            put_bytes(&mut out, name.as_bytes());
            let at = out.len();
            out.extend_from_slice(&0u64.to_be_bytes());
            let mut n = 0u64;
            for kv in tree.iter() {
                let (k, v) = kv?;
                put_bytes(&mut out, &k);
                put_bytes(&mut out, &v);
                n += 1;
            }
            out[at..at + 8].copy_from_slice(&n.to_be_bytes());
        }
        Ok(out)
    }

    /// Replace every tree's content with a [`UserData::dump`], then flush. A dump taken
    /// before modules had a store of their own (trees `vcards`, `private`, `last_activity`)
    /// is restored into the module trees.
    pub fn restore(&self, dump: &[u8]) -> Result<(), StorageError> {
        let _caches = self.modules.writing_all();
        let bad = || StorageError::Corrupt("user data snapshot".into());
        let mut r = Reader(dump);
        let count = r.u32().ok_or_else(bad)?;
        self.clear()?;
        let fixed = self.trees();
        for _ in 0..count {
            let name = std::str::from_utf8(r.bytes().ok_or_else(bad)?).map_err(|_| bad())?;
            let legacy = LEGACY_TREES.contains(&name);
            let tree = if let Some(i) = TREES.iter().position(|t| *t == name) {
                Some(ModTree::Sled(fixed[i].clone()))
            } else if let Some(module) = name.strip_prefix("mod.") {
                Some(self.modules.tree(module)?)
            } else if legacy {
                None
            } else {
                return Err(bad());
            };
            let n = r.u64().ok_or_else(bad)?;
            type Writes = Vec<(Vec<u8>, Option<Vec<u8>>)>;
            let mut batches: std::collections::BTreeMap<&str, Writes> = Default::default();
            for _ in 0..n {
                let k = r.bytes().ok_or_else(bad)?;
                let v = r.bytes().ok_or_else(bad)?;
                match &tree {
                    Some(_) => batches
                        .entry("")
                        .or_default()
                        .push((k.to_vec(), Some(v.to_vec()))),
                    None => {
                        let (module, key, payload) = legacy_entry(name, k, v)?;
                        batches
                            .entry(module)
                            .or_default()
                            .push((key, Some(payload.into_bytes())));
                    }
                }
            }
            for (module, batch) in batches {
                match &tree {
                    Some(t) => t.apply(batch)?,
                    None => self.modules.tree(module)?.apply(batch)?,
                }
            }
        }
        if !r.0.is_empty() {
            return Err(bad());
        }
        // A snapshot of a node of an earlier version holds the archive's old index.
        crate::archive::embedded::migrate_index(&self.modules)?;
        self.rosters.items.flush()?;
        for (_, tree) in self.modules.trees()? {
            if !matches!(tree, ModTree::Sled(_)) {
                tree.flush()?;
                break;
            }
        }
        Ok(())
    }

    /// Empty every tree.
    pub fn clear(&self) -> Result<(), StorageError> {
        let _caches = self.modules.writing_all();
        for tree in self.trees() {
            tree.clear()?;
        }
        for (_, tree) in self.modules.trees()? {
            tree.clear()?;
        }
        Ok(())
    }

    /// Whether every tree is empty.
    pub fn is_empty(&self) -> bool {
        self.trees().iter().all(|t| t.is_empty())
            && self
                .modules
                .trees()
                .is_ok_and(|m| m.iter().all(|(_, t)| t.is_empty().unwrap_or(false)))
    }
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u32).to_be_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len());
    out.extend_from_slice(b);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    fn item(jid: &str) -> RosterItem {
        RosterItem {
            jid: jid.into(),
            name: None,
            groups: vec!["g".into()],
            subscription: "both".into(),
            pending_out: false,
            pending_in: false,
            approved: false,
        }
    }

    #[test]
    fn replicas_applying_the_same_writes_hold_the_same_data() {
        let dir = TempDir::new("user-data");
        let store = crate::testutil::open(dir.path());
        let a = store.shard_user_data(1).unwrap();
        let b = store.shard_user_data(2).unwrap();
        let writes = vec![
            UserDataWrite::RosterPut {
                user: "u@x".into(),
                item: item("c@x"),
            },
            UserDataWrite::OfflinePush {
                user: "u@x".into(),
                xml: "<message/>".into(),
                quota: 2,
                max_bytes: None,
            },
            UserDataWrite::OfflinePush {
                user: "u@x".into(),
                xml: "<message/>".into(),
                quota: 2,
                max_bytes: None,
            },
            UserDataWrite::OfflinePush {
                user: "u@x".into(),
                xml: "<message/>".into(),
                quota: 2,
                max_bytes: None,
            },
            UserDataWrite::Block {
                user: "u@x".into(),
                jids: vec!["b@y".into()],
            },
        ];
        let outcomes: Vec<_> = writes
            .iter()
            .map(|w| a.apply(w).map_err(|e| RefusedWrite::from(&e)))
            .collect();
        assert_eq!(outcomes[0], Ok(WriteOutcome::Version(1)));
        assert_eq!(outcomes[2], Ok(WriteOutcome::Seq(2)));
        assert!(matches!(
            outcomes[3],
            Err(RefusedWrite::QuotaExceeded { quota: 2, .. })
        ));
        for w in &writes {
            let _ = b.apply(w);
        }
        assert_eq!(a.dump().unwrap(), b.dump().unwrap());

        // A snapshot restored elsewhere replaces what was there.
        let c = store.shard_user_data(3).unwrap();
        c.apply(&UserDataWrite::VCardPut {
            user: "other@x".into(),
            xml: "<vCard/>".into(),
        })
        .unwrap();
        c.restore(&a.dump().unwrap()).unwrap();
        assert_eq!(c.dump().unwrap(), a.dump().unwrap());
        assert_eq!(c.modules.get("vcard", "other@x", "").unwrap(), None);
        assert_eq!(c.offline.count("u@x").unwrap(), 2);

        // Shards do not see each other's data.
        assert!(store.shard_user_data(4).unwrap().is_empty());
        assert!(matches!(
            c.restore(b"garbage"),
            Err(StorageError::Corrupt(_))
        ));
    }

    fn module_put(module: &str, user: &str, key: &str, payload: &str) -> UserDataWrite {
        UserDataWrite::Module {
            module: module.into(),
            user: user.into(),
            key: key.into(),
            payload: Some(payload.into()),
        }
    }

    #[test]
    fn batches_apply_in_order_replicate_and_survive_snapshots() {
        let dir = TempDir::new("user-data-batch");
        let store = crate::testutil::open(dir.path());
        let a = store.shard_user_data(1).unwrap();
        let b = store.shard_user_data(2).unwrap();
        let batches = vec![
            // Module writes only: one transaction over two trees.
            UserDataWrite::Batch(vec![
                module_put("mam", "u@x", "0000000000000001", "one"),
                module_put("mam_peers", "u@x", "c@x\u{0}0000000000000000", ""),
                module_put("mam", "v@x", "0000000000000001", "other"),
                // Later writes in a batch see earlier ones: this one replaces.
                module_put("mam", "u@x", "0000000000000001", "one'"),
            ]),
            // Mixed: applied write by write, flushed once.
            UserDataWrite::Batch(vec![
                UserDataWrite::RosterPut {
                    user: "u@x".into(),
                    item: item("c@x"),
                },
                module_put("mam", "u@x", "0000000000000002", "two"),
                UserDataWrite::Module {
                    module: "mam".into(),
                    user: "v@x".into(),
                    key: "0000000000000001".into(),
                    payload: None,
                },
            ]),
            UserDataWrite::Batch(Vec::new()),
        ];
        let counts: Vec<_> = batches.iter().map(|w| a.apply(w).unwrap()).collect();
        assert_eq!(
            counts,
            [
                WriteOutcome::Count(4),
                WriteOutcome::Count(3),
                WriteOutcome::Count(0)
            ]
        );
        for w in &batches {
            b.apply(w).unwrap();
        }
        assert_eq!(a.dump().unwrap(), b.dump().unwrap());
        let m = &a.modules;
        assert_eq!(
            m.get("mam", "u@x", "0000000000000001").unwrap().as_deref(),
            Some("one'")
        );
        assert_eq!(m.get("mam", "v@x", "0000000000000001").unwrap(), None);
        assert_eq!(a.rosters.version("u@x").unwrap(), 1);

        // A batch in a batch is refused, and nothing of it is applied.
        let nested = UserDataWrite::Batch(vec![
            module_put("mam", "u@x", "0000000000000003", "three"),
            UserDataWrite::Batch(vec![]),
        ]);
        assert!(matches!(
            a.apply(&nested),
            Err(StorageError::InvalidWrite(_))
        ));
        assert_eq!(m.get("mam", "u@x", "0000000000000003").unwrap(), None);
        // A refused module-only batch leaves nothing behind either.
        let bad = UserDataWrite::Batch(vec![
            module_put("mam", "u@x", "0000000000000004", "four"),
            module_put("mam", "", "0000000000000004", "four"),
        ]);
        assert!(a.apply(&bad).is_err());
        assert_eq!(m.get("mam", "u@x", "0000000000000004").unwrap(), None);

        // Through serde (the Raft log) and a snapshot.
        let json = serde_json::to_string(&batches[0]).unwrap();
        assert_eq!(
            serde_json::from_str::<UserDataWrite>(&json).unwrap(),
            batches[0]
        );
        assert_eq!(batches[0].user(), "u@x");
        let c = store.shard_user_data(3).unwrap();
        c.restore(&a.dump().unwrap()).unwrap();
        assert_eq!(c.dump().unwrap(), a.dump().unwrap());

        // On a durable placement a batch is there after a reopen.
        let node = store.user_data().unwrap();
        node.apply(&batches[0]).unwrap();
        drop((node, a, b, c));
        drop(store);
        let store = crate::testutil::open(dir.path());
        assert_eq!(
            store
                .modules()
                .get("mam", "v@x", "0000000000000001")
                .unwrap()
                .as_deref(),
            Some("other")
        );
    }

    #[test]
    fn deleting_an_account_with_a_large_module_tree_removes_all_of_it() {
        let dir = TempDir::new("user-data-wipe-large");
        let store = crate::testutil::open(dir.path());
        let data = store.shard_user_data(1).unwrap();
        let writes: Vec<_> = (0..WIPE_CHUNK * 2 + 7)
            .map(|i| module_put("mam", "u@x", &format!("{i:016x}"), "m"))
            .collect();
        data.apply(&UserDataWrite::Batch(writes)).unwrap();
        data.apply(&module_put("mam", "v@x", "k", "kept")).unwrap();
        data.apply(&UserDataWrite::DeleteUser { user: "u@x".into() })
            .unwrap();
        let left = data
            .modules
            .range(
                "mam",
                "u@x",
                std::ops::Bound::Unbounded,
                std::ops::Bound::Unbounded,
                false,
            )
            .unwrap()
            .count();
        assert_eq!(left, 0);
        assert!(data.modules.get("mam", "v@x", "k").unwrap().is_some());
    }

    #[test]
    fn roster_import_changes_only_items_that_differ() {
        let dir = TempDir::new("user-data-import");
        let store = crate::testutil::open(dir.path());
        let data = store.shard_user_data(3).unwrap();
        let import = |items: Vec<RosterItem>| {
            data.apply(&UserDataWrite::RosterImport {
                user: "u@x".into(),
                items,
            })
            .unwrap()
        };
        assert_eq!(
            import(vec![item("a@x"), item("b@x")]),
            WriteOutcome::Count(2)
        );
        assert_eq!(data.rosters.version("u@x").unwrap(), 2);
        // Re-running the same import is a no-op: no version is spent.
        assert_eq!(
            import(vec![item("a@x"), item("b@x")]),
            WriteOutcome::Count(0)
        );
        let mut renamed = item("b@x");
        renamed.name = Some("Bee".into());
        assert_eq!(
            import(vec![item("a@x"), renamed.clone()]),
            WriteOutcome::Count(1)
        );
        assert_eq!(data.rosters.item("u@x", "b@x").unwrap(), Some(renamed));
        assert_eq!(data.rosters.version("u@x").unwrap(), 3);
    }

    #[test]
    fn module_payloads_are_in_snapshots_and_go_with_the_account() {
        let dir = TempDir::new("user-data-modules");
        let dump = {
            let store = crate::testutil::open(dir.path());
            let a = store.shard_user_data(1).unwrap();
            let put = |module: &str, user: &str, key: &str, payload: Option<&str>| {
                a.apply(&UserDataWrite::Module {
                    module: module.into(),
                    user: user.into(),
                    key: key.into(),
                    payload: payload.map(str::to_string),
                })
                .unwrap()
            };
            assert_eq!(
                put("newxep", "u@x", "k", Some("{}")),
                WriteOutcome::Existed(false)
            );
            assert_eq!(
                put("newxep", "u@x", "k", Some("[1]")),
                WriteOutcome::Existed(true)
            );
            put("newxep", "v@x", "", Some("v"));
            put("gone", "u@x", "", Some("x"));
            assert_eq!(put("gone", "u@x", "", None), WriteOutcome::Existed(true));
            a.dump().unwrap()
        };
        // A restart: the snapshot is restored into fresh trees of another shard.
        let store = crate::testutil::open(dir.path());
        let b = store.shard_user_data(2).unwrap();
        b.restore(&dump).unwrap();
        assert_eq!(b.dump().unwrap(), dump);
        assert_eq!(
            b.modules.get("newxep", "u@x", "k").unwrap().as_deref(),
            Some("[1]")
        );
        b.apply(&UserDataWrite::DeleteUser { user: "u@x".into() })
            .unwrap();
        assert_eq!(b.modules.get("newxep", "u@x", "k").unwrap(), None);
        assert_eq!(
            b.modules.get("newxep", "v@x", "").unwrap().as_deref(),
            Some("v")
        );
    }

    #[test]
    fn legacy_trees_snapshots_and_log_entries_land_in_the_module_store() {
        let dir = TempDir::new("user-data-legacy");
        let legacy_last = LastActivity {
            secs: 42,
            status: Some("bye".into()),
        }
        .payload();
        {
            let db = sled::open(dir.path().join("db")).unwrap();
            let t = |n: &str| db.open_tree(n).unwrap();
            t("vcards")
                .insert("u@x", &br#"{"v":1,"xml":"<vCard/>"}"#[..])
                .unwrap();
            t("private")
                .insert("u@x\0urn:a\0a", &br#"{"v":1,"xml":"<a/>"}"#[..])
                .unwrap();
            t("last_activity")
                .insert("u@x", &br#"{"v":1,"secs":42,"status":"bye"}"#[..])
                .unwrap();
            db.flush().unwrap();
        }
        let check = |data: &UserData| {
            let m = &data.modules;
            assert_eq!(
                m.get("vcard", "u@x", "").unwrap().as_deref(),
                Some("<vCard/>")
            );
            assert_eq!(
                m.get(
                    "private",
                    "u@x",
                    &crate::module_store::private_key("urn:a", "a")
                )
                .unwrap()
                .as_deref(),
                Some("<a/>")
            );
            assert_eq!(
                m.get("last", "u@x", "").unwrap().as_deref(),
                Some(legacy_last.as_str())
            );
        };
        let store = crate::testutil::open(dir.path());
        let node = store.user_data().unwrap();
        check(&node);
        // Idempotent: opening again finds nothing left to move.
        check(&store.user_data().unwrap());

        // A snapshot taken before the module store (the legacy trees by name).
        let mut old = Vec::new();
        put_u32(&mut old, 3);
        for (name, k, v) in [
            ("vcards", &b"u@x"[..], &br#"{"v":1,"xml":"<vCard/>"}"#[..]),
            (
                "private",
                &b"u@x\0urn:a\0a"[..],
                &br#"{"v":1,"xml":"<a/>"}"#[..],
            ),
            (
                "last_activity",
                &b"u@x"[..],
                &br#"{"v":1,"secs":42,"status":"bye"}"#[..],
            ),
        ] {
            put_bytes(&mut old, name.as_bytes());
            old.extend_from_slice(&1u64.to_be_bytes());
            put_bytes(&mut old, k);
            put_bytes(&mut old, v);
        }
        let shard = store.shard_user_data(5).unwrap();
        shard.restore(&old).unwrap();
        check(&shard);

        // Log entries written before replay into the module store too.
        let replayed = store.shard_user_data(6).unwrap();
        for w in [
            UserDataWrite::VCardPut {
                user: "u@x".into(),
                xml: "<vCard/>".into(),
            },
            UserDataWrite::PrivatePut {
                user: "u@x".into(),
                name: "a".into(),
                ns: "urn:a".into(),
                xml: "<a/>".into(),
            },
            UserDataWrite::LastSet {
                user: "u@x".into(),
                secs: 42,
                status: Some("bye".into()),
            },
        ] {
            let json = serde_json::to_string(&w).unwrap();
            let w: UserDataWrite = serde_json::from_str(&json).unwrap();
            replayed.apply(&w).unwrap();
        }
        check(&replayed);
    }
}
