//! Trees `mod.<module>`: the per-account state of extension modules (vcard-temp, private XML,
//! last activity, and whatever module comes next), one tree per module, keyed by
//! `user \0 key` (the key is the module's own, possibly empty) with the module's payload,
//! as the module wrote it, for value. The store does not know the payloads' types: a module
//! writes through one generic [`crate::UserDataWrite::Module`], which the shard's Raft log,
//! its snapshots and account deletion carry without any code of the module's own.
//!
//! The trees that vcard-temp, private XML and last activity used before (`vcards`,
//! `private`, `last_activity`) are moved in here when a placement is opened
//! ([`ModuleStore::migrate_legacy`]), and a snapshot or log entry written before is
//! converted the same way ([`legacy_entry`]).
//!
//! A module whose entries are many and ordered (the message archive, `crate::archive`; PEP
//! items next) reads them with [`ModuleStore::range`]: a key range of one account, in either
//! direction, lazily, so a page of a large set costs the page and not the set.
//!
//! Two engines serve the trees. Most modules write rarely and stay on sled. The modules in
//! [`LSM_MODULES`] (the message archive's records and its by-peer index) are written for
//! every message, twice (sender's and recipient's archive), and a sled insert costs 10–13 µs
//! here, which made the archive three times the cost of routing a message (issue 19). They
//! live in a fjall keyspace (an LSM tree: an insert is a journal append and a memtable
//! insert) next to the sled database, one partition per placement and module, named as the
//! sled tree would be (`[shardNNN.]mod.<module>`). Everything above this file sees one kind
//! of tree, [`ModTree`]; archive trees found in sled (written before) are moved into fjall
//! when a placement is opened ([`ModuleStore::migrate_to_lsm`]).

use std::borrow::Cow;
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use sled::transaction::Transactional;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::lsm::Lsm;
use crate::{prefix, StorageError, TxResult};

/// One write of [`ModuleStore::put_all`]: (module, user, key, payload; `None` removes).
pub(crate) type Write<'a> = (&'a str, &'a str, &'a str, Option<&'a str>);

/// The modules written for every message, kept in fjall rather than sled (see the header).
/// (`mam_with` is the by-peer index of earlier versions, converted into `mam_peers` when a
/// placement is opened: `crate::archive::embedded::migrate_index`.)
pub const LSM_MODULES: &[&str] = &["mam_archive", "mam_with", "mam_peers"];

/// One write of [`ModuleStore::put_lsm`]: to the tree `LSM_MODULES[part]`, under `key`
/// (`user \0 key`, as [`entry_key`] makes it), `value` or, `None`, a removal.
pub(crate) struct LsmWrite<'a> {
    pub(crate) part: usize,
    pub(crate) key: Vec<u8>,
    pub(crate) value: Option<Cow<'a, [u8]>>,
    /// An idempotent entry written for many messages (the archive's by-peer spans): left
    /// out when the keyspace is known to hold it already (`crate::lsm::KnownEntries`).
    pub(crate) once: bool,
}

/// How many entries one fjall batch moves or removes at a time (migration, clearing).
const LSM_CHUNK: usize = 10_000;

/// The module trees of one placement (the node's own, or one replicated shard's). Cheap to
/// clone.
#[derive(Clone)]
pub struct ModuleStore {
    db: sled::Db,
    lsm: Lsm,
    /// What every store of this placement shares (through the keyspace's registry,
    /// `Lsm::placement`).
    placement: Arc<Placement>,
    /// The placement's tree prefix (`""` or `shardNNN.`).
    prefix: String,
    /// Flush after each write (off for replicated shards: their Raft log is durable).
    durable: bool,
}

/// What the stores of one placement share, however many are opened.
#[derive(Default)]
pub(crate) struct Placement {
    /// The placement's partitions of [`LSM_MODULES`], in that order, opened once (opening
    /// one per write was 3% of a busy node's CPU).
    lsm_parts: [OnceLock<fjall::PartitionHandle>; LSM_MODULES.len()],
    /// The module write counters.
    generations: Generations,
}

/// Counters of the writes to a placement's module trees, one per slot of a hash of the
/// module's name: a reader that caches what a module stores (the MAM preferences, read
/// for every archived message) keeps the count it read at and drops its cache once the
/// count moves ([`ModuleStore::generation`]). Two modules in one slot only drop a cache
/// more often. An account's deletion and a snapshot's restore move every slot.
#[derive(Default)]
pub(crate) struct Generations([AtomicU64; 16]);

impl Generations {
    fn slot(&self, module: &str) -> &AtomicU64 {
        let i = xxhash_rust::xxh3::xxh3_64(module.as_bytes()) as usize % self.0.len();
        &self.0[i]
    }
}

