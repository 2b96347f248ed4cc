//! Trees `offline` and `offline_meta`: messages kept for users while they are offline
//! (XEP-0160).
//!
//! - `offline`: `user \0 seq` → the stanza XML. `seq` is a big-endian `u64` from a per-user
//!   counter, so a prefix scan returns the messages in arrival order.
//! - `offline_meta`: `user` → the next sequence number and the number of messages kept. It
//!   changes in the same transaction as the messages, so the quota holds under concurrent
//!   pushes and a sequence number is never reused while the user has messages.
//!
//! Delivery without loss: [`OfflineStore::peek`], deliver, then [`OfflineStore::remove_upto`]
//! the last sequence number delivered. A crash in between delivers some messages twice, never
//! zero times.

use serde::{Deserialize, Serialize};
use sled::transaction::{Transactional, TransactionalTree};

use crate::{abort, decode, encode, part, prefix, Record, StorageError, TxResult};

#[derive(Serialize, Deserialize)]
struct MessageRecord {
    v: u8,
    xml: String,
}

impl Record for MessageRecord {
    fn v(&self) -> u8 {
        self.v
    }
}

#[derive(Serialize, Deserialize)]
struct MetaRecord {
    v: u8,
    next: u64,
    count: u64,
}

impl Record for MetaRecord {
    fn v(&self) -> u8 {
        self.v
    }
}

impl MetaRecord {
    fn read_tx(tree: &TransactionalTree, user: &str) -> TxResult<MetaRecord> {
        match tree.get(user.as_bytes())? {
            Some(v) => decode(user.as_bytes(), &v).map_err(abort),
            None => Ok(MetaRecord {
                v: Self::V,
                next: 1,
                count: 0,
            }),
        }
    }

    fn write_tx(&self, tree: &TransactionalTree, user: &str) -> TxResult<()> {
        tree.insert(user.as_bytes(), encode(self).map_err(abort)?)?;
        Ok(())
    }
}

fn seq_key(user: &str, seq: u64) -> Result<Vec<u8>, StorageError> {
    let mut k = prefix(user)?;
    k.extend_from_slice(&seq.to_be_bytes());
    Ok(k)
}

#[derive(Clone)]
pub struct OfflineStore {
    pub(crate) messages: sled::Tree,
    pub(crate) meta: sled::Tree,
    /// Flush after each write (off for replicated shards: their Raft log is durable).
    durable: bool,
}

impl OfflineStore {
    pub(crate) fn new(messages: sled::Tree, meta: sled::Tree) -> Self {
        OfflineStore {
            messages,
            meta,
            durable: true,
        }
    }

    /// Without flushes (see the `durable` field).
    pub(crate) fn volatile(mut self) -> Self {
        self.durable = false;
        self
    }

    /// Keep a message for `user`; returns its sequence number. `QuotaExceeded` (and nothing
    /// stored) if `user` already has `quota` messages.
    pub fn push(&self, user: &str, xml: &str, quota: usize) -> Result<u64, StorageError> {
        part(user)?;
        let value = encode(&MessageRecord {
            v: MessageRecord::V,
            xml: xml.to_string(),
        })?;
        let seq = (&self.messages, &self.meta).transaction(|(messages, meta)| {
            let mut m = MetaRecord::read_tx(meta, user)?;
            if m.count >= quota as u64 {
                return Err(abort(StorageError::QuotaExceeded {
                    user: user.to_string(),
                    quota,
                }));
            }
            let seq = m.next;
            m.next += 1;
            m.count += 1;
            messages.insert(seq_key(user, seq).map_err(abort)?, value.as_slice())?;
            m.write_tx(meta, user)?;
            Ok(seq)
        })?;
        if self.durable {
            self.messages.flush()?;
        }
        Ok(seq)
    }

    /// The messages kept for `user`, oldest first, with their sequence numbers. Nothing is
    /// removed: call [`remove_upto`](Self::remove_upto) once they are delivered.
    pub fn peek(&self, user: &str) -> Result<Vec<(u64, String)>, StorageError> {
        let pfx = prefix(user)?;
        self.messages
            .scan_prefix(&pfx)
            .map(|kv| {
                let (k, v) = kv?;
                let seq = k
                    .get(pfx.len()..)
                    .and_then(|s| <[u8; 8]>::try_from(s).ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| StorageError::Corrupt(format!("offline key of {user}")))?;
                let r: MessageRecord = decode(&k, &v)?;
                Ok((seq, r.xml))
            })
            .collect()
    }

    /// Remove `user`'s messages with sequence numbers up to and including `seq`, in one
    /// transaction; returns how many there were.
    pub fn remove_upto(&self, user: &str, seq: u64) -> Result<usize, StorageError> {
        let keys: Vec<sled::IVec> = self
            .messages
            .range(seq_key(user, 0)?..=seq_key(user, seq)?)
            .keys()
            .collect::<Result<_, _>>()?;
        if keys.is_empty() {
            return Ok(0);
        }
        let removed = (&self.messages, &self.meta).transaction(|(messages, meta)| {
            let mut removed = 0;
            for k in &keys {
                if messages.remove(k)?.is_some() {
                    removed += 1;
                }
            }
            let mut m = MetaRecord::read_tx(meta, user)?;
            m.count = m.count.saturating_sub(removed as u64);
            m.write_tx(meta, user)?;
            Ok(removed)
        })?;
        if self.durable {
            self.messages.flush()?;
        }
        Ok(removed)
    }

