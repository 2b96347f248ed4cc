//! Everything kept for an account besides the account itself (roster, pending subscription
//! requests, offline messages, block list, privacy lists, vCard, private XML, last activity),
//! as one unit: [`UserData`] opens the trees of one placement (the node's own trees, or one
//! replicated shard's), applies [`UserDataWrite`]s, and dumps and restores the whole unit for
//! Raft snapshots.
//!
//! Every write the IM layer makes is a [`UserDataWrite`]: a node without a cluster applies it
//! at once, a cluster node commits it to the shard's Raft log first and every replica applies
//! it. Applying is deterministic (the same writes on the same data give the same data and the
//! same [`WriteOutcome`]), which is what keeps replicas identical.

use serde::{Deserialize, Serialize};

use crate::{
    wipe_user, BlockStore, LastActivityStore, OfflineStore, PrivacyItem, PrivacyStore,
    PrivateStore, RosterItem, RosterStore, StorageError, VCardStore,
};

/// The trees of one placement. Cheap to clone (sled trees are handles).
#[derive(Clone)]
pub struct UserData {
    pub rosters: RosterStore,
    pub offline: OfflineStore,
    pub blocking: BlockStore,
    pub privacy: PrivacyStore,
    pub vcards: VCardStore,
    pub private: PrivateStore,
    pub last: LastActivityStore,
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
    VCardPut {
        user: String,
        xml: String,
    },
    PrivatePut {
        user: String,
        name: String,
        ns: String,
        xml: String,
    },
    LastSet {
        user: String,
        secs: u64,
        status: Option<String>,
    },
    /// Everything of the account goes (the account itself is deleted by the caller).
    DeleteUser {
        user: String,
    },
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
            | VCardPut { user, .. }
            | PrivatePut { user, .. }
            | LastSet { user, .. }
            | DeleteUser { user } => user,
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
    /// `PendingRemove`, `PrivacyRemove`: whether there was something to remove;
    /// `PendingPut`: whether it replaced a request already pending.
    Existed(bool),
    /// `OfflinePush`: the message's sequence number.
    Seq(u64),
    /// `OfflineRemoveUpto`, `OfflineRemove`: how many messages went; `RosterImport`: how many
    /// items changed.
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
            RefusedWrite::Failed(m) => StorageError::Unavailable(m),
        }
    }
}

/// Tree names of one placement, in dump order. The node's own trees have no prefix; a
/// replicated shard's are `shardNN.` + name.
const TREES: &[&str] = &[
    "roster",
    "roster_meta",
    "roster_pending",
    "offline",
    "offline_meta",
    "blocklist",
    "privacy",
    "privacy_default",
    "vcards",
    "private",
    "last_activity",
];

impl UserData {
    /// `durable`: flush after every write (a node's own data). Replicated shards apply
    /// without flushing: their Raft log is durable and rebuilds them.
    pub(crate) fn open(
        db: &sled::Db,
        prefix: &str,
        durable: bool,
    ) -> Result<UserData, StorageError> {
        let t = |name: &str| db.open_tree(format!("{prefix}{name}"));
        let data = UserData {
            rosters: RosterStore::new(t("roster")?, t("roster_meta")?, t("roster_pending")?),
            offline: OfflineStore::new(t("offline")?, t("offline_meta")?),
            blocking: BlockStore::new(t("blocklist")?),
            privacy: PrivacyStore::new(t("privacy")?, t("privacy_default")?),
            vcards: VCardStore::new(t("vcards")?),
            private: PrivateStore::new(t("private")?),
            last: LastActivityStore::new(t("last_activity")?),
        };
        Ok(if durable {
            data
        } else {
            UserData {
                rosters: data.rosters.volatile(),
                offline: data.offline.volatile(),
                blocking: data.blocking.volatile(),
                privacy: data.privacy.volatile(),
                vcards: data.vcards.volatile(),
                private: data.private.volatile(),
                last: data.last.volatile(),
            }
        })
    }

