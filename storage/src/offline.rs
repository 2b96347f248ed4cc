//! Trees `offline` and `offline_meta`: messages kept for users while they are offline
//! (XEP-0160).
//!
//! - `offline`: `user \0 seq` → the stanza XML. `seq` is a big-endian `u64` from a per-user
//!   counter, so a prefix scan returns the messages in arrival order.
//! - `offline_meta`: `user` → the next sequence number, the number of messages kept and
//!   their bytes (the stanzas' XML). It changes in the same transaction as the messages, so
//!   both quotas hold under concurrent pushes and a sequence number is never reused while the
//!   user has messages. Records written before the byte count existed read as 0 bytes; the
//!   count catches up as those messages are removed (it never goes below 0).
//!
//! Delivery without loss: [`OfflineStore::peek_batch`] a bounded batch, deliver it, then
//! [`OfflineStore::remove`] exactly those sequence numbers, and repeat. A crash in between
//! delivers some messages twice, never zero times.

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
    /// Bytes of the stored stanzas (absent in records of older databases: 0).
    #[serde(default)]
    bytes: u64,
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
                bytes: 0,
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

/// The XML length of a stored message record, for the byte count (0 if it cannot be read:
/// the count then errs towards more room, never towards refusing).
fn stored_len(key: &[u8], value: &[u8]) -> u64 {
    decode::<MessageRecord>(key, value).map_or(0, |r| r.xml.len() as u64)
}

