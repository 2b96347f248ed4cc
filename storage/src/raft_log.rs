//! The Raft log of the cluster's metadata group, on sled (openraft storage v2).
//!
//! Trees: `raft_log` holds entries under their index (big-endian, so sled's order is the log's
//! order); `raft_state` holds the vote, the committed log id and the last purged log id, and
//! the state machine's latest snapshot (see [`SnapshotSlot`]). Entries are JSON: the log is
//! small (route changes are batched per node) and JSON keeps it readable with `sled` tools.
//!
//! An append reports durable only after sled has flushed it: a vote or an entry the leader
//! counts towards a quorum must survive `kill -9`.

// openraft fixes the error type of its storage traits, and it is large; boxing it here
// would only be unboxed again at every trait boundary.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, LogId, LogState, OptionalSend, RaftLogId, RaftLogReader, RaftTypeConfig,
    StorageError, StorageIOError, Vote,
};
use serde::{de::DeserializeOwned, Serialize};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";
const SNAPSHOT: &[u8] = b"snapshot";

type Result<T, C> = std::result::Result<T, StorageError<<C as RaftTypeConfig>::NodeId>>;
type PlainResult<T> = std::result::Result<T, crate::StorageError>;

fn read_err<C: RaftTypeConfig>(e: impl std::error::Error + 'static) -> StorageError<C::NodeId> {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn write_err<C: RaftTypeConfig>(e: impl std::error::Error + 'static) -> StorageError<C::NodeId> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

/// The log store. Cheap to clone: the clone is the log reader openraft asks for.
pub struct RaftLogStore<C> {
    log: sled::Tree,
    state: sled::Tree,
    _types: PhantomData<fn() -> C>,
}

impl<C> Clone for RaftLogStore<C> {
    fn clone(&self) -> Self {
        RaftLogStore {
            log: self.log.clone(),
            state: self.state.clone(),
            _types: PhantomData,
        }
    }
}

impl<C> RaftLogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    pub(crate) fn new(log: sled::Tree, state: sled::Tree) -> Self {
        RaftLogStore {
            log,
            state,
            _types: PhantomData,
        }
    }

    /// Forget the whole log, the vote and the snapshot (a replica that was moved away).
    pub fn clear(&self) -> PlainResult<()> {
        self.log.clear()?;
        self.state.clear()?;
        self.state.flush()?;
        Ok(())
    }

    /// Where the state machine keeps its snapshot: the same tree as the vote, so one sled
    /// handle carries a node's whole Raft state.
    pub fn snapshot_slot(&self) -> SnapshotSlot {
        SnapshotSlot {
            tree: self.state.clone(),
        }
    }

    fn get_json<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, C> {
        match self.state.get(key).map_err(read_err::<C>)? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(read_err::<C>),
            None => Ok(None),
        }
    }

    async fn put_json<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), C> {
        let bytes = serde_json::to_vec(value).map_err(write_err::<C>)?;
        self.state.insert(key, bytes).map_err(write_err::<C>)?;
        flush(&self.state).await.map_err(write_err::<C>)?;
        Ok(())
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId<C::NodeId>>, C> {
        match self.log.last().map_err(read_err::<C>)? {
            Some((_, bytes)) => {
                let entry: C::Entry = serde_json::from_slice(&bytes).map_err(read_err::<C>)?;
                Ok(Some(entry.get_log_id().clone()))
            }
            None => Ok(None),
        }
    }
}

/// Make everything written so far durable, on tokio's blocking pool. Not sled's
/// `flush_async`: it waits on sled's own I/O pool, and enough concurrent waiters (one per
/// Raft group) starve that pool of the thread that would write the buffer they wait for.
async fn flush(tree: &sled::Tree) -> std::result::Result<(), sled::Error> {
    let tree = tree.clone();
    match tokio::task::spawn_blocking(move || tree.flush()).await {
        Ok(r) => r.map(|_| ()),
        Err(e) => Err(sled::Error::Io(std::io::Error::other(e))),
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl<C> RaftLogReader<C> for RaftLogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, C> {
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for item in self.log.range::<[u8; 8], _>((start, end)) {
            let (_, bytes) = item.map_err(read_err::<C>)?;
            out.push(serde_json::from_slice(&bytes).map_err(read_err::<C>)?);
        }
        Ok(out)
    }
}

impl<C> RaftLogStorage<C> for RaftLogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, C> {
        let last_purged: Option<LogId<C::NodeId>> = self.get_json(LAST_PURGED)?;
        let last = self.last_entry_log_id()?.or(last_purged.clone());
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> Result<(), C> {
        self.put_json(VOTE, vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<C::NodeId>>, C> {
        self.get_json(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<C::NodeId>>) -> Result<(), C> {
        // Not flushed on its own: it is a hint that lets a restarted node re-apply sooner,
        // and the next append or vote flushes it anyway.
        let bytes = serde_json::to_vec(&committed).map_err(write_err::<C>)?;
        self.state
            .insert(COMMITTED, bytes)
            .map_err(write_err::<C>)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<C::NodeId>>, C> {
        Ok(self
            .get_json::<Option<LogId<C::NodeId>>>(COMMITTED)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> Result<(), C>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry).map_err(write_err::<C>)?;
            batch.insert(&index_key(entry.get_log_id().index), bytes);
        }
        self.log.apply_batch(batch).map_err(write_err::<C>)?;
        let flushed = flush(&self.log).await.map_err(std::io::Error::other);
        callback.log_io_completed(flushed);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> Result<(), C> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(index_key(log_id.index)..) {
            let (key, _) = item.map_err(write_err::<C>)?;
            batch.remove(key);
        }
        self.log.apply_batch(batch).map_err(write_err::<C>)?;
        flush(&self.log).await.map_err(write_err::<C>)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> Result<(), C> {
        // Record the purge point first: a crash between the two steps leaves extra entries,
        // which is harmless, never a hole.
        self.put_json(LAST_PURGED, &log_id).await?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(..=index_key(log_id.index)) {
            let (key, _) = item.map_err(write_err::<C>)?;
            batch.remove(key);
        }
        self.log.apply_batch(batch).map_err(write_err::<C>)?;
        Ok(())
    }
}

/// The latest state-machine snapshot of the metadata group, as opaque bytes: the state
/// machine owns their encoding, this slot only makes them durable.
#[derive(Clone)]
pub struct SnapshotSlot {
    tree: sled::Tree,
}

impl SnapshotSlot {
    pub fn load(&self) -> PlainResult<Option<Vec<u8>>> {
        Ok(self.tree.get(SNAPSHOT)?.map(|v| v.to_vec()))
    }

    pub async fn save(&self, bytes: &[u8]) -> PlainResult<()> {
        self.tree.insert(SNAPSHOT, bytes)?;
        flush(&self.tree).await?;
        Ok(())
    }
}