    fn trees(&self) -> [&sled::Tree; 11] {
        [
            &self.rosters.items,
            &self.rosters.meta,
            &self.rosters.pending,
            &self.offline.messages,
            &self.offline.meta,
            &self.blocking.tree,
            &self.privacy.lists,
            &self.privacy.default,
            &self.vcards.tree,
            &self.private.tree,
            &self.last.tree,
        ]
    }

    /// Apply one write.
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
            VCardPut { user, xml } => {
                self.vcards.put(user, xml)?;
                Done
            }
            PrivatePut {
                user,
                name,
                ns,
                xml,
            } => {
                self.private.put(user, name, ns, xml)?;
                Done
            }
            LastSet { user, secs, status } => {
                self.last.set(user, *secs, status.clone())?;
                Done
            }
            DeleteUser { user } => {
                self.delete_user(user)?;
                Done
            }
        })
    }

    /// Remove everything stored for `user` in these trees, in one transaction (see
    /// [`crate::Store::delete_user_data`]).
    pub fn delete_user(&self, user: &str) -> Result<(), StorageError> {
        wipe_user(
            user,
            &[
                &self.rosters.items,
                &self.rosters.pending,
                &self.offline.messages,
                &self.blocking.tree,
                &self.privacy.lists,
                &self.private.tree,
            ],
            &[
                &self.offline.meta,
                &self.privacy.default,
                &self.vcards.tree,
                &self.last.tree,
            ],
            Some(&self.rosters.meta),
        )
    }

    /// Every entry of every tree, as bytes: `u32` tree count, then per tree its name and
    /// `u64` entry count, then each key and value, all length-prefixed (`u32`, big-endian).
    pub fn dump(&self) -> Result<Vec<u8>, StorageError> {
        let mut out = Vec::new();
        put_u32(&mut out, TREES.len());
        for (name, tree) in TREES.iter().zip(self.trees()) {
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

    /// Replace every tree's content with a [`UserData::dump`], then flush.
    pub fn restore(&self, dump: &[u8]) -> Result<(), StorageError> {
        let bad = || StorageError::Corrupt("user data snapshot".into());
        let mut r = Reader(dump);
        let count = r.u32().ok_or_else(bad)?;
        if count as usize != TREES.len() {
            return Err(bad());
        }
        self.clear()?;
        for (name, tree) in TREES.iter().zip(self.trees()) {
            if r.bytes().ok_or_else(bad)? != name.as_bytes() {
                return Err(bad());
            }
            let n = r.u64().ok_or_else(bad)?;
            let mut batch = sled::Batch::default();
            for _ in 0..n {
                let k = r.bytes().ok_or_else(bad)?;
                let v = r.bytes().ok_or_else(bad)?;
                batch.insert(k, v);
            }
            tree.apply_batch(batch)?;
        }
        self.rosters.items.flush()?;
        Ok(())
    }

    /// Empty every tree.
    pub fn clear(&self) -> Result<(), StorageError> {
        for tree in self.trees() {
            tree.clear()?;
        }
        Ok(())
    }

    /// Whether every tree is empty.
    pub fn is_empty(&self) -> bool {
        self.trees().iter().all(|t| t.is_empty())
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
    use crate::Store;

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
        let store = Store::open(dir.path()).unwrap();
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
        assert_eq!(c.vcards.get("other@x").unwrap(), None);
        assert_eq!(c.offline.count("u@x").unwrap(), 2);

        // Shards do not see each other's data.
        assert!(store.shard_user_data(4).unwrap().is_empty());
        assert!(matches!(
            c.restore(b"garbage"),
            Err(StorageError::Corrupt(_))
        ));
    }

    #[test]
    fn roster_import_changes_only_items_that_differ() {
        let dir = TempDir::new("user-data-import");
        let store = Store::open(dir.path()).unwrap();
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
}