/// See [`ModuleStore::writing_all`].
pub(crate) struct WritingAll<'a>(&'a ModuleStore);

impl Drop for WritingAll<'_> {
    fn drop(&mut self) {
        for slot in &self.0.placement.generations.0 {
            slot.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// The part of a module tree's name after the placement prefix.
const MOD: &str = "mod.";

/// A module name is a configuration section name: lower-case ASCII, digits, `_` and `-`.
fn module_name(name: &str) -> Result<&str, StorageError> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(name)
    } else {
        Err(StorageError::InvalidKey(name.to_string()))
    }
}

/// `user \0 key`.
fn entry_key(user: &str, key: &str) -> Result<Vec<u8>, StorageError> {
    let mut k = prefix(user)?;
    k.extend_from_slice(key.as_bytes());
    Ok(k)
}

fn text(key: &[u8], bytes: &[u8]) -> Result<String, StorageError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| StorageError::Corrupt(String::from_utf8_lossy(key).escape_debug().to_string()))
}

impl ModuleStore {
    pub(crate) fn new(db: sled::Db, lsm: Lsm, prefix: &str, durable: bool) -> ModuleStore {
        ModuleStore {
            placement: lsm.placement(prefix),
            db,
            lsm,
            prefix: prefix.to_string(),
            durable,
        }
    }

    /// How many times `module`'s tree of this placement was written so far (see
    /// [`Generations`]): a cache of what it stores is current while this stays the same.
    pub fn generation(&self, module: &str) -> u64 {
        self.placement
            .generations
            .slot(module)
            .load(Ordering::Acquire)
    }

    /// `module`'s tree was written (after the write: a reader that saw the old count
    /// drops what it read).
    fn written(&self, module: &str) {
        self.placement
            .generations
            .slot(module)
            .fetch_add(1, Ordering::AcqRel);
    }

