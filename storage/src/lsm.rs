//! The node's fjall keyspace (`<data_dir>/lsm`, the engine of the append-heavy module trees:
//! the message archive, see `module_store`'s header) and when its writes reach the disk.
//!
//! Every commit is written to the OS before it returns (fjall's `PersistMode::Buffer`): it
//! survives a crash of the process (`kill -9`) at once. A commit to a durable placement (a
//! node without a cluster; a replicated shard has its Raft log) is also synced to the disk
//! by a thread of this keyspace, at most [`SYNC_DELAY`] later, one fsync for everything
//! committed meanwhile. Waiting for the fsync in the committing thread made every archive
//! batch, and every message of a busy room (its archive entry is in the room's own write),
//! wait for the disk: a room of 100 occupants sustained 400 messages/s with its archive
//! against 1,300 without (issue 21), and before that each account shard synced its own batch
//! of one or two messages (issue 19). The archive's messages are delivered before they are
//! archived anyway (the archiver's linger is 20 ms too), so a power loss can take the last
//! [`SYNC_DELAY`] of the archive, never a process crash.
//!
//! The archive's inserts do not go into the memtables one batch at a time: they wait in the
//! keyspace's stage (`crate::lsm_stage`, with a log of its own that this thread syncs too)
//! and go in sorted, tens of thousands at once, or sooner for a read of their account. A full
//! stage is sealed and goes in on the keyspace's settle thread, at the lowest priority and a
//! chunk at a time, while a second generation takes the inserts. Every other commit, and
//! every read across accounts, puts both generations in first.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::lsm_stage::Stage;
use crate::module_store::Placement;

/// The nice value of the keyspace's background threads (fjall's flushes, compaction and
/// monitor, and our syncer): the lowest priority. Nothing waits for them (the archive's
/// messages are delivered before they are archived), and at normal priority a compaction or
/// a flush took the core from the threads that deliver messages in slices of milliseconds:
/// one node with the archive on at 14,000 msgs/s had a delivery p99 of 101-131 ms with them
/// at nice 0, 11-16 ms at nice 19, for the same CPU (issues 19 and 22). When the core is
/// full they fall behind; the archive's bounded queue then drops (and counts) what it cannot
/// take, as it does whenever the archive cannot keep up.
const BACKGROUND_NICE: i32 = 19;
/// The names of the keyspace's background threads (fjall's and ours).
const BACKGROUND_THREADS: [&str; 6] = [
    "compactor",
    "flusher",
    "monitor",
    "syncer",
    "lsm-sync",
    "lsm-settle",
];

/// Entries a full stage puts into the keyspace at a time on the settle thread (about 2 ms
/// of memtable inserts): between two chunks a read of an account, or a shard thread whose
/// stage filled again, can take the full stage.
const SETTLE_CHUNK: usize = 1024;

/// The longest a durable commit waits for its fsync.
pub(crate) const SYNC_DELAY: Duration = Duration::from_millis(20);

/// Entries [`KnownEntries`] remembers at most; past it, it starts over.
/// (A span entry per account, peer and minute, bare and full JID: 200 chatty accounts
/// with 200 peers each are 80,000 at once, and a set cleared faster than its entries
/// recur saves nothing. 262,144 hashes are about 9 MB.)
const MAX_KNOWN: usize = 262_144;

/// The keyspace and its syncer. Cheap to clone; the syncer stops (after a last sync) when
/// the last clone is dropped.
#[derive(Clone)]
pub(crate) struct Lsm {
    keyspace: fjall::Keyspace,
    shared: Arc<Shared>,
}

/// What the clones of one [`Lsm`] share.
struct Shared {
    keyspace: fjall::Keyspace,
    syncer: Worker,
    /// A background sync failed: the keyspace is not to be trusted with more writes.
    sync_failed: Arc<AtomicBool>,
    known: Arc<KnownEntries>,
    /// The archive's inserts waiting to go into the memtables together (`crate::lsm_stage`):
    /// the generation taking inserts.
    stage: Mutex<Stage>,
    /// The last full generation, going into the keyspace on the settle thread (empty when
    /// it is done). Locked after `stage` when both are.
    sealed: Arc<Mutex<Stage>>,
    settler: Worker,
    /// What the module stores of each placement share (`crate::module_store::Placement`:
    /// its partitions and its module write counters), by placement prefix.
    placements: Mutex<HashMap<String, Arc<Placement>>>,
}

