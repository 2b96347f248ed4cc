//! Tree `blocklist`: the JIDs each user blocks (XEP-0191). `user \0 jid` → a marker record.
//!
//! JIDs are stored and matched exactly as given; the node decides which forms (bare, full,
//! domain) to look up.

use serde::{Deserialize, Serialize};

use crate::{decode, encode, key, prefix, suffix, Record, StorageError};

#[derive(Serialize, Deserialize)]
struct BlockRecord {
    v: u8,
}

impl Record for BlockRecord {
    fn v(&self) -> u8 {
        self.v
    }
}

#[derive(Clone)]
pub struct BlockStore {
    pub(crate) tree: sled::Tree,
    /// Flush after each write (off for replicated shards: their Raft log is durable).
    durable: bool,
}

impl BlockStore {
    pub(crate) fn new(tree: sled::Tree) -> Self {
        BlockStore {
            tree,
            durable: true,
        }
    }

    /// Without flushes (see the `durable` field).
    pub(crate) fn volatile(mut self) -> Self {
        self.durable = false;
        self
    }

    /// The JIDs `user` blocks, sorted.
    pub fn list(&self, user: &str) -> Result<Vec<String>, StorageError> {
        let pfx = prefix(user)?;
        self.tree
            .scan_prefix(&pfx)
            .map(|kv| {
                let (k, v) = kv?;
                decode::<BlockRecord>(&k, &v)?;
                suffix(&k, pfx.len())
            })
            .collect()
    }

    /// Add `jids` to the list, all or none. Blocking a JID already blocked is not an error.
    pub fn block(&self, user: &str, jids: &[String]) -> Result<(), StorageError> {
        let value = encode(&BlockRecord { v: BlockRecord::V })?;
        let mut batch = sled::Batch::default();
        for jid in jids {
            batch.insert(key(user, &[jid])?, value.as_slice());
        }
        self.tree.apply_batch(batch)?;
        if self.durable {
            self.tree.flush()?;
        }
        Ok(())
    }

    /// Remove `jids` from the list, all or none. JIDs not blocked are ignored.
    pub fn unblock(&self, user: &str, jids: &[String]) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for jid in jids {
            batch.remove(key(user, &[jid])?);
        }
        self.tree.apply_batch(batch)?;
        if self.durable {
            self.tree.flush()?;
        }
        Ok(())
    }

    /// Empty the list, in one batch.
    pub fn unblock_all(&self, user: &str) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for k in self.tree.scan_prefix(prefix(user)?).keys() {
            batch.remove(k?);
        }
        self.tree.apply_batch(batch)?;
        if self.durable {
            self.tree.flush()?;
        }
        Ok(())
    }

    /// Whether exactly `jid` is on `user`'s list.
    pub fn is_blocked(&self, user: &str, jid: &str) -> Result<bool, StorageError> {
        Ok(self.tree.contains_key(key(user, &[jid])?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{open, TempDir};

    const U: &str = "juliet@example.com";

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn set_semantics() {
        let dir = TempDir::new("block-set");
        let store = open(dir.path());
        let b = store.blocking().unwrap();
        assert!(b.list(U).unwrap().is_empty());
        b.block(U, &s(&["romeo@x", "example.net", "a@b/res"]))
            .unwrap();
        b.block(U, &s(&["romeo@x"])).unwrap();
        b.block("juliet@example.co", &s(&["z@z"])).unwrap();
        assert_eq!(
            b.list(U).unwrap(),
            s(&["a@b/res", "example.net", "romeo@x"])
        );
        assert!(b.is_blocked(U, "romeo@x").unwrap());
        assert!(b.is_blocked(U, "a@b/res").unwrap());
        assert!(!b.is_blocked(U, "a@b").unwrap(), "exact match only");
        assert!(!b.is_blocked(U, "z@z").unwrap());
        b.unblock(U, &s(&["romeo@x", "never@x"])).unwrap();
        assert_eq!(b.list(U).unwrap(), s(&["a@b/res", "example.net"]));
        // A bad JID refuses the whole request.
        assert!(matches!(
            b.block(U, &s(&["ok@x", "bad\0"])),
            Err(StorageError::InvalidKey(_))
        ));
        assert!(!b.is_blocked(U, "ok@x").unwrap());
        b.unblock_all(U).unwrap();
        assert!(b.list(U).unwrap().is_empty());
        assert_eq!(b.list("juliet@example.co").unwrap(), s(&["z@z"]));
    }

    #[test]
    fn survives_reopen() {
        let dir = TempDir::new("block-reopen");
        {
            let store = open(dir.path());
            let b = store.blocking().unwrap();
            b.block(U, &s(&["a@x", "b@x", "c@x"])).unwrap();
            b.unblock(U, &s(&["b@x"])).unwrap();
        }
        let store = open(dir.path());
        let b = store.blocking().unwrap();
        assert_eq!(b.list(U).unwrap(), s(&["a@x", "c@x"]));
    }
}
