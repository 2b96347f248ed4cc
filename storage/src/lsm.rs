//! The node's fjall keyspace (`<data_dir>/lsm`, the engine of the append-heavy module trees:
//! the message archive, see `module_store`'s header) and its group commit.
//!
//! Every account shard of a node commits its archive batches to this one keyspace, whose
//! journal is shared by all its partitions. Each shard syncing its own batch made the
//! journal's fsync the most frequent system call on a busy node (sixteen shards, a few
//! messages per batch each). [`Lsm::commit_durable`] shares one fsync among every batch
//! committed while the previous fsync ran: the first thread to find its batch not yet
//! synced syncs everything committed so far; those that queued behind it find theirs
//! covered. A batch is still durable before its commit returns.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The keyspace and the group-commit state its clones share. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Lsm {
    keyspace: fjall::Keyspace,
    sync: Arc<GroupSync>,
}

#[derive(Default)]
struct GroupSync {
    /// Batches committed (to the journal, not necessarily synced), counted from open.
    committed: AtomicU64,
    /// How many of them the last fsync covered; held while an fsync runs.
    synced: Mutex<u64>,
}

impl Lsm {
    pub(crate) fn open(path: &std::path::Path) -> Result<Lsm, fjall::Error> {
        Ok(Lsm {
            keyspace: fjall::Config::new(path).open()?,
            sync: Arc::default(),
        })
    }

    pub(crate) fn keyspace(&self) -> &fjall::Keyspace {
        &self.keyspace
    }

    /// Commit `batch`, then, if `durable`, return only once it is synced to disk, sharing
    /// the fsync with the batches other threads commit meanwhile (see the header).
    pub(crate) fn commit(&self, batch: fjall::Batch, durable: bool) -> Result<(), fjall::Error> {
        batch.commit()?;
        if !durable {
            return Ok(());
        }
        let mine = self.sync.committed.fetch_add(1, Ordering::SeqCst) + 1;
        let mut synced = self
            .sync
            .synced
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *synced >= mine {
            return Ok(());
        }
        // Everything committed up to now, ours included, is in the journal: one fsync
        // covers it all.
        let upto = self.sync.committed.load(Ordering::SeqCst);
        self.keyspace.persist(fjall::PersistMode::SyncAll)?;
        *synced = upto;
        Ok(())
    }

    /// Make everything committed so far durable.
    pub(crate) fn sync_all(&self) -> Result<(), fjall::Error> {
        let upto = self.sync.committed.load(Ordering::SeqCst);
        let mut synced = self
            .sync
            .synced
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.keyspace.persist(fjall::PersistMode::SyncAll)?;
        *synced = (*synced).max(upto);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_from_many_threads_are_all_durable_with_fewer_syncs() {
        let dir = crate::testutil::TempDir::new("lsm-group");
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
        assert_eq!(lsm.sync.committed.load(Ordering::SeqCst), 400);
        assert_eq!(
            *lsm.sync.synced.lock().unwrap(),
            400,
            "the last commit synced all"
        );
    }
}