impl Drop for Shared {
    /// The last handle is gone: what is staged goes into the keyspace (else the next open
    /// replays it from the stage's log), before the syncer's last sync.
    fn drop(&mut self) {
        self.settler.stop();
        let mut sealed = self.sealed.lock().unwrap_or_else(PoisonError::into_inner);
        let stage = self.stage.get_mut().unwrap_or_else(PoisonError::into_inner);
        // The older generation first, as the settle thread would have.
        for generation in [&mut *sealed, stage] {
            if let Err(e) = settle(&self.keyspace, &self.known, generation, Settle::All) {
                tracing::warn!(error = %e, "archive: staged inserts left to the stage log's replay");
            }
        }
    }
}

/// What [`settle`] inserts: everything staged, the next entries in key order (at most so
/// many), or one account's entries.
#[derive(Clone, Copy)]
enum Settle<'k> {
    All,
    Chunk(usize),
    Owner(&'k [u8]),
}

/// Insert what `what` names from `stage` into the keyspace. Once that emptied the stage
/// (everything, or its last chunk): also synced, and the stage's log emptied (and that
/// synced), so that nothing a later removal takes can come back from a replay.
fn settle(
    keyspace: &fjall::Keyspace,
    known: &KnownEntries,
    stage: &mut Stage,
    what: Settle<'_>,
) -> Result<(), fjall::Error> {
    // (Every commit and read comes here: on a node with nothing staged, a look and out.)
    if stage.is_clear() {
        return Ok(());
    }
    let mut batch = keyspace.batch();
    let (n, emptied) = match what {
        Settle::Owner(owner) => (stage.take_owner(owner, &mut batch), false),
        Settle::All => stage.take_chunk(usize::MAX, &mut batch),
        Settle::Chunk(max) => stage.take_chunk(max, &mut batch),
    };
    if n > 0 {
        if let Err(e) = batch.durability(Some(fjall::PersistMode::Buffer)).commit() {
            known.forget_all();
            return Err(e);
        }
    }
    if emptied {
        keyspace.persist(fjall::PersistMode::SyncAll)?;
        stage.truncate_log()?;
    }
    Ok(())
}

/// Idempotent entries (`module_store::LsmWrite::once`: the archive's by-peer spans, written
/// for many messages with the same key and an empty value) known to be in the keyspace, so
/// that a commit leaves them out rather than inserting them into the memtable again (issue
/// 19: every memtable insert costs a skiplist search of a few µs). Kept as the 128-bit
/// XXH3 of the scope (placement and tree) and key: 16 bytes inline, no key to chase, and
/// two entries of one hash (which would leave one unwritten) are a 2^-112 chance at
/// [`MAX_KNOWN`] entries. Any removal from the keyspace's archive trees, a failed commit
/// or more than [`MAX_KNOWN`] entries clear it: forgetting only costs a write.
#[derive(Default)]
pub(crate) struct KnownEntries(Mutex<HashSet<u128, BuildHasherDefault<HashHasher>>>);

/// The set's hasher: its keys are hashes already (XXH3), so their low bits serve.
#[derive(Default)]
pub struct HashHasher(u64);

impl Hasher for HashHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes.iter().take(8) {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }

    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

impl KnownEntries {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<u128, BuildHasherDefault<HashHasher>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Of `keys`, each named by its scope (placement and tree) then the key itself, whether
    /// each is unknown (and to be written), marking it known.
    pub(crate) fn unknown<'k>(&self, keys: impl Iterator<Item = [&'k [u8]; 2]>) -> Vec<bool> {
        let mut known = self.lock();
        let mut named = Vec::new();
        keys.map(|[scope, key]| {
            named.clear();
            named.extend_from_slice(scope);
            named.extend_from_slice(key);
            let name = xxhash_rust::xxh3::xxh3_128(&named);
            if known.len() >= MAX_KNOWN && !known.contains(&name) {
                known.clear();
            }
            // One probe: false when it was known.
            known.insert(name)
        })
        .collect()
    }

    /// Forget every entry (something may have been removed, or a commit failed).
    pub(crate) fn forget_all(&self) {
        self.lock().clear();
    }
}

