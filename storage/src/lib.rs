//! Every sled tree Switchboard keeps, and its encoding. One module per tree; [`archive`], the
//! message archive, also has a PostgreSQL backend beside its sled trees.
//!
//! Writes that a client or operator is told succeeded are flushed before this crate returns.
//! Updates that touch several keys (a roster item and its user's version counter, a message and
//! its user's quota count) are made in one sled transaction or batch, so they land together.
//!
//! Per-user trees use composite keys `user \0 rest`: all of a user's entries are one prefix scan.
//! Key parts are prepared JIDs or XML names and so never contain NUL; parts that do, or that
//! are empty, are refused with [`StorageError::InvalidKey`].

pub mod accounts;
pub mod archive;
pub mod blocking;
mod lsm;
mod lsm_stage;
pub mod meta;
pub mod module_store;
pub mod offline;
pub mod privacy;
pub mod raft_log;
pub mod rosters;
pub mod user_data;

use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};
use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError, Transactional,
};

pub use accounts::AccountStore;
pub use blocking::BlockStore;
pub use meta::MetaStore;
pub use module_store::{LastActivity, ModuleRange, ModuleStore};
pub use offline::OfflineStore;
pub use privacy::{PrivacyItem, PrivacyStore};
pub use raft_log::{RaftLogStore, SnapshotSlot};
pub use rosters::{PendingRequest, RosterChange, RosterItem, RosterStore};
pub use user_data::{RefusedWrite, UserData, UserDataWrite, WriteOutcome};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("the database at {0} is in use by another process (is the node running?)")]
    Locked(String),
    #[error("account {0} already exists")]
    AlreadyExists(String),
    #[error("account {0} does not exist")]
    NotFound(String),
    #[error("corrupt record under key {0}")]
    Corrupt(String),
    #[error("invalid key part {0:?}: empty or contains NUL")]
    InvalidKey(String),
    #[error("invalid roster subscription state {0:?} (expected none, to, from or both)")]
    InvalidSubscription(String),
    #[error("offline message quota of {quota} reached for {user}")]
    QuotaExceeded { user: String, quota: usize },
    #[error("offline byte quota of {quota} reached for {user}")]
    ByteQuotaExceeded { user: String, quota: u64 },
    #[error("privacy list {list:?} has more than one item with order {order}")]
    DuplicateOrder { list: String, order: u32 },
    #[error("privacy list {0:?} does not exist")]
    NoSuchList(String),
    #[error("invalid write: {0}")]
    InvalidWrite(String),
    #[error("the data is unavailable for now: {0}")]
    Unavailable(String),
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("archive storage: {0}")]
    Lsm(#[from] fjall::Error),
}

impl From<TransactionError<StorageError>> for StorageError {
    fn from(e: TransactionError<StorageError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StorageError::Sled(e),
        }
    }
}