    /// Every tree may change until the guard is dropped (an account deleted, a snapshot
    /// restored): then, however that ended, every count moves.
    pub(crate) fn writing_all(&self) -> WritingAll<'_> {
        WritingAll(self)
    }

    /// The same trees, written without flushing.
    pub(crate) fn volatile(mut self) -> ModuleStore {
        self.durable = false;
        self
    }

    /// Whether every write is flushed before it returns.
    pub(crate) fn durable(&self) -> bool {
        self.durable
    }

    /// `module`'s tree (created empty when first used), in the engine that serves it.
    pub(crate) fn tree(&self, module: &str) -> Result<ModTree, StorageError> {
        if let Some(i) = LSM_MODULES.iter().position(|m| *m == module) {
            let slot = &self.placement.lsm_parts[i];
            let part = match slot.get() {
                Some(p) => p.clone(),
                None => {
                    let name = format!("{}{MOD}{module}", self.prefix);
                    let p = self
                        .lsm
                        .keyspace()
                        .open_partition(&name, crate::lsm::partition_options())?;
                    slot.get_or_init(|| p).clone()
                }
            };
            return Ok(ModTree::Lsm(self.lsm.clone(), part));
        }
        let name = format!("{}{MOD}{}", self.prefix, module_name(module)?);
        Ok(ModTree::Sled(self.db.open_tree(name)?))
    }

    /// Every module tree of this placement that exists, by module name, sorted.
    pub(crate) fn trees(&self) -> Result<Vec<(String, ModTree)>, StorageError> {
        let start = format!("{}{MOD}", self.prefix);
        let mut names: Vec<String> = self
            .db
            .tree_names()
            .iter()
            .filter_map(|n| std::str::from_utf8(n).ok())
            .filter_map(|n| n.strip_prefix(&start))
            // An archive tree left in sled is moved on open; its name means fjall's.
            .filter(|n| !LSM_MODULES.contains(n))
            .map(str::to_string)
            .chain(
                self.lsm
                    .keyspace()
                    .list_partitions()
                    .iter()
                    .filter_map(|n| n.strip_prefix(&start))
                    .filter(|n| LSM_MODULES.contains(n))
                    .map(str::to_string),
            )
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|n| Ok((n.clone(), self.tree(&n)?)))
            .collect()
    }

    /// The payload `module` stored for `user` under `key`.
    pub fn get(&self, module: &str, user: &str, key: &str) -> Result<Option<String>, StorageError> {
        let k = entry_key(user, key)?;
        match self.tree(module)?.get(&k)? {
            Some(v) => Ok(Some(text(&k, &v)?)),
            None => Ok(None),
        }
    }

    /// Every (key, payload) `module` stored for `user`, in key order. A scan of the user's
    /// entries, which the module's own quota keeps few.
    pub fn entries(&self, module: &str, user: &str) -> Result<Vec<(String, String)>, StorageError> {
        let pfx = prefix(user)?;
        let mut out = Vec::new();
        for kv in self.tree(module)?.scan_prefix(&pfx) {
            let (k, v) = kv?;
            out.push((text(&k, &k[pfx.len()..])?, text(&k, &v)?));
        }
        Ok(out)
    }

    /// `module`'s entries of `user` whose keys lie between `lower` and `upper`, in key order
    /// (`reverse`: from the last), as (key, payload). Lazy: the caller takes as many as it
    /// needs, so paging a large set reads the page only. An empty range (lower above upper)
    /// yields nothing.
    pub fn range(
        &self,
        module: &str,
        user: &str,
        lower: Bound<&str>,
        upper: Bound<&str>,
        reverse: bool,
    ) -> Result<ModuleRange, StorageError> {
        let pfx = prefix(user)?;
        let key = |k: &str| {
            let mut v = pfx.clone();
            v.extend_from_slice(k.as_bytes());
            v
        };
        let lo = match lower {
            Bound::Included(k) => Bound::Included(key(k)),
            Bound::Excluded(k) => Bound::Excluded(key(k)),
            Bound::Unbounded => Bound::Included(pfx.clone()),
        };
        let hi = match upper {
            Bound::Included(k) => Bound::Included(key(k)),
            Bound::Excluded(k) => Bound::Excluded(key(k)),
            // `user \1`: the first key after every `user \0 …`.
            Bound::Unbounded => {
                let mut end = pfx.clone();
                if let Some(last) = end.last_mut() {
                    *last = 1;
                }
                Bound::Excluded(end)
            }
        };
        Ok(ModuleRange {
            iter: self.tree(module)?.range((lo, hi)),
            prefix_len: pfx.len(),
            reverse,
        })
    }

    /// Store (`Some`) or remove (`None`) `module`'s payload for `user` under `key`; whether
    /// there was one before.
    pub fn put(
        &self,
        module: &str,
        user: &str,
        key: &str,
        payload: Option<&str>,
    ) -> Result<bool, StorageError> {
        let tree = self.tree(module)?;
        let k = entry_key(user, key)?;
        let old = tree.put(k, payload.map(str::as_bytes));
        self.written(module);
        let old = old?;
        if self.durable {
            tree.flush()?;
        }
        Ok(old)
    }

    /// Several [`ModuleStore::put`]s, `(module, user, key, payload)`, as one sled
    /// transaction over the trees they touch (all or nothing), flushed once, and with them
    /// `lsm`, writes to the [`LSM_MODULES`] keyed already (the archived messages of a batch).
    pub(crate) fn put_all<'a>(
        &self,
        writes: &[Write<'a>],
        mut lsm: Vec<LsmWrite<'a>>,
    ) -> Result<(), StorageError> {
        // The archive's writes go in one fjall batch (atomic, persisted once when durable);
        // the rest in one sled transaction. A batch mixing both (a room's groupchat message:
        // its archive entry and its history, `im::muc`) is atomic per engine, the archive
        // first; in a cluster the Raft log replays the whole batch after a crash.
        let mut sled = Vec::with_capacity(writes.len());
        for w @ &(module, user, key, payload) in writes {
            match LSM_MODULES.iter().position(|m| *m == module) {
                Some(part) => lsm.push(LsmWrite {
                    part,
                    key: entry_key(user, key)?,
                    value: payload.map(|p| Cow::Borrowed(p.as_bytes())),
                    once: false,
                }),
                None => sled.push(w),
            }
        }
        self.put_lsm(lsm)?;
        self.put_sled(&sled)
    }

    /// Writes to the [`LSM_MODULES`] trees, keyed already, as one fjall batch: atomic,
    /// written to the OS before it returns, and when durable synced to the disk within
    /// `lsm::SYNC_DELAY` (see `crate::lsm`). Two writes of one key keep their order.
    fn put_lsm(&self, mut writes: Vec<LsmWrite<'_>>) -> Result<(), StorageError> {
        if writes.is_empty() {
            return Ok(());
        }
        // Inserts alone (an archive batch) are staged, to go into the memtables sorted with
        // many others (`crate::lsm_stage`); a removal commits at once, after them. Only on a
        // node without a cluster (a durable placement): a replicated shard applies its Raft
        // entries on the thread its NodeLinks share, where a settle of the whole stage (tens
        // of milliseconds, two fsyncs) held up the messages crossing nodes (three nodes on
        // one core, 200 users: delivery p99 at 4,000 msgs/s 223 ms staged, 38 ms not).
        let stage = self.durable && writes.iter().all(|w| w.value.is_some());
        if !stage {
            // In key order, each insert finds the memtable's skiplist path of the one before
            // it still in the cache (a batch holds a few messages of each of many accounts).
            // The sort is stable. (The stage sorts what it settles itself.)
            writes.sort_by(|a, b| (a.part, &a.key).cmp(&(b.part, &b.key)));
        }
        let known = self.lsm.known();
        if writes.iter().any(|w| w.value.is_none()) {
            known.forget_all();
        }
        if writes.iter().any(|w| w.once) {
            // Known per placement (`prefix \x01`) and tree (the part's index byte).
            let scopes: Vec<Vec<u8>> = (0..LSM_MODULES.len())
                .map(|part| [self.prefix.as_bytes(), &[1, part as u8]].concat())
                .collect();
            let once = writes.iter().filter(|w| w.once);
            let mut keep = known
                .unknown(once.map(|w| [scopes[w.part].as_slice(), w.key.as_slice()]))
                .into_iter();
            // `keep` follows the order of the once-writes.
            writes.retain(|w| !w.once || keep.next().unwrap_or(true));
        }
        let mut staged = Vec::with_capacity(if stage { writes.len() } else { 0 });
        let mut batch = fjall::Batch::with_capacity(self.lsm.keyspace().clone(), writes.len());
        let mut parts: [Option<fjall::PartitionHandle>; LSM_MODULES.len()] = Default::default();
        for w in writes {
            let Some(slot) = parts.get_mut(w.part) else {
                continue;
            };
            let part = match slot {
                Some(p) => &*p,
                None => match self.tree(LSM_MODULES[w.part]) {
                    Ok(ModTree::Lsm(_, p)) => &*slot.insert(p),
                    Ok(ModTree::Sled(_)) => continue,
                    // What was just marked known will not be written.
                    Err(e) => {
                        known.forget_all();
                        return Err(e);
                    }
                },
            };
            match w.value {
                Some(v) if stage => staged.push((part.clone(), w.key, v.into_owned())),
                Some(v) => batch.insert(part, w.key, &*v),
                None => batch.remove(part, w.key),
            }
        }
        // (A failed commit forgets the known entries itself.)
        if stage {
            if let Err(e) = self.lsm.stage(staged, self.durable) {
                known.forget_all();
                return Err(e.into());
            }
        } else {
            self.lsm.commit(batch, self.durable)?;
        }
        Ok(())
    }

    /// [`ModuleStore::put_all`]'s writes to sled trees.
    fn put_sled(&self, writes: &[&Write<'_>]) -> Result<(), StorageError> {
        // (sled cannot run a transaction over no tree.)
        if writes.is_empty() {
            return Ok(());
        }
        let mut names: Vec<&str> = writes.iter().map(|w| w.0).collect();
        names.sort_unstable();
        names.dedup();
        let trees = names
            .iter()
            .map(|m| {
                Ok(self
                    .db
                    .open_tree(format!("{}{MOD}{}", self.prefix, module_name(m)?))?)
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        let mut keyed = Vec::with_capacity(writes.len());
        for &&(module, user, key, payload) in writes {
            let tree = names.binary_search(&module).unwrap_or_default();
            keyed.push((tree, entry_key(user, key)?, payload));
        }
        let done = trees.as_slice().transaction(|views| -> TxResult<()> {
            for (tree, k, payload) in &keyed {
                let view = &views[*tree];
                match payload {
                    Some(p) => view.insert(k.as_slice(), p.as_bytes())?,
                    None => view.remove(k.as_slice())?,
                };
            }
            Ok(())
        });
        for name in &names {
            self.written(name);
        }
        done?;
        if self.durable {
            if let Some(t) = trees.first() {
                t.flush()?;
            }
        }
        Ok(())
    }

    /// The sled tree `name` if it exists (opening one that does not would create it).
    fn existing_sled_tree(&self, name: &str) -> Result<Option<sled::Tree>, StorageError> {
        if !self.db.tree_names().iter().any(|n| n == name.as_bytes()) {
            return Ok(None);
        }
        Ok(Some(self.db.open_tree(name)?))
    }

    /// Move the trees of the modules that were wired by hand before (`vcards`, `private`,
    /// `last_activity`) into their module trees, then drop them. Idempotent: a crash halfway
    /// leaves the old tree, whose entries are moved again (to the same keys, with the same
    /// payloads) on the next open, before any write.
    pub(crate) fn migrate_legacy(&self) -> Result<usize, StorageError> {
        let mut moved = 0;
        for legacy in LEGACY_TREES {
            let name = format!("{}{legacy}", self.prefix);
            let Some(old) = self.existing_sled_tree(&name)? else {
                continue;
            };
            for kv in old.iter() {
                let (k, v) = kv?;
                let (module, key, payload) = legacy_entry(legacy, &k, &v)?;
                self.tree(module)?.put(key, Some(payload.as_bytes()))?;
                moved += 1;
            }
            self.db.flush()?;
            self.db.drop_tree(name.as_bytes())?;
            self.db.flush()?;
        }
        Ok(moved)
    }

    /// Move the archive trees written to sled before (see the header) into their fjall
    /// partitions, then drop them. Idempotent like [`ModuleStore::migrate_legacy`]: a crash
    /// halfway leaves the sled tree, whose entries are copied again (same keys, same
    /// payloads) on the next open.
    pub(crate) fn migrate_to_lsm(&self) -> Result<usize, StorageError> {
        let mut moved = 0;
        for module in LSM_MODULES {
            let name = format!("{}{MOD}{module}", self.prefix);
            let Some(old) = self.existing_sled_tree(&name)? else {
                continue;
            };
            let ModTree::Lsm(_, part) = self.tree(module)? else {
                continue;
            };
            let mut batch = self.lsm.keyspace().batch();
            for kv in old.iter() {
                let (k, v) = kv?;
                batch.insert(&part, &*k, &*v);
                moved += 1;
                if batch.len() >= LSM_CHUNK {
                    std::mem::replace(&mut batch, self.lsm.keyspace().batch()).commit()?;
                }
            }
            // On disk before the sled tree goes.
            self.lsm.commit(batch, false)?;
            self.lsm.sync_all()?;
            self.db.drop_tree(name.as_bytes())?;
            self.db.flush()?;
        }
        Ok(moved)
    }
}

/// Bytes of a key or value, from either engine.
pub(crate) enum Bytes {
    Sled(sled::IVec),
    Lsm(fjall::Slice),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Sled(b) => b,
            Bytes::Lsm(b) => b,
        }
    }
}