fn seq_of(key: &[u8], prefix_len: usize, user: &str) -> Result<u64, StorageError> {
    key.get(prefix_len..)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StorageError::Corrupt(format!("offline key of {user}")))
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
        self.push_bounded(user, xml, quota, u64::MAX)
    }

    /// [`push`](Self::push), also refused with `ByteQuotaExceeded` if the user's stored
    /// stanzas and this one would pass `max_bytes` (XML bytes).
    pub fn push_bounded(
        &self,
        user: &str,
        xml: &str,
        quota: usize,
        max_bytes: u64,
    ) -> Result<u64, StorageError> {
        part(user)?;
        let len = xml.len() as u64;
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
            if m.bytes.saturating_add(len) > max_bytes {
                return Err(abort(StorageError::ByteQuotaExceeded {
                    user: user.to_string(),
                    quota: max_bytes,
                }));
            }
            let seq = m.next;
            m.next += 1;
            m.count += 1;
            m.bytes = m.bytes.saturating_add(len);
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
                let seq = seq_of(&k, pfx.len(), user)?;
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
        self.remove_keys(user, &keys)
    }

    /// Remove exactly `user`'s messages with these sequence numbers (those still there), in
    /// one transaction; returns how many there were. A message stored after a batch was
    /// fetched is never among them, whatever its sequence number.
    pub fn remove(&self, user: &str, seqs: &[u64]) -> Result<usize, StorageError> {
        let keys: Vec<Vec<u8>> = seqs
            .iter()
            .map(|s| seq_key(user, *s))
            .collect::<Result<_, _>>()?;
        if keys.is_empty() {
            return Ok(0);
        }
        self.remove_keys(user, &keys)
    }

    fn remove_keys<K: AsRef<[u8]>>(&self, user: &str, keys: &[K]) -> Result<usize, StorageError> {
        let removed = (&self.messages, &self.meta).transaction(|(messages, meta)| {
            let mut removed = 0;
            let mut bytes = 0u64;
            for k in keys {
                if let Some(old) = messages.remove(k.as_ref())? {
                    removed += 1;
                    bytes = bytes.saturating_add(stored_len(k.as_ref(), &old));
                }
            }
            if removed == 0 {
                return Ok(0);
            }
            let mut m = MetaRecord::read_tx(meta, user)?;
            m.count = m.count.saturating_sub(removed as u64);
            m.bytes = m.bytes.saturating_sub(bytes);
            m.write_tx(meta, user)?;
            Ok(removed)
        })?;
        if self.durable && removed > 0 {
            self.messages.flush()?;
        }
        Ok(removed)
    }

    /// The oldest of `user`'s messages after sequence number `after`: at least one if there
    /// is one, then more while the batch stays within `max_bytes` (XML bytes) and
    /// `max_messages`. This is what keeps an offline backlog from reaching a session, or a
    /// cluster frame, in one piece: the caller delivers the batch, removes it and asks again.
    pub fn peek_batch(
        &self,
        user: &str,
        after: u64,
        max_bytes: usize,
        max_messages: usize,
    ) -> Result<Vec<(u64, String)>, StorageError> {
        let pfx = prefix(user)?;
        let start = seq_key(user, after.saturating_add(1))?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for kv in self.messages.range(start..) {
            let (k, v) = kv?;
            if !k.starts_with(&pfx) || out.len() >= max_messages.max(1) {
                break;
            }
            let seq = seq_of(&k, pfx.len(), user)?;
            let r: MessageRecord = decode(&k, &v)?;
            if !out.is_empty() && bytes.saturating_add(r.xml.len()) > max_bytes {
                break;
            }
            bytes = bytes.saturating_add(r.xml.len());
            out.push((seq, r.xml));
        }
        Ok(out)
    }

    /// Bytes (XML) of the messages kept for `user`.
    pub fn bytes(&self, user: &str) -> Result<u64, StorageError> {
        match self.meta.get(part(user)?)? {
            Some(v) => Ok(decode::<MetaRecord>(user.as_bytes(), &v)?.bytes),
            None => Ok(0),
        }
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

    #[test]
    fn batches_are_bounded_and_removal_is_exact() {
        let dir = TempDir::new("offline-batch");
        let store = open(dir.path());
        let o = store.offline().unwrap();
        let big = |i: usize| format!("<message><body>{i}{}</body></message>", "x".repeat(1000));
        for i in 0..10 {
            o.push(U, &big(i), 100).unwrap();
        }
        let len = big(0).len();
        // Bytes bound: three fit in 3.5 messages' worth; at least one whatever the bound.
        let b = o.peek_batch(U, 0, len * 7 / 2, 100).unwrap();
        assert_eq!(b.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(o.peek_batch(U, 0, 1, 100).unwrap().len(), 1);
        // Count bound, and `after`.
        let b = o.peek_batch(U, 3, usize::MAX, 2).unwrap();
        assert_eq!(b.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![4, 5]);
        assert!(o.peek_batch(U, 10, usize::MAX, 100).unwrap().is_empty());
        assert!(o
            .peek_batch("other@x", 0, usize::MAX, 100)
            .unwrap()
            .is_empty());
        // Exactly those go: a gap stays, and so does the byte count of what is left.
        assert_eq!(o.remove(U, &[1, 3]).unwrap(), 2);
        assert_eq!(o.remove(U, &[1, 3]).unwrap(), 0, "idempotent");
        assert_eq!(o.count(U).unwrap(), 8);
        assert_eq!(o.bytes(U).unwrap(), 8 * len as u64);
        let left: Vec<u64> = o.peek(U).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(left, vec![2, 4, 5, 6, 7, 8, 9, 10]);
        o.remove_upto(U, u64::MAX).unwrap();
        assert_eq!((o.count(U).unwrap(), o.bytes(U).unwrap()), (0, 0));
    }

    #[test]
    fn byte_quota() {
        let dir = TempDir::new("offline-bytes");
        let store = open(dir.path());
        let o = store.offline().unwrap();
        let m = "<message>0123456789</message>"; // 29 bytes
        o.push_bounded(U, m, 100, 60).unwrap();
        o.push_bounded(U, m, 100, 60).unwrap();
        assert!(matches!(
            o.push_bounded(U, m, 100, 60),
            Err(StorageError::ByteQuotaExceeded { quota: 60, .. })
        ));
        assert_eq!((o.count(U).unwrap(), o.bytes(U).unwrap()), (2, 58));
        // The message quota still applies, and removal frees bytes.
        assert!(matches!(
            o.push_bounded(U, "<m/>", 2, 1000),
            Err(StorageError::QuotaExceeded { .. })
        ));
        o.remove(U, &[1]).unwrap();
        o.push_bounded(U, m, 100, 60).unwrap();
        assert_eq!(o.bytes(U).unwrap(), 58);
    }

    #[test]
    fn meta_records_without_a_byte_count_still_read() {
        let dir = TempDir::new("offline-oldmeta");
        let store = open(dir.path());
        let o = store.offline().unwrap();
        o.push(U, "<message/>", 10).unwrap();
        // A record as an older version wrote it: no `bytes`.
        o.meta
            .insert(U.as_bytes(), br#"{"v":1,"next":2,"count":1}"#.to_vec())
            .unwrap();
        assert_eq!((o.count(U).unwrap(), o.bytes(U).unwrap()), (1, 0));
        o.push_bounded(U, "<message/>", 10, 1000).unwrap();
        assert_eq!(o.bytes(U).unwrap(), 10);
        // Removing more bytes than were counted stops at 0.
        o.remove_upto(U, u64::MAX).unwrap();
        assert_eq!((o.count(U).unwrap(), o.bytes(U).unwrap()), (0, 0));
    }
}