/// The node's database: one sled instance under `<data_dir>/db`, and a fjall keyspace under
/// `<data_dir>/lsm` for the append-heavy module trees (the message archive, see
/// [`module_store::LSM_MODULES`]).
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    lsm: lsm::Lsm,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StorageError> {
        let path = dir.join("db");
        let db = sled::Config::new()
            .path(&path)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(ref io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                    StorageError::Locked(path.display().to_string())
                }
                sled::Error::Io(ref io) if io.to_string().contains("lock") => {
                    StorageError::Locked(path.display().to_string())
                }
                other => StorageError::Sled(other),
            })?;
        let lsm = lsm::Lsm::open(&dir.join("lsm"))?;
        let store = Store { db, lsm };
        // The node's own placement; a shard's moves its archive when it is opened.
        store.modules().migrate_to_lsm()?;
        archive::embedded::migrate_index(&store.modules())?;
        Ok(store)
    }

    pub fn accounts(&self) -> Result<AccountStore, StorageError> {
        Ok(AccountStore::new(self.db.open_tree("accounts")?))
    }

    pub fn meta(&self) -> Result<MetaStore, StorageError> {
        Ok(MetaStore::new(self.db.open_tree("meta")?))
    }

    pub fn rosters(&self) -> Result<RosterStore, StorageError> {
        Ok(RosterStore::new(
            self.db.open_tree("roster")?,
            self.db.open_tree("roster_meta")?,
            self.db.open_tree("roster_pending")?,
        ))
    }

    pub fn offline(&self) -> Result<OfflineStore, StorageError> {
        Ok(OfflineStore::new(
            self.db.open_tree("offline")?,
            self.db.open_tree("offline_meta")?,
        ))
    }

    pub fn blocking(&self) -> Result<BlockStore, StorageError> {
        Ok(BlockStore::new(self.db.open_tree("blocklist")?))
    }

    pub fn privacy(&self) -> Result<PrivacyStore, StorageError> {
        Ok(PrivacyStore::new(
            self.db.open_tree("privacy")?,
            self.db.open_tree("privacy_default")?,
        ))
    }

    /// The node's own module trees (`mod.<module>`), flushed on every write. Reads the
    /// trees as they are: [`Store::user_data`] moves legacy trees in first.
    pub fn modules(&self) -> ModuleStore {
        ModuleStore::new(self.db.clone(), self.lsm.clone(), "", true)
    }

    /// The Raft log of the cluster metadata group (routes and members).
    pub fn raft_log<C>(&self) -> Result<RaftLogStore<C>, StorageError>
    where
        C: openraft::RaftTypeConfig,
        C::Entry: Serialize + DeserializeOwned,
    {
        Ok(RaftLogStore::new(
            self.db.open_tree("raft_log")?,
            self.db.open_tree("raft_state")?,
        ))
    }

    /// Remove everything stored for `user` except the account itself: roster, pending
    /// subscription requests, offline messages, block list, privacy lists and every module's
    /// per-account state (vCard, private XML, last activity, ...).
    ///
    /// All of it goes in one transaction, flushed before returning, so a crash leaves either
    /// everything or nothing. The keys are listed just before the transaction, so entries a
    /// concurrent writer adds meanwhile survive: disconnect the user's sessions first. Then delete
    /// the account ([`AccountStore::delete`]); in that order a crash in between leaves an account
    /// that can be deleted again, not data nobody owns. Idempotent.
    ///
    /// The roster's version counter is kept (advanced, with every older version retired), so a
    /// client's cached roster from a deleted account is never taken as current for a new
    /// account of the same name.
    pub fn delete_user_data(&self, user: &str) -> Result<(), StorageError> {
        self.user_data()?.delete_user(user)
    }

    /// The IM data of a node without a cluster.
    pub fn user_data(&self) -> Result<UserData, StorageError> {
        UserData::open(&self.db, &self.lsm, "", true)
    }

    /// One replicated shard's IM data (trees `shardNNN.*`).
    pub fn shard_user_data(&self, shard: u16) -> Result<UserData, StorageError> {
        UserData::open(&self.db, &self.lsm, &format!("shard{shard:03}."), false)
    }

    /// One replicated shard's Raft log and state (trees `shardNNN.raft_log`, `.raft_state`).
    pub fn shard_raft_log<C>(&self, shard: u16) -> Result<RaftLogStore<C>, StorageError>
    where
        C: openraft::RaftTypeConfig,
        C::Entry: Serialize + DeserializeOwned,
    {
        Ok(RaftLogStore::new(
            self.db.open_tree(format!("shard{shard:03}.raft_log"))?,
            self.db.open_tree(format!("shard{shard:03}.raft_state"))?,
        ))
    }

    /// Make everything written so far durable (shutdown).
    /// Bytes the database takes on disk.
    pub fn size_on_disk(&self) -> Result<u64, StorageError> {
        Ok(self.db.size_on_disk()? + self.lsm.keyspace().disk_space())
    }

    pub fn flush(&self) -> Result<(), StorageError> {
        self.db.flush()?;
        self.lsm.sync_all()?;
        Ok(())
    }
}

/// An on-disk record: serde_json with a format version `v`, so the encoding can change.
/// Records of another version are refused as [`StorageError::Corrupt`] rather than misread.
pub(crate) trait Record: Serialize + DeserializeOwned {
    const V: u8 = 1;
    fn v(&self) -> u8;
}

pub(crate) fn encode<R: Record>(record: &R) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(record).map_err(|_| StorageError::Corrupt("encode".into()))
}

pub(crate) fn decode<R: Record>(key: &[u8], bytes: &[u8]) -> Result<R, StorageError> {
    let corrupt = || StorageError::Corrupt(String::from_utf8_lossy(key).escape_debug().to_string());
    let record: R = serde_json::from_slice(bytes).map_err(|_| corrupt())?;
    if record.v() != R::V {
        return Err(corrupt());
    }
    Ok(record)
}

/// The result of a transaction closure; errors of ours abort it.
pub(crate) type TxResult<T> = ConflictableTransactionResult<T, StorageError>;