type KvIter = Box<dyn DoubleEndedIterator<Item = Result<(Bytes, Bytes), StorageError>>>;

/// An iteration that could not start: its one item is the error.
fn failed(e: fjall::Error) -> KvIter {
    Box::new(std::iter::once(Err(e.into())))
}

/// `owner \0`: a key of `owner`'s for [`Lsm::settle_for`].
fn range_key(owner: &[u8]) -> Vec<u8> {
    [owner, b"\0"].concat()
}

/// One module tree, in sled or in a fjall partition (see the header).
#[derive(Clone)]
pub(crate) enum ModTree {
    Sled(sled::Tree),
    Lsm(Lsm, fjall::PartitionHandle),
}

fn sled_kv(kv: sled::Result<(sled::IVec, sled::IVec)>) -> Result<(Bytes, Bytes), StorageError> {
    let (k, v) = kv?;
    Ok((Bytes::Sled(k), Bytes::Sled(v)))
}

fn lsm_kv(kv: fjall::Result<fjall::KvPair>) -> Result<(Bytes, Bytes), StorageError> {
    let (k, v) = kv?;
    Ok((Bytes::Lsm(k), Bytes::Lsm(v)))
}

impl ModTree {
    pub(crate) fn get(&self, k: &[u8]) -> Result<Option<Bytes>, StorageError> {
        Ok(match self {
            ModTree::Sled(t) => t.get(k)?.map(Bytes::Sled),
            ModTree::Lsm(lsm, p) => {
                lsm.settle_for(k)?;
                p.get(k)?.map(Bytes::Lsm)
            }
        })
    }