#[derive(Default)]
struct Flags {
    /// Work for the thread: for the sync thread, something committed to a durable
    /// placement since the last sync; for the settle thread, a sealed stage.
    pending: bool,
    /// The last handle is gone: finish (the sync thread syncs what is left) and exit.
    stop: bool,
}

/// What a keyspace thread of ours (the sync thread, the settle thread) and the threads
/// that give it work share.
#[derive(Default)]
struct Signal {
    flags: Mutex<Flags>,
    wake: Condvar,
}

impl Signal {
    fn flags(&self) -> std::sync::MutexGuard<'_, Flags> {
        self.flags.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The flags, once there is work or the thread is to stop.
    fn work_or_stop(&self) -> std::sync::MutexGuard<'_, Flags> {
        let mut flags = self.flags();
        while !flags.pending && !flags.stop {
            flags = self
                .wake
                .wait(flags)
                .unwrap_or_else(PoisonError::into_inner);
        }
        flags
    }
}

/// A keyspace thread of ours and its [`Signal`]; stopped and joined when dropped.
struct Worker {
    signal: Arc<Signal>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Worker {
    /// Give the thread work (once until it takes it).
    fn wake(&self) {
        let mut flags = self.signal.flags();
        if !flags.pending {
            flags.pending = true;
            self.signal.wake.notify_one();
        }
    }

    /// Stop the thread and wait for it: it finishes its round and exits, dropping its
    /// handle on the keyspace, so the keyspace can be opened again as soon as this returns.
    fn stop(&self) {
        self.signal.flags().stop = true;
        self.signal.wake.notify_all();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The settle thread, which puts a full stage into the keyspace at the lowest priority, so
/// that the tens of milliseconds of memtable inserts of a full stage do not hold a shard
/// thread (and the archive's other writers, waiting on the stage) while the core is busy
/// delivering messages: for each sealed stage, [`settle`]'s `Settle::Chunk` until it is
/// clear. A chunk that fails leaves the rest to whoever needs the sealed stage next (the
/// next seal, a read across accounts, a removal), which reports the error; the entries stay
/// in the stage's log for a replay.
fn run_settler(
    keyspace: fjall::Keyspace,
    known: Arc<KnownEntries>,
    sealed: Arc<Mutex<Stage>>,
    signal: Arc<Signal>,
) {
    loop {
        {
            let mut flags = signal.work_or_stop();
            if flags.stop {
                return;
            }
            flags.pending = false;
        }
        while !signal.flags().stop {
            let mut stage = sealed.lock().unwrap_or_else(PoisonError::into_inner);
            if stage.is_clear() {
                break;
            }
            if let Err(e) = settle(&keyspace, &known, &mut stage, Settle::Chunk(SETTLE_CHUNK)) {
                tracing::warn!(error = %e, "archive: a full stage did not go into the keyspace; it stays in the stage's log");
                break;
            }
        }
    }
}

/// The sync thread: wait for a commit, let more come for [`SYNC_DELAY`], sync them all (and
/// the stage's logs, `stage_logs`).
fn run_syncer(
    keyspace: fjall::Keyspace,
    stage_logs: [std::fs::File; 2],
    signal: Arc<Signal>,
    failed: Arc<AtomicBool>,
) {
    loop {
        let mut flags = signal.work_or_stop();
        let deadline = Instant::now() + SYNC_DELAY;
        while !flags.stop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            flags = signal
                .wake
                .wait_timeout(flags, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let stop = flags.stop;
        flags.pending = false;
        drop(flags);
        if keyspace.persist(fjall::PersistMode::SyncAll).is_err()
            || stage_logs.iter().any(|log| log.sync_data().is_err())
        {
            failed.store(true, Ordering::SeqCst);
        }
        if stop {
            return;
        }
    }
}

/// Give the process's keyspace background threads [`BACKGROUND_NICE`] (Linux: the nice value
/// is per thread; elsewhere nothing is done). Best effort: a thread that cannot be found or
/// changed keeps its priority.
fn lower_background_priority() {
    #[cfg(target_os = "linux")]
    for (name, task) in threads() {
        if !BACKGROUND_THREADS.contains(&name.as_str()) {
            continue;
        }
        if let Some(tid) = task.file_name().and_then(|t| t.to_str()?.parse().ok()) {
            // SAFETY: setpriority reads its plain integer arguments only.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, tid, BACKGROUND_NICE);
            }
        }
    }
}

/// This process's threads: each one's name and its `/proc/self/task/<tid>` directory.
#[cfg(target_os = "linux")]
fn threads() -> Vec<(String, std::path::PathBuf)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .map(|task| {
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            (name.trim_end().to_string(), task.path())
        })
        .collect()
}

/// How the keyspace's partitions (the archive's trees) are created: size-tiered compaction.
///
/// The archive is written with every message and read a page at a time now and then, and
/// its keys (`account \0 id`) interleave all accounts, so leveled compaction (fjall's
/// default) rewrote each byte once per level: over 120 s at 10,000 msgs/s (one node, 10,000
/// users) its compaction thread took 10.1 s of CPU against 2.0 s size-tiered, 7.8 % of the
/// node's CPU, and the share grows with the archive. The price is in reads, which merge more
/// runs: a page of 50 at 10 million messages p50 0.76 → 1.41 ms, p99 4.51 → 4.27 ms
/// (issue 19, docs/archive-benchmarks.md). The strategy is stored with a partition when it
/// is created: partitions made by earlier versions keep leveled compaction.
pub(crate) fn partition_options() -> fjall::PartitionCreateOptions {
    fjall::PartitionCreateOptions::default().compaction_strategy(
        fjall::compaction::Strategy::SizeTiered(fjall::compaction::SizeTiered::default()),
    )
}

impl Lsm {
    pub(crate) fn open(path: &std::path::Path) -> Result<Lsm, fjall::Error> {
        let keyspace = fjall::Config::new(path).open()?;
        // Two generations, each with its log (`lsm.stage`, `lsm.stage2`): whichever was
        // taking inserts or going into the keyspace when the node stopped, both replay.
        let (stage, replayed) = Stage::open(&path.with_extension("stage"), &keyspace)?;
        let (sealed, replayed_sealed) = Stage::open(&path.with_extension("stage2"), &keyspace)?;
        if replayed + replayed_sealed > 0 {
            tracing::info!(
                replayed = replayed + replayed_sealed,
                "archive: staged inserts replayed from the stage logs"
            );
        }
        let sync_signal = Arc::new(Signal::default());
        let sync_failed = Arc::new(AtomicBool::new(false));
        let thread = {
            let (keyspace, signal, failed) =
                (keyspace.clone(), sync_signal.clone(), sync_failed.clone());
            let stage_logs = [stage.log_handle()?, sealed.log_handle()?];
            std::thread::Builder::new()
                .name("lsm-sync".into())
                .spawn(move || run_syncer(keyspace, stage_logs, signal, failed))?
        };
        let known = Arc::new(KnownEntries::default());
        let sealed = Arc::new(Mutex::new(sealed));
        let signal = Arc::new(Signal::default());
        let settle_thread = {
            let (keyspace, known, sealed, signal) = (
                keyspace.clone(),
                known.clone(),
                sealed.clone(),
                signal.clone(),
            );
            std::thread::Builder::new()
                .name("lsm-settle".into())
                .spawn(move || run_settler(keyspace, known, sealed, signal))?
        };
        lower_background_priority();
        // A thread names itself once it runs: look again when the new ones surely have.
        let _ = std::thread::Builder::new()
            .name("lsm-nice".into())
            .spawn(|| {
                std::thread::sleep(Duration::from_millis(500));
                lower_background_priority();
            });
        Ok(Lsm {
            keyspace: keyspace.clone(),
            shared: Arc::new(Shared {
                keyspace,
                stage: Mutex::new(stage),
                sealed,
                settler: Worker {
                    signal,
                    thread: Mutex::new(Some(settle_thread)),
                },
                placements: Mutex::default(),
                syncer: Worker {
                    signal: sync_signal,
                    thread: Mutex::new(Some(thread)),
                },
                sync_failed,
                known,
            }),
        })
    }

    pub(crate) fn keyspace(&self) -> &fjall::Keyspace {
        &self.keyspace
    }

    pub(crate) fn known(&self) -> &KnownEntries {
        &self.shared.known
    }

    /// What the module stores of the placement `prefix` share.
    pub(crate) fn placement(&self, prefix: &str) -> Arc<Placement> {
        let mut all = self
            .shared
            .placements
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        all.entry(prefix.to_string()).or_default().clone()
    }

    /// Commit `batch`, written to the OS before this returns; if `durable`, synced to the
    /// disk within [`SYNC_DELAY`] (see the header). An error once a background sync failed.
    /// Staged inserts go in first (`crate::lsm_stage`), so that the batch orders after them.
    pub(crate) fn commit(&self, batch: fjall::Batch, durable: bool) -> Result<(), fjall::Error> {
        if self.shared.sync_failed.load(Ordering::SeqCst) {
            return Err(fjall::Error::Poisoned);
        }
        self.settle_all()?;
        if let Err(e) = batch.durability(Some(fjall::PersistMode::Buffer)).commit() {
            self.shared.known.forget_all();
            return Err(e);
        }
        if durable {
            self.sync_soon();
        }
        Ok(())
    }

    /// Have the sync thread sync within [`SYNC_DELAY`].
    fn sync_soon(&self) {
        self.shared.syncer.wake();
    }

    fn stage_lock(&self) -> std::sync::MutexGuard<'_, Stage> {
        self.shared
            .stage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Stage `inserts` (`crate::lsm_stage`): in the stage's log before this returns (written
    /// to the OS; if `durable`, synced within [`SYNC_DELAY`]), in the memtables once the
    /// stage is full or a read needs them. Inserts only: anything else is a [`commit`](Self::commit)
    /// after [`settle_all`](Self::settle_all).
    pub(crate) fn stage(
        &self,
        inserts: Vec<(fjall::PartitionHandle, Vec<u8>, Vec<u8>)>,
        durable: bool,
    ) -> Result<(), fjall::Error> {
        if self.shared.sync_failed.load(Ordering::SeqCst) {
            return Err(fjall::Error::Poisoned);
        }
        let mut stage = self.stage_lock();
        let full = stage.stage(inserts)?;
        if durable {
            self.sync_soon();
        }
        if full {
            self.seal(&mut stage)?;
        }
        Ok(())
    }

    /// The full generation `stage` becomes the sealed one, for the settle thread, and the
    /// emptied sealed one takes inserts. If the settle thread has not finished the last one
    /// (the core is busy), this thread finishes it first: the stage stays bounded.
    fn seal(&self, stage: &mut Stage) -> Result<(), fjall::Error> {
        let mut sealed = self.sealed_lock();
        settle(&self.keyspace, &self.shared.known, &mut sealed, Settle::All)?;
        std::mem::swap(stage, &mut *sealed);
        drop(sealed);
        self.shared.settler.wake();
        Ok(())
    }

    fn sealed_lock(&self) -> std::sync::MutexGuard<'_, Stage> {
        self.shared
            .sealed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Put what is staged for the account that `key` (a key or a key prefix) belongs to
    /// into the keyspace, so that a read sees it; everything when `key` names no account.
    pub(crate) fn settle_for(&self, key: &[u8]) -> Result<(), fjall::Error> {
        match crate::lsm_stage::owner_of(key) {
            Some(owner) => self.settle_both(Settle::Owner(owner)),
            None => self.settle_all(),
        }
    }

    /// Put everything staged into the keyspace (before a read across accounts, a removal,
    /// or any write that is not a staged insert).
    pub(crate) fn settle_all(&self) -> Result<(), fjall::Error> {
        self.settle_both(Settle::All)
    }

    /// [`settle`] both generations: the sealed one, then the one taking inserts.
    fn settle_both(&self, what: Settle<'_>) -> Result<(), fjall::Error> {
        let mut stage = self.stage_lock();
        let mut sealed = self.sealed_lock();
        let (keyspace, known) = (&self.keyspace, &*self.shared.known);
        settle(keyspace, known, &mut sealed, what)?;
        settle(keyspace, known, &mut stage, what)
    }

    /// Make everything committed or staged so far durable, now.
    pub(crate) fn sync_all(&self) -> Result<(), fjall::Error> {
        self.keyspace.persist(fjall::PersistMode::SyncAll)?;
        self.stage_lock().sync_log()?;
        self.sealed_lock().sync_log()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nice value of each of this process's threads named `name` (field 19 of stat).
    #[cfg(target_os = "linux")]
    fn nice_of(name: &str) -> Vec<i64> {
        threads()
            .into_iter()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, task)| std::fs::read_to_string(task.join("stat")).ok())
            .map(|stat| {
                let after = stat.rsplit_once(')').unwrap().1;
                after.split_whitespace().nth(16).unwrap().parse().unwrap()
            })
            .collect()
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn background_threads_run_at_the_lowest_priority() {
        let dir = crate::testutil::TempDir::new("lsm-nice");
        let _lsm = Lsm::open(&dir.path().join("lsm")).unwrap();
        // Other tests open keyspaces meanwhile: each has its threads lowered within 500 ms.
        let lowered = |name: &str| {
            let nice = nice_of(name);
            !nice.is_empty() && nice.iter().all(|n| *n == i64::from(BACKGROUND_NICE))
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        for name in ["compactor", "flusher", "lsm-sync", "lsm-settle"] {
            while !lowered(name) {
                assert!(Instant::now() < deadline, "{name}: {:?}", nice_of(name));
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    #[test]
    fn durable_commits_return_at_once_and_are_synced_soon_together() {
        let dir = crate::testutil::TempDir::new("lsm-sync");
        let lsm = Lsm::open(&dir.path().join("lsm")).unwrap();
        let part = lsm
            .keyspace()
            .open_partition("p", fjall::PartitionCreateOptions::default())
            .unwrap();
        let threads: Vec<_> = (0..8u32)
            .map(|t| {
                let (lsm, part) = (lsm.clone(), part.clone());
                std::thread::spawn(move || {
                    for i in 0..50u32 {
                        let mut b = lsm.keyspace().batch();
                        b.insert(&part, format!("{t}-{i}"), "v");
                        lsm.commit(b, true).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(part.len().unwrap(), 400);
        // The syncer takes the pending flag within SYNC_DELAY of the last commit.
        let deadline = Instant::now() + SYNC_DELAY * 50;
        while lsm.shared.syncer.signal.flags().pending {
            assert!(Instant::now() < deadline, "nothing synced the last commits");
            std::thread::sleep(SYNC_DELAY / 4);
        }
        assert!(!lsm.shared.sync_failed.load(Ordering::SeqCst));
    }

    #[test]
    fn known_entries_are_known_per_scope_until_forgotten() {
        let known = KnownEntries::default();
        let keys: [&[u8]; 3] = [b"a", b"b", b"a"];
        let in_scope = |scope: &'static [u8]| keys.into_iter().map(move |k| [scope, k]);
        assert_eq!(known.unknown(in_scope(b"s1")), [true, true, false]);
        assert_eq!(known.unknown(in_scope(b"s1")), [false, false, false]);
        // Another scope (placement and tree) names another entry.
        assert_eq!(known.unknown([[&b"s2"[..], b"a"]].into_iter()), [true]);
        known.forget_all();
        assert_eq!(known.unknown(in_scope(b"s1")), [true, true, false]);
    }

    #[test]
    fn the_keyspace_reopens_once_the_last_handle_is_dropped() {
        let dir = crate::testutil::TempDir::new("lsm-reopen");
        let path = dir.path().join("lsm");
        for round in 0..3u32 {
            let lsm = Lsm::open(&path).unwrap();
            let part = lsm
                .keyspace()
                .open_partition("p", fjall::PartitionCreateOptions::default())
                .unwrap();
            assert_eq!(part.len().unwrap(), round as usize);
            let mut b = lsm.keyspace().batch();
            b.insert(&part, format!("k{round}"), "v");
            lsm.commit(b, true).unwrap();
            drop(part);
            drop(lsm);
        }
    }

    /// The length of the stage's logs next to the keyspace at `path` (both generations').
    fn stage_log_len(path: &std::path::Path) -> u64 {
        ["stage", "stage2"]
            .iter()
            .map(|ext| std::fs::metadata(path.with_extension(ext)).unwrap().len())
            .sum()
    }

    /// What a crash would leave of the keyspace at `path` and its stage logs, copied into
    /// the directory `to` (the copy's lock file removed); the copy's keyspace path.
    fn crash_copy(path: &std::path::Path, to: &std::path::Path) -> std::path::PathBuf {
        std::fs::create_dir_all(to).unwrap();
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(path)
            .arg(path.with_extension("stage"))
            .arg(path.with_extension("stage2"))
            .arg(to)
            .status()
            .unwrap();
        assert!(status.success());
        let copy = to.join(path.file_name().unwrap());
        let _ = std::fs::remove_file(copy.join("lock"));
        copy
    }

    fn part(lsm: &Lsm) -> fjall::PartitionHandle {
        lsm.keyspace()
            .open_partition("p", fjall::PartitionCreateOptions::default())
            .unwrap()
    }

    fn inserts(
        part: &fjall::PartitionHandle,
        keys: &[&str],
    ) -> Vec<(fjall::PartitionHandle, Vec<u8>, Vec<u8>)> {
        keys.iter()
            .map(|k| (part.clone(), k.as_bytes().to_vec(), b"v".to_vec()))
            .collect()
    }

    #[test]
    fn staged_inserts_are_read_per_account_and_survive_a_crash_through_the_stage_log() {
        let dir = crate::testutil::TempDir::new("lsm-stage");
        let path = dir.path().join("lsm");
        {
            let lsm = Lsm::open(&path).unwrap();
            let p = part(&lsm);
            lsm.stage(inserts(&p, &["alice\0b", "bob\0a", "alice\0a"]), true)
                .unwrap();
            // Staged, not in the memtable yet.
            assert!(p.get("alice\0a").unwrap().is_none());
            // A read of alice's settles alice's entries only.
            lsm.settle_for(b"alice\0").unwrap();
            assert!(p.get("alice\0a").unwrap().is_some());
            assert!(p.get("alice\0b").unwrap().is_some());
            assert!(p.get("bob\0a").unwrap().is_none());
            lsm.stage(inserts(&p, &["carol\0a"]), true).unwrap();
            // A crash: nothing settles on the way out (the handles are leaked), what the
            // stage log holds is all that is left of bob's and carol's entries.
            lsm.sync_all().unwrap();
            std::mem::forget(p);
            std::mem::forget(lsm);
        }
        // (The leaked keyspace keeps its lock: reopen a copy of the directory.)
        let copy = crash_copy(&path, &dir.path().join("copy"));
        let lsm = Lsm::open(&copy).unwrap();
        let p = part(&lsm);
        for k in ["alice\0a", "alice\0b", "bob\0a", "carol\0a"] {
            assert!(p.get(k).unwrap().is_some(), "{k}");
        }
        assert_eq!(stage_log_len(&copy), 0);
    }

    #[test]
    fn a_removal_settles_the_stage_first_and_empties_its_log() {
        let dir = crate::testutil::TempDir::new("lsm-stage-remove");
        let path = dir.path().join("lsm");
        let lsm = Lsm::open(&path).unwrap();
        let p = part(&lsm);
        lsm.stage(inserts(&p, &["alice\0a", "alice\0b"]), true)
            .unwrap();
        lsm.settle_for(b"alice\0").unwrap();
        assert!(stage_log_len(&path) > 0);
        let mut b = lsm.keyspace().batch();
        b.remove(&p, "alice\0a");
        lsm.commit(b, true).unwrap();
        // A replay of the log now could not bring alice\0a back: the log is empty.
        assert_eq!(stage_log_len(&path), 0);
        assert!(p.get("alice\0a").unwrap().is_none());
        assert!(p.get("alice\0b").unwrap().is_some());
    }

    #[test]
    fn a_full_stage_goes_into_the_keyspace_by_itself() {
        let dir = crate::testutil::TempDir::new("lsm-stage-full");
        let path = dir.path().join("lsm");
        let lsm = Lsm::open(&path).unwrap();
        let p = part(&lsm);
        let keys: Vec<String> = (0..crate::lsm_stage::MAX_ENTRIES)
            .map(|i| format!("user{}\0{i:08}", i % 100))
            .collect();
        for chunk in keys.chunks(1000) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            lsm.stage(inserts(&p, &refs), false).unwrap();
        }
        // Read straight from the partition (no settle): the settle thread put every entry
        // there, then emptied the sealed stage's log.
        let deadline = Instant::now() + Duration::from_secs(20);
        while p.len().unwrap() < keys.len() || stage_log_len(&path) > 0 {
            assert!(
                Instant::now() < deadline,
                "{} of {} in the keyspace, logs {} bytes",
                p.len().unwrap(),
                keys.len(),
                stage_log_len(&path)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(p.len().unwrap(), keys.len());
    }

    /// A full stage is sealed and goes into the keyspace on the settle thread; until it is
    /// there a read of an account takes that account's sealed entries itself, a removal
    /// first puts the whole sealed stage in, and a crash replays it from its log.
    #[test]
    fn a_sealed_stage_is_read_removed_after_and_replayed_like_the_other() {
        let dir = crate::testutil::TempDir::new("lsm-stage-sealed");
        let path = dir.path().join("lsm");
        {
            let lsm = Lsm::open(&path).unwrap();
            let p = part(&lsm);
            // The settle thread is held up: it cannot take the sealed stage meanwhile.
            let hold = lsm.shared.sealed.clone();
            let held = hold.lock().unwrap();
            // Fill a stage (alice's and bob's) as the seal would: swap it in by hand.
            let mut full = lsm.stage_lock();
            full.stage(inserts(&p, &["alice\0a", "bob\0a", "bob\0b"]))
                .unwrap();
            drop(full);
            let mut held = held;
            std::mem::swap(&mut *lsm.stage_lock(), &mut *held);
            drop(held);
            lsm.stage(inserts(&p, &["alice\0b"]), true).unwrap();
            assert!(p.get("alice\0a").unwrap().is_none());
            // A read of alice's takes hers from both generations.
            lsm.settle_for(b"alice\0").unwrap();
            assert!(p.get("alice\0a").unwrap().is_some());
            assert!(p.get("alice\0b").unwrap().is_some());
            assert!(p.get("bob\0a").unwrap().is_none());
            // A crash now: bob's are in the sealed stage's log only.
            lsm.sync_all().unwrap();
            crash_copy(&path, &dir.path().join("copy"));
            // A removal puts the sealed stage in first and empties both logs.
            let mut b = lsm.keyspace().batch();
            b.remove(&p, "bob\0a");
            lsm.commit(b, true).unwrap();
            assert_eq!(stage_log_len(&path), 0);
            assert!(p.get("bob\0a").unwrap().is_none());
            assert!(p.get("bob\0b").unwrap().is_some());
        }
        let copy = dir.path().join("copy").join("lsm");
        let lsm = Lsm::open(&copy).unwrap();
        let p = part(&lsm);
        for k in ["alice\0a", "alice\0b", "bob\0a", "bob\0b"] {
            assert!(p.get(k).unwrap().is_some(), "{k}");
        }
        assert_eq!(stage_log_len(&copy), 0);
    }
}