pub(crate) fn abort(e: StorageError) -> ConflictableTransactionError<StorageError> {
    ConflictableTransactionError::Abort(e)
}

const SEP: u8 = 0;

/// A key part: a prepared JID, list name or XML name; never empty, never containing NUL.
pub(crate) fn part(s: &str) -> Result<&[u8], StorageError> {
    if s.is_empty() || s.as_bytes().contains(&SEP) {
        return Err(StorageError::InvalidKey(s.to_string()));
    }
    Ok(s.as_bytes())
}

/// `user \0`: every key of `user` in a composite-key tree starts with it, and no other user's does.
pub(crate) fn prefix(user: &str) -> Result<Vec<u8>, StorageError> {
    let mut k = part(user)?.to_vec();
    k.push(SEP);
    Ok(k)
}

/// `user \0 a \0 b …`.
pub(crate) fn key(user: &str, rest: &[&str]) -> Result<Vec<u8>, StorageError> {
    let mut k = prefix(user)?;
    for (i, p) in rest.iter().enumerate() {
        if i > 0 {
            k.push(SEP);
        }
        k.extend_from_slice(part(p)?);
    }
    Ok(k)
}

/// The text after `prefix` in `key`.
pub(crate) fn suffix(key: &[u8], prefix_len: usize) -> Result<String, StorageError> {
    key.get(prefix_len..)
        .and_then(|s| std::str::from_utf8(s).ok())
        .map(str::to_string)
        .ok_or_else(|| {
            StorageError::Corrupt(String::from_utf8_lossy(key).escape_debug().to_string())
        })
}