    /// Store or remove one entry; whether there was one before.
    pub(crate) fn put(&self, k: Vec<u8>, v: Option<&[u8]>) -> Result<bool, StorageError> {
        match self {
            ModTree::Sled(t) => Ok(match v {
                Some(v) => t.insert(k, v)?,
                None => t.remove(k)?,
            }
            .is_some()),
            ModTree::Lsm(lsm, p) => {
                lsm.settle_all()?;
                let old = p.contains_key(&k)?;
                match v {
                    Some(v) => p.insert(k, v)?,
                    None => {
                        lsm.known().forget_all();
                        p.remove(k)?
                    }
                }
                Ok(old)
            }
        }
    }

    /// Several puts as one atomic batch (not flushed).
    pub(crate) fn apply(
        &self,
        writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<(), StorageError> {
        match self {
            ModTree::Sled(t) => {
                let mut batch = sled::Batch::default();
                for (k, v) in writes {
                    match v {
                        Some(v) => batch.insert(k, v),
                        None => batch.remove(k),
                    }
                }
                t.apply_batch(batch)?;
            }
            ModTree::Lsm(lsm, p) => {
                if writes.iter().any(|(_, v)| v.is_none()) {
                    lsm.known().forget_all();
                }
                let mut batch = lsm.keyspace().batch();
                for (k, v) in writes {
                    match v {
                        Some(v) => batch.insert(p, k, v),
                        None => batch.remove(p, k),
                    }
                }
                lsm.commit(batch, false)?;
            }
        }
        Ok(())
    }

    /// Make every write to this tree so far durable.
    pub(crate) fn flush(&self) -> Result<(), StorageError> {
        match self {
            ModTree::Sled(t) => {
                t.flush()?;
            }
            ModTree::Lsm(lsm, _) => lsm.sync_all()?,
        }
        Ok(())
    }

    pub(crate) fn iter(&self) -> KvIter {
        match self {
            ModTree::Sled(t) => Box::new(t.iter().map(sled_kv)),
            ModTree::Lsm(lsm, p) => match lsm.settle_all() {
                Ok(()) => Box::new(p.iter().map(lsm_kv)),
                Err(e) => failed(e),
            },
        }
    }

    pub(crate) fn scan_prefix(&self, pfx: &[u8]) -> KvIter {
        match self {
            ModTree::Sled(t) => Box::new(t.scan_prefix(pfx).map(sled_kv)),
            ModTree::Lsm(lsm, p) => match lsm.settle_for(pfx) {
                Ok(()) => Box::new(p.prefix(pfx.to_vec()).map(lsm_kv)),
                Err(e) => failed(e),
            },
        }
    }

    pub(crate) fn range(&self, range: (Bound<Vec<u8>>, Bound<Vec<u8>>)) -> KvIter {
        match self {
            ModTree::Sled(t) => Box::new(t.range::<Vec<u8>, _>(range).map(sled_kv)),
            ModTree::Lsm(lsm, p) => {
                // What is staged for the range's account (both ends' account), or everything.
                let owner = |b: &Bound<Vec<u8>>| match b {
                    Bound::Included(k) | Bound::Excluded(k) => {
                        crate::lsm_stage::owner_of(k).map(<[u8]>::to_vec)
                    }
                    Bound::Unbounded => None,
                };
                let settled = match (owner(&range.0), owner(&range.1)) {
                    (Some(a), Some(b)) if a == b => lsm.settle_for(&range_key(&a)),
                    _ => lsm.settle_all(),
                };
                if let Err(e) = settled {
                    return failed(e);
                }
                // fjall panics on a range whose start lies after its end, where sled
                // yields nothing.
                let empty = match (&range.0, &range.1) {
                    (Bound::Included(a) | Bound::Excluded(a), Bound::Excluded(b)) => a >= b,
                    (Bound::Included(a), Bound::Included(b)) => a > b,
                    (Bound::Excluded(a), Bound::Included(b)) => a >= b,
                    _ => false,
                };
                if empty {
                    Box::new(std::iter::empty())
                } else {
                    Box::new(p.range(range).map(lsm_kv))
                }
            }
        }
    }

    pub(crate) fn is_empty(&self) -> Result<bool, StorageError> {
        Ok(match self {
            ModTree::Sled(t) => t.is_empty(),
            ModTree::Lsm(lsm, p) => {
                lsm.settle_all()?;
                p.is_empty()?
            }
        })
    }

    /// Remove every entry.
    pub(crate) fn clear(&self) -> Result<(), StorageError> {
        match self {
            ModTree::Sled(t) => t.clear()?,
            ModTree::Lsm(lsm, p) => loop {
                // (Staged entries first: else a tree that holds only those looks empty.)
                lsm.settle_all()?;
                let keys: Vec<fjall::Slice> = p.keys().take(LSM_CHUNK).collect::<Result<_, _>>()?;
                if keys.is_empty() {
                    break;
                }
                self.apply(keys.into_iter().map(|k| (k.to_vec(), None)).collect())?;
            },
        }
        Ok(())
    }
}

/// The entries of one [`ModuleStore::range`]: (key after `user \0`, payload).
pub struct ModuleRange {
    iter: KvIter,
    prefix_len: usize,
    reverse: bool,
}

impl ModuleRange {
    /// The next raw entry (full key, payload bytes), for callers in this crate that decode
    /// keys themselves and skip the payload.
    pub(crate) fn next_raw(&mut self) -> Option<Result<(Bytes, Bytes), StorageError>> {
        if self.reverse {
            self.iter.next_back()
        } else {
            self.iter.next()
        }
    }
}

impl Iterator for ModuleRange {
    type Item = Result<(String, String), StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        let prefix_len = self.prefix_len;
        self.next_raw().map(|kv| {
            let (k, v) = kv?;
            Ok((text(&k, &k[prefix_len.min(k.len())..])?, text(&k, &v)?))
        })
    }
}