    /// The number of messages kept for `user`.
    pub fn count(&self, user: &str) -> Result<usize, StorageError> {
        match self.meta.get(part(user)?)? {
            Some(v) => Ok(decode::<MetaRecord>(user.as_bytes(), &v)?.count as usize),
            None => Ok(0),
        }
    }

    /// Remove all of `user`'s messages, in one transaction.
    pub fn delete_user(&self, user: &str) -> Result<(), StorageError> {
        crate::wipe_user(user, &[&self.messages], &[&self.meta], None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{open, TempDir};

    const U: &str = "juliet@example.com";

    fn msg(i: usize) -> String {
        format!("<message><body>{i}</body></message>")
    }

    #[test]
    fn ordered_delivery_and_remove_upto() {
        let dir = TempDir::new("offline-order");
        let store = open(dir.path());
        let o = store.offline().unwrap();
        assert!(o.peek(U).unwrap().is_empty());
        // More than 255 messages, so a little-endian or text key would sort them wrongly.
        for i in 0..300 {
            assert_eq!(o.push(U, &msg(i), 1000).unwrap(), i as u64 + 1);
        }
        o.push("juliet@example.co", "<message/>", 1000).unwrap();
        let all = o.peek(U).unwrap();
        assert_eq!(all.len(), 300);
        assert!(all
            .iter()
            .enumerate()
            .all(|(i, (seq, xml))| *seq == i as u64 + 1 && *xml == msg(i)));
        assert_eq!(o.remove_upto(U, 256).unwrap(), 256);
        assert_eq!(o.count(U).unwrap(), 44);
        assert_eq!(o.peek(U).unwrap()[0], (257, msg(256)));
        assert_eq!(o.remove_upto(U, 256).unwrap(), 0, "idempotent");
        // A message arriving between peek and remove_upto survives.
        let peeked = o.peek(U).unwrap();
        o.push(U, "<message>late</message>", 1000).unwrap();
        let last = peeked.last().unwrap().0;
        assert_eq!(o.remove_upto(U, last).unwrap(), 44);
        assert_eq!(
            o.peek(U).unwrap(),
            vec![(301, "<message>late</message>".into())]
        );
        assert_eq!(o.count(U).unwrap(), 1);
        assert_eq!(o.count("juliet@example.co").unwrap(), 1, "others untouched");
        // Sequence numbers keep increasing after the queue empties.
        o.remove_upto(U, u64::MAX).unwrap();
        assert_eq!(o.count(U).unwrap(), 0);
        assert_eq!(o.push(U, "<message/>", 1000).unwrap(), 302);
    }

    #[test]
    fn quota() {
        let dir = TempDir::new("offline-quota");
        let store = open(dir.path());
        let o = store.offline().unwrap();
        for i in 0..3 {
            o.push(U, &msg(i), 3).unwrap();
        }
        assert!(matches!(
            o.push(U, &msg(3), 3),
            Err(StorageError::QuotaExceeded { quota: 3, .. })
        ));
        assert_eq!(o.count(U).unwrap(), 3);
        assert_eq!(o.peek(U).unwrap().len(), 3);
        o.remove_upto(U, 1).unwrap();
        o.push(U, &msg(3), 3).unwrap();
        assert!(o.push(U, &msg(4), 3).is_err());
        assert!(matches!(
            o.push("x@y", "<message/>", 0),
            Err(StorageError::QuotaExceeded { .. })
        ));
    }

    #[test]
    fn quota_holds_under_concurrent_pushes() {
        let dir = TempDir::new("offline-race");
        let store = open(dir.path());
        let o = store.offline().unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let o = o.clone();
                std::thread::spawn(move || {
                    (0..20).filter(|i| o.push(U, &msg(*i), 50).is_ok()).count()
                })
            })
            .collect();
        let stored: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(stored, 50);
        assert_eq!(o.count(U).unwrap(), 50);
        let seqs: Vec<u64> = o.peek(U).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
    }

    #[test]
    fn delete_user_and_reopen() {
        let dir = TempDir::new("offline-reopen");
        {
            let store = open(dir.path());
            let o = store.offline().unwrap();
            for i in 0..5 {
                o.push(U, &msg(i), 10).unwrap();
            }
            o.push("romeo@x", "<message/>", 10).unwrap();
            o.remove_upto(U, 2).unwrap();
        }
        let store = open(dir.path());
        let o = store.offline().unwrap();
        assert_eq!(
            o.peek(U).unwrap(),
            vec![(3, msg(2)), (4, msg(3)), (5, msg(4))]
        );
        assert_eq!(o.count(U).unwrap(), 3);
        o.delete_user(U).unwrap();
        assert!(o.peek(U).unwrap().is_empty());
        assert_eq!(o.count(U).unwrap(), 0);
        assert_eq!(o.count("romeo@x").unwrap(), 1);
    }
}