/// Remove all of `user`'s entries, in one transaction, then flush: every key starting with
/// `user \0` in `prefixed`, the key `user` in `exact`, and retire the roster versions in
/// `roster_meta` (see [`rosters`]). Entries added between listing the keys and the
/// transaction are not removed.
pub(crate) fn wipe_user(
    user: &str,
    prefixed: &[&sled::Tree],
    exact: &[&sled::Tree],
    roster_meta: Option<&sled::Tree>,
) -> Result<(), StorageError> {
    let pfx = prefix(user)?;
    let mut trees: Vec<&sled::Tree> = Vec::new();
    let mut keys: Vec<Vec<sled::IVec>> = Vec::new();
    for tree in prefixed {
        keys.push(tree.scan_prefix(&pfx).keys().collect::<Result<_, _>>()?);
        trees.push(tree);
    }
    for tree in exact {
        keys.push(vec![sled::IVec::from(user.as_bytes())]);
        trees.push(tree);
    }
    trees.extend(roster_meta);
    trees.as_slice().transaction(|views| -> TxResult<()> {
        for (view, keys) in views.iter().zip(&keys) {
            for k in keys {
                view.remove(k)?;
            }
        }
        if roster_meta.is_some() {
            if let Some(meta) = views.last() {
                rosters::retire(meta, user)?;
            }
        }
        Ok(())
    })?;
    if let Some(tree) = trees.first() {
        tree.flush()?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(name: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("sb-{name}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            TempDir(dir)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    /// Open the store in `dir`, waiting while it is still locked: after the last handle of a
    /// previous open is dropped, sled's background IO threads (and a child process being
    /// spawned by another test, until its exec) can hold the lock file a moment longer.
    pub fn open(dir: &Path) -> crate::Store {
        let mut tries = 0;
        loop {
            match crate::Store::open(dir) {
                Err(crate::StorageError::Locked(_)) if tries < 250 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other.unwrap(),
            }
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{open, TempDir};

    const U: &str = "juliet@example.com";
    const OTHER: &str = "romeo@example.net";
    const BOOKMARKS: &str = "storage:bookmarks\0storage";

    fn item(jid: &str) -> RosterItem {
        RosterItem {
            jid: jid.to_string(),
            name: Some("N".into()),
            groups: vec!["G".into()],
            subscription: "both".into(),
            pending_out: false,
            pending_in: true,
            approved: false,
        }
    }

    fn privacy_item() -> PrivacyItem {
        PrivacyItem {
            kind: Some("jid".into()),
            value: Some("tybalt@x".into()),
            allow: false,
            order: 1,
            message: true,
            iq: false,
            presence_in: false,
            presence_out: false,
        }
    }

    /// Every kind of write, for `user`.
    fn fill(store: &Store, user: &str) {
        let r = store.rosters().unwrap();
        r.put(user, &item("a@x")).unwrap();
        r.put(user, &item("b@x")).unwrap();
        r.remove(user, "b@x").unwrap();
        r.put_pending_in(user, "c@x", None).unwrap();
        let o = store.offline().unwrap();
        o.push(user, "<message>1</message>", 10).unwrap();
        o.push(user, "<message>2</message>", 10).unwrap();
        o.remove_upto(user, 1).unwrap();
        let b = store.blocking().unwrap();
        b.block(user, &["d@x".to_string(), "e@x".to_string()])
            .unwrap();
        b.unblock(user, &["e@x".to_string()]).unwrap();
        let p = store.privacy().unwrap();
        p.put(user, "l", &[privacy_item()]).unwrap();
        p.set_default(user, Some("l")).unwrap();
        let m = store.modules();
        m.put("vcard", user, "", Some("<vCard/>")).unwrap();
        m.put("private", user, BOOKMARKS, Some("<storage/>"))
            .unwrap();
        m.put("last", user, "", Some("42 bye")).unwrap();
    }

    fn assert_filled(store: &Store, user: &str) {
        let r = store.rosters().unwrap();
        assert_eq!(r.get(user).unwrap(), (3, vec![item("a@x")]));
        assert_eq!(
            r.changes_since(user, 2).unwrap(),
            Some((3, vec![(3, RosterChange::Removed("b@x".into()))]))
        );
        assert_eq!(r.pending_in(user).unwrap().len(), 1);
        let o = store.offline().unwrap();
        assert_eq!(
            o.peek(user).unwrap(),
            vec![(2, "<message>2</message>".into())]
        );
        assert_eq!(o.count(user).unwrap(), 1);
        assert_eq!(store.blocking().unwrap().list(user).unwrap(), vec!["d@x"]);
        let p = store.privacy().unwrap();
        assert_eq!(p.get(user, "l").unwrap(), Some(vec![privacy_item()]));
        assert_eq!(p.default_list(user).unwrap().as_deref(), Some("l"));
        let m = store.modules();
        assert_eq!(
            m.get("vcard", user, "").unwrap().as_deref(),
            Some("<vCard/>")
        );
        assert_eq!(
            m.get("private", user, BOOKMARKS).unwrap().as_deref(),
            Some("<storage/>")
        );
        assert_eq!(m.get("last", user, "").unwrap().as_deref(), Some("42 bye"));
    }

    #[test]
    fn delete_user_data_clears_every_tree_of_that_user_only() {
        let dir = TempDir::new("wipe");
        let store = open(dir.path());
        fill(&store, U);
        fill(&store, OTHER);
        store.delete_user_data(U).unwrap();
        store.delete_user_data(U).unwrap();
        store.delete_user_data("nobody@x").unwrap();
        drop(store);
        let store = open(dir.path());
        assert_filled(&store, OTHER);
        let r = store.rosters().unwrap();
        assert_eq!(r.get(U).unwrap().1, vec![]);
        assert_eq!(r.count(U).unwrap(), 0);
        assert!(r.pending_in(U).unwrap().is_empty());
        assert_eq!(r.changes_since(U, 3).unwrap(), None);
        let o = store.offline().unwrap();
        assert!(o.peek(U).unwrap().is_empty());
        assert_eq!(o.count(U).unwrap(), 0);
        assert!(store.blocking().unwrap().list(U).unwrap().is_empty());
        let p = store.privacy().unwrap();
        assert!(p.lists(U).unwrap().is_empty());
        assert_eq!(p.default_list(U).unwrap(), None);
        let m = store.modules();
        assert_eq!(m.get("vcard", U, "").unwrap(), None);
        assert_eq!(m.get("private", U, BOOKMARKS).unwrap(), None);
        assert_eq!(m.get("last", U, "").unwrap(), None);
    }

    const CRASH_DIR: &str = "SB_STORAGE_CRASH_DIR";
    const CRASH_STEP: &str = "SB_STORAGE_CRASH_STEP";
    const STEPS: usize = 19;

    /// Write operation `i`, after `fill`. Each is the last write of a child process, because a
    /// flush makes every earlier write durable too.
    fn step(store: &Store, i: usize) {
        let r = store.rosters().unwrap();
        let o = store.offline().unwrap();
        let b = store.blocking().unwrap();
        let p = store.privacy().unwrap();
        let m = store.modules();
        match i {
            0 => assert_eq!(r.put(U, &item("z@x")).unwrap(), 4),
            1 => assert_eq!(r.remove(U, "a@x").unwrap(), Some(4)),
            2 => assert!(r.put_pending_in(U, "z@x", None).unwrap()),
            3 => assert!(r.remove_pending_in(U, "c@x").unwrap()),
            4 => assert_eq!(o.push(U, "<message>3</message>", 10).unwrap(), 3),
            5 => assert_eq!(o.remove_upto(U, 2).unwrap(), 1),
            6 => b.block(U, &["z@x".to_string()]).unwrap(),
            7 => b.unblock(U, &["d@x".to_string()]).unwrap(),
            8 => b.unblock_all(U).unwrap(),
            9 => p.put(U, "m", &[]).unwrap(),
            10 => assert!(p.remove(U, "l").unwrap()),
            11 => p.set_default(U, None).unwrap(),
            12 => {
                p.put(U, "m", &[]).unwrap();
                p.set_default(U, Some("m")).unwrap();
            }
            13 => assert!(m.put("vcard", U, "", Some("<vCard>2</vCard>")).unwrap()),
            14 => assert!(m.put("vcard", U, "", None).unwrap()),
            15 => assert!(m
                .put("private", U, BOOKMARKS, Some("<storage>2</storage>"))
                .unwrap()),
            16 => assert!(m.put("last", U, "", Some("43")).unwrap()),
            17 => r.delete_user(U).unwrap(),
            18 => o.delete_user(U).unwrap(),
            _ => unreachable!(),
        }
    }

    /// Whether the effect of `step(i)` is there.
    fn survived(store: &Store, i: usize) -> bool {
        let r = store.rosters().unwrap();
        let o = store.offline().unwrap();
        let b = store.blocking().unwrap();
        let p = store.privacy().unwrap();
        let m = store.modules();
        match i {
            0 => r.item(U, "z@x").unwrap().is_some() && r.version(U).unwrap() == 4,
            1 => {
                r.changes_since(U, 3).unwrap()
                    == Some((4, vec![(4, RosterChange::Removed("a@x".into()))]))
                    && r.count(U).unwrap() == 0
            }
            2 => r.pending_in(U).unwrap().len() == 2,
            3 => r.pending_in(U).unwrap().is_empty(),
            4 => o.peek(U).unwrap().len() == 2 && o.count(U).unwrap() == 2,
            5 => o.peek(U).unwrap().is_empty() && o.count(U).unwrap() == 0,
            6 => b.is_blocked(U, "z@x").unwrap(),
            7 => b.list(U).unwrap().is_empty(),
            8 => b.list(U).unwrap().is_empty(),
            9 => p.get(U, "m").unwrap().is_some(),
            10 => p.get(U, "l").unwrap().is_none() && p.default_list(U).unwrap().is_none(),
            11 => p.default_list(U).unwrap().is_none(),
            12 => p.default_list(U).unwrap().as_deref() == Some("m"),
            13 => m.get("vcard", U, "").unwrap().as_deref() == Some("<vCard>2</vCard>"),
            14 => m.get("vcard", U, "").unwrap().is_none(),
            15 => {
                m.get("private", U, BOOKMARKS).unwrap().as_deref() == Some("<storage>2</storage>")
            }
            16 => m.get("last", U, "").unwrap().as_deref() == Some("43"),
            17 => r.get(U).unwrap() == (4, vec![]) && r.pending_in(U).unwrap().is_empty(),
            18 => o.peek(U).unwrap().is_empty() && o.count(U).unwrap() == 0,
            _ => unreachable!(),
        }
    }

    /// Run by `writes_survive_exit_without_drop` in a child process: write, then exit at once,
    /// without dropping the database and before sled's background flusher runs.
    #[test]
    #[ignore = "run as a child process by writes_survive_exit_without_drop"]
    fn crash_child() {
        let (Some(dir), Some(i)) = (std::env::var_os(CRASH_DIR), std::env::var_os(CRASH_STEP))
        else {
            return;
        };
        let store = open(Path::new(&dir));
        fill(&store, U);
        step(&store, i.to_str().unwrap().parse().unwrap());
        std::process::exit(0);
    }

    #[test]
    fn writes_survive_exit_without_drop() {
        for i in 0..STEPS {
            let dir = TempDir::new("crash");
            let status = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--ignored",
                    "--exact",
                    "tests::crash_child",
                    "--test-threads=1",
                ])
                .env(CRASH_DIR, dir.path())
                .env(CRASH_STEP, i.to_string())
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "child for step {i} failed");
            let store = open(dir.path());
            assert!(survived(&store, i), "step {i} was lost");
        }
    }
}