/// Trees of the modules before they had a store of their own.
pub(crate) const LEGACY_TREES: &[&str] = &["vcards", "private", "last_activity"];

/// What the legacy trees held (JSON with a format version `v`).
#[derive(Deserialize)]
struct LegacyXml {
    xml: String,
}

#[derive(Deserialize)]
struct LegacyLast {
    secs: u64,
    status: Option<String>,
}

/// The payload of module `last` (XEP-0012 account part): seconds since the Unix epoch of the
/// account's last logout and that presence's status. Written by `nodes`' last module; here
/// for the conversion of the legacy tree and log entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastActivity {
    pub secs: u64,
    pub status: Option<String>,
}

impl LastActivity {
    pub fn payload(&self) -> String {
        // A struct of a number and an optional string always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// One entry of a legacy tree as (module, entry key, payload). Private XML's old keys were
/// already `user \0 ns \0 name`, which is the module key `ns \0 name`.
pub(crate) fn legacy_entry(
    tree: &str,
    key: &[u8],
    value: &[u8],
) -> Result<(&'static str, Vec<u8>, String), StorageError> {
    let corrupt = || StorageError::Corrupt(String::from_utf8_lossy(key).escape_debug().to_string());
    match tree {
        "vcards" => {
            let r: LegacyXml = serde_json::from_slice(value).map_err(|_| corrupt())?;
            let mut k = key.to_vec();
            k.push(0);
            Ok(("vcard", k, r.xml))
        }
        "private" => {
            let r: LegacyXml = serde_json::from_slice(value).map_err(|_| corrupt())?;
            Ok(("private", key.to_vec(), r.xml))
        }
        "last_activity" => {
            let r: LegacyLast = serde_json::from_slice(value).map_err(|_| corrupt())?;
            let mut k = key.to_vec();
            k.push(0);
            let last = LastActivity {
                secs: r.secs,
                status: r.status,
            };
            Ok(("last", k, last.payload()))
        }
        _ => Err(corrupt()),
    }
}

/// The module key of a private XML element (XEP-0049): its namespace and name.
pub fn private_key(ns: &str, name: &str) -> String {
    format!("{ns}\0{name}")
}

#[cfg(test)]
mod tests {
    use super::ModTree;
    use crate::testutil::{open, TempDir};

    const U: &str = "juliet@example.com";

    #[test]
    fn write_counts_move_for_every_store_of_the_placement() {
        let dir = TempDir::new("modstore-generations");
        let store = open(dir.path());
        // Two stores of one placement, opened apart (the shard's actor and its writer).
        let (reader, writer) = (store.modules(), store.user_data().unwrap());
        let at = reader.generation("mam");
        writer
            .modules
            .put("mam", U, "prefs", Some("<prefs/>"))
            .unwrap();
        let after_put = reader.generation("mam");
        assert_ne!(after_put, at);
        writer
            .modules
            .put_all(
                &[("mam", U, "prefs", Some("<prefs default='never'/>"))],
                Vec::new(),
            )
            .unwrap();
        let after_batch = reader.generation("mam");
        assert_ne!(after_batch, after_put);
        writer.delete_user(U).unwrap();
        assert_ne!(reader.generation("mam"), after_batch);
        // Another placement's counts are its own.
        let shard = store.shard_user_data(1).unwrap();
        let before = reader.generation("mam");
        shard
            .modules
            .put("mam", U, "prefs", Some("<prefs/>"))
            .unwrap();
        assert_eq!(reader.generation("mam"), before);
    }

    #[test]
    fn put_get_entries_remove_and_reopen() {
        let dir = TempDir::new("modstore");
        {
            let store = open(dir.path());
            let m = store.modules();
            assert_eq!(m.get("vcard", U, "").unwrap(), None);
            assert!(!m.put("vcard", U, "", Some("<vCard/>")).unwrap());
            assert!(m.put("vcard", U, "", Some("<vCard>2</vCard>")).unwrap());
            m.put("private", U, "urn:a\0a", Some("<a/>")).unwrap();
            m.put("private", U, "urn:b\0b", Some("<b/>")).unwrap();
            m.put("private", "romeo@x", "urn:a\0a", Some("<a/>"))
                .unwrap();
            // A payload is the module's own: any text, NUL included.
            assert!(m.put("vcard", U, "", Some("a\0b")).is_ok());
            assert!(m.put("Bad Name", U, "", Some("x")).is_err());
        }
        let store = open(dir.path());
        let m = store.modules();
        assert_eq!(m.get("vcard", U, "").unwrap().as_deref(), Some("a\0b"));
        assert_eq!(
            m.entries("private", U).unwrap(),
            vec![
                ("urn:a\0a".to_string(), "<a/>".to_string()),
                ("urn:b\0b".to_string(), "<b/>".to_string())
            ]
        );
        assert!(m.put("private", U, "urn:a\0a", None).unwrap());
        assert_eq!(m.entries("private", U).unwrap().len(), 1);
        let names: Vec<String> = m.trees().unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["private", "vcard"]);
    }

    #[test]
    fn ranges_are_ordered_bounded_and_per_user() {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let dir = TempDir::new("modstore-range");
        let store = open(dir.path());
        let m = store.modules();
        for k in ["a", "b", "c", "d"] {
            m.put("items", U, k, Some(k)).unwrap();
        }
        // Neighbours on both sides of the account's prefix must not leak in.
        m.put("items", "juliet@example.co", "z", Some("z")).unwrap();
        m.put("items", "juliet@example.com0", "a", Some("a"))
            .unwrap();
        let keys = |lo, hi, rev| -> Vec<String> {
            m.range("items", U, lo, hi, rev)
                .unwrap()
                .map(|kv| kv.unwrap().0)
                .collect()
        };
        assert_eq!(keys(Unbounded, Unbounded, false), ["a", "b", "c", "d"]);
        assert_eq!(keys(Unbounded, Unbounded, true), ["d", "c", "b", "a"]);
        assert_eq!(keys(Included("b"), Excluded("d"), false), ["b", "c"]);
        assert_eq!(keys(Excluded("a"), Included("c"), true), ["c", "b"]);
        assert!(keys(Included("d"), Included("a"), false).is_empty());
        assert!(keys(Included("d"), Included("a"), true).is_empty());
        assert!(m
            .range("items", "nobody@x", Unbounded, Unbounded, false)
            .unwrap()
            .next()
            .is_none());
        let first = m
            .range("items", U, Unbounded, Unbounded, false)
            .unwrap()
            .next();
        assert_eq!(first.unwrap().unwrap(), ("a".into(), "a".into()));
    }

    #[test]
    fn archive_trees_live_in_fjall_and_old_sled_ones_move_there() {
        let dir = TempDir::new("modstore-lsm");
        {
            // An archive written before: straight into sled, node's and a shard's.
            let db = sled::open(dir.path().join("db")).unwrap();
            for tree in ["mod.mam_archive", "shard002.mod.mam_peers"] {
                db.open_tree(tree)
                    .unwrap()
                    .insert(format!("{U}\0k"), "old")
                    .unwrap();
            }
            db.flush().unwrap();
        }
        let store = open(dir.path());
        let m = store.modules();
        assert_eq!(
            m.get("mam_archive", U, "k").unwrap().as_deref(),
            Some("old")
        );
        assert!(matches!(m.tree("mam_archive").unwrap(), ModTree::Lsm(..)));
        assert!(matches!(m.tree("vcard").unwrap(), ModTree::Sled(_)));
        let shard = store.shard_user_data(2).unwrap();
        assert_eq!(
            shard.modules.get("mam_peers", U, "k").unwrap().as_deref(),
            Some("old")
        );
        // Gone from sled: a second open moves nothing and finds the same.
        assert_eq!(m.migrate_to_lsm().unwrap(), 0);
        assert_eq!(shard.modules.migrate_to_lsm().unwrap(), 0);
        m.put_all(
            &[
                ("mam_archive", U, "l", Some("new")),
                ("mam_peers", U, "x", Some("")),
            ],
            Vec::new(),
        )
        .unwrap();
        m.put("vcard", U, "", Some("<vCard/>")).unwrap();
        let names: Vec<String> = m.trees().unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["mam_archive", "mam_peers", "vcard"]);
        let shard_names: Vec<String> = shard
            .modules
            .trees()
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(shard_names, ["mam_peers"]);
        drop((m, shard, store));
        let store = open(dir.path());
        let m = store.modules();
        assert_eq!(
            m.entries("mam_archive", U).unwrap(),
            [("k".into(), "old".into()), ("l".into(), "new".into())]
        );
        // Account deletion reaches the fjall trees too.
        store.delete_user_data(U).unwrap();
        assert!(m.entries("mam_archive", U).unwrap().is_empty());
        assert!(m.entries("mam_peers", U).unwrap().is_empty());
        assert!(m.get("vcard", U, "").unwrap().is_none());
    }
}
