//! The archive's staged inserts: what the message archive appends to the fjall keyspace
//! (`crate::lsm`) waits here, in arrival order, and goes into the memtables many thousands at
//! a time, sorted.
//!
//! Why: a memtable insert is a skiplist search whose cost is its cache misses. The archive's
//! keys are `account \0 …`, so the inserts of one batch land all over the memtable, and
//! between two batches the node's other work (its sessions' sockets and buffers) evicts
//! the skiplist from the cache: every level of every search missed, about 4 µs an insert,
//! four inserts per chat message (issue 19). Sorted and dense (tens of thousands at once
//! into a memtable of about as many), consecutive inserts walk nearly the same path and
//! find it in the cache: 1.8 µs an insert against 3.7 µs for sorted batches of 256, in a
//! cold cache (a fjall micro benchmark: 50,000 inserts of 250 bytes, 10,000 accounts; the
//! commit that brought the stage has it).
//!
//! What keeps it correct:
//! - **Durable as a commit.** Every staged batch is appended to a log file of its own
//!   (`<data_dir>/lsm.stage`, checksummed records) before it returns, written to the OS at
//!   once and, for a durable placement, synced with the keyspace by `lsm`'s sync thread. On
//!   open the log is replayed into the keyspace (a torn last record is where it ends) and
//!   emptied. Once staged entries are in the keyspace and synced, the log is emptied.
//! - **Read your writes.** Every read of an archive tree first settles (inserts) what is
//!   staged for the account it reads (keys begin `account \0`, [`owner_of`]); a read across
//!   accounts (retention, a snapshot's dump) settles everything. The account's entries are
//!   found by a scan of the entries' account hashes (tens of µs for a full stage), not an
//!   index kept up at every insert.
//! - **Order.** A removal, or any write that is not a staged insert, settles everything
//!   first, so staged inserts never move past a later removal. The log then holds only
//!   inserts made after the last removal, which a replay can repeat harmlessly.
//! - **Bounded.** At [`MAX_ENTRIES`] or [`MAX_BYTES`] staged, the stage is sealed: `crate::lsm`
//!   keeps two generations, each with its log (`lsm.stage`, `lsm.stage2`); the full one goes
//!   into the keyspace on a settle thread at the lowest priority, [`take_chunk`](Stage::take_chunk)
//!   at a time, while the other takes inserts. A read of an account takes its entries from
//!   both; a removal settles both. A stage that fills while the last sealed one is not in
//!   yet finishes that one first.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Staged inserts that make the stage settle. (At the carrier shape, 10,000 accounts at
/// 8,000 messages/s, four inserts a message: about a second's worth, and about as many as
/// the records' 16 MiB memtable holds.)
pub(crate) const MAX_ENTRIES: usize = 32_768;
/// Staged bytes (keys and values) that make the stage settle.
pub(crate) const MAX_BYTES: usize = 16 << 20;

/// One staged insert.
struct Staged {
    /// The XXH3 of the key's account ([`owner_of`]; 0 for a key without one).
    owner: u64,
    part: fjall::PartitionHandle,
    key: Vec<u8>,
    value: Vec<u8>,
    /// Inserted already (settled for its account's read).
    settled: bool,
}

/// Staged inserts of one keyspace and their log: a generation of the keyspace's stage
/// (`crate::lsm` keeps two, the one taking inserts and a full one going into the keyspace).
pub(crate) struct Stage {
    entries: Vec<Staged>,
    /// Bytes staged since the stage was last emptied.
    bytes: usize,
    /// While the stage goes into the keyspace a chunk at a time ([`take_chunk`](Self::take_chunk)):
    /// all its entries in key order, and how many of them the chunks took.
    order: Vec<u32>,
    taken: usize,
    log: File,
    /// The log's length (where the next record goes).
    log_len: u64,
}

/// The account of an archive key or key prefix: the bytes before its first NUL; `None` when
/// it has none (a prefix shorter than an account: every account may match).
pub(crate) fn owner_of(key: &[u8]) -> Option<&[u8]> {
    key.iter().position(|b| *b == 0).map(|i| &key[..i])
}

fn owner_hash(owner: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(owner)
}

/// A log record: `len u32 LE`, `xxh3_64 u64 LE` of the payload, the payload: entries of
/// `name len u16`, partition name, `key len u32`, key, `value len u32`, value.
fn encode_record(out: &mut Vec<u8>, entries: &[(&str, &[u8], &[u8])]) {
    let start = out.len();
    out.extend_from_slice(&[0; 12]);
    for (name, key, value) in entries {
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
    let payload_len = (out.len() - start - 12) as u32;
    let sum = xxhash_rust::xxh3::xxh3_64(&out[start + 12..]);
    out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    out[start + 4..start + 12].copy_from_slice(&sum.to_le_bytes());
}

/// The entries of every whole, intact record at the start of `log` (a crash can tear the
/// last one: replay stops there).
fn decode_log(log: &[u8]) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Some(head)
    }
    fn len(b: &mut &[u8], n: usize) -> Option<usize> {
        let bytes = take(b, n)?;
        let mut buf = [0u8; 4];
        buf[..n].copy_from_slice(bytes);
        Some(u32::from_le_bytes(buf) as usize)
    }
    let mut out = Vec::new();
    let mut rest = log;
    while let (Some(n), Some(sum)) = (len(&mut rest, 4), take(&mut rest, 8)) {
        let Some(mut payload) = take(&mut rest, n) else {
            break;
        };
        if xxhash_rust::xxh3::xxh3_64(payload).to_le_bytes() != sum {
            break;
        }
        let mut record = Vec::new();
        while !payload.is_empty() {
            let entry = (|| {
                let name_len = len(&mut payload, 2)?;
                let name = std::str::from_utf8(take(&mut payload, name_len)?).ok()?;
                let key_len = len(&mut payload, 4)?;
                let key = take(&mut payload, key_len)?;
                let value_len = len(&mut payload, 4)?;
                let value = take(&mut payload, value_len)?;
                Some((name.to_string(), key.to_vec(), value.to_vec()))
            })();
            match entry {
                Some(e) => record.push(e),
                // A record whose checksum holds but does not parse was not written by us.
                None => return out,
            }
        }
        out.extend(record);
    }
    out
}

impl Stage {
    /// Open the log at `path`, replaying what a previous run left in it into `keyspace`
    /// (synced before the log is emptied). Returns the stage and how many entries were
    /// replayed.
    pub(crate) fn open(
        path: &Path,
        keyspace: &fjall::Keyspace,
    ) -> Result<(Stage, usize), fjall::Error> {
        let mut log = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut bytes = Vec::new();
        log.read_to_end(&mut bytes)?;
        let replayed = decode_log(&bytes);
        let n = replayed.len();
        if n > 0 {
            let mut parts: HashMap<String, fjall::PartitionHandle> = HashMap::new();
            let mut batch = keyspace.batch();
            for (name, key, value) in replayed {
                let part = match parts.get(&name) {
                    Some(p) => p.clone(),
                    None => {
                        let p = keyspace.open_partition(&name, crate::lsm::partition_options())?;
                        parts.insert(name, p.clone());
                        p
                    }
                };
                batch.insert(&part, key, value);
            }
            batch.commit()?;
            keyspace.persist(fjall::PersistMode::SyncAll)?;
        }
        if !bytes.is_empty() {
            log.set_len(0)?;
            log.sync_data()?;
        }
        log.seek(SeekFrom::Start(0))?;
        Ok((
            Stage {
                entries: Vec::new(),
                bytes: 0,
                order: Vec::new(),
                taken: 0,
                log,
                log_len: 0,
            },
            n,
        ))
    }

    /// A handle on the log for the sync thread.
    pub(crate) fn log_handle(&self) -> std::io::Result<File> {
        self.log.try_clone()
    }

    /// Stage `inserts` (partition, key, value): appended to the log, then kept in memory.
    /// Whether the stage is now full (the caller seals it, see `crate::lsm`).
    pub(crate) fn stage(
        &mut self,
        inserts: Vec<(fjall::PartitionHandle, Vec<u8>, Vec<u8>)>,
    ) -> Result<bool, fjall::Error> {
        let mut record = Vec::with_capacity(
            inserts
                .iter()
                .map(|(p, k, v)| p.name.len() + k.len() + v.len() + 10)
                .sum::<usize>()
                + 12,
        );
        {
            let view: Vec<(&str, &[u8], &[u8])> = inserts
                .iter()
                .map(|(p, k, v)| (&*p.name, k.as_slice(), v.as_slice()))
                .collect();
            encode_record(&mut record, &view);
        }
        if let Err(e) = self.log.write_all(&record) {
            // A partial record is ignored by a replay; cut it off so the next one is read.
            let _ = self.log.set_len(self.log_len);
            let _ = self.log.seek(SeekFrom::Start(self.log_len));
            return Err(e.into());
        }
        self.log_len += record.len() as u64;
        for (part, key, value) in inserts {
            self.bytes += key.len() + value.len();
            self.entries.push(Staged {
                owner: owner_of(&key).map_or(0, owner_hash),
                part,
                key,
                value,
                settled: false,
            });
        }
        // Entries settled for a read still count: they hold the log's bytes and their slot.
        Ok(self.entries.len() >= MAX_ENTRIES || self.bytes >= MAX_BYTES)
    }

    /// Whether nothing is staged and the log is empty (settled entries still in the log
    /// must leave it before a removal: a replay would bring them back).
    pub(crate) fn is_clear(&self) -> bool {
        self.entries.is_empty() && self.log_len == 0
    }

    /// Insert what is staged for `owner` into `batch` (in key order), marking it settled.
    /// How many were added.
    pub(crate) fn take_owner(&mut self, owner: &[u8], batch: &mut fjall::Batch) -> usize {
        // A scan of the owners' hashes (a read costs tens of µs at a full stage) rather than
        // an index by account kept up at every insert: a read is rare next to the inserts,
        // and at the carrier shape, where nearly every insert is another account's, the
        // index's upkeep cost more than a µs per message (issue 19). A hash collision only
        // settles more.
        let owner = owner_hash(owner);
        let picked = self.sorted(
            self.entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.owner == owner && !e.settled)
                .map(|(i, _)| i),
        );
        self.insert(picked, batch)
    }

    /// Insert the next (at most) `max` entries in key order into `batch` (`usize::MAX`:
    /// all), so that a full stage can go into the keyspace in slices, each holding the stage
    /// only briefly. How many were added, and whether the stage is now empty (the log keeps
    /// it all until [`truncate_log`](Self::truncate_log)).
    pub(crate) fn take_chunk(&mut self, max: usize, batch: &mut fjall::Batch) -> (usize, bool) {
        if self.taken == 0 && self.order.is_empty() {
            self.order = self
                .sorted((0..self.entries.len()).filter(|i| !self.entries[*i].settled))
                .into_iter()
                .map(|i| i as u32)
                .collect();
        }
        let end = self.taken.saturating_add(max).min(self.order.len());
        let next: Vec<usize> = self.order[self.taken..end]
            .iter()
            .map(|i| *i as usize)
            // A read of the entry's account may have settled it meanwhile.
            .filter(|i| !self.entries[*i].settled)
            .collect();
        self.taken = end;
        let n = self.insert(next, batch);
        let done = self.taken == self.order.len();
        if done {
            self.clear();
        }
        (n, done)
    }

    /// No entries (the log is left as it is).
    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
        self.order.clear();
        self.taken = 0;
    }

    /// The entries at `indices` in key order (consecutive memtable inserts then walk nearly
    /// the same path).
    fn sorted(&self, indices: impl Iterator<Item = usize>) -> Vec<usize> {
        // Sorted on what is inline: the partition (its name's address: the batch does not
        // care in which order the partitions come, only that each one's keys are together)
        // and the key's first 8 bytes; only a tie reads both keys. Comparing the names and
        // keys behind their pointers missed the cache at every step (the sort was a third
        // of the stage's cost).
        let entries = &self.entries;
        let mut order: Vec<(usize, u64, usize)> = indices
            .map(|i| {
                let e = &entries[i];
                let mut head = [0u8; 8];
                let n = e.key.len().min(8);
                head[..n].copy_from_slice(&e.key[..n]);
                (e.part.name.as_ptr() as usize, u64::from_be_bytes(head), i)
            })
            .collect();
        order.sort_unstable_by(|a, b| {
            (a.0, a.1)
                .cmp(&(b.0, b.1))
                .then_with(|| entries[a.2].key.cmp(&entries[b.2].key))
        });
        order.into_iter().map(|(_, _, i)| i).collect()
    }

    /// Insert the entries at `order` into `batch`, in that order, marking them settled.
    /// How many.
    fn insert(&mut self, order: Vec<usize>, batch: &mut fjall::Batch) -> usize {
        for &i in &order {
            let e = &mut self.entries[i];
            e.settled = true;
            batch.insert(
                &e.part,
                std::mem::take(&mut e.key),
                std::mem::take(&mut e.value),
            );
        }
        order.len()
    }

    /// Empty the log, synced: everything it held is in the keyspace and synced.
    pub(crate) fn truncate_log(&mut self) -> Result<(), fjall::Error> {
        if self.log_len > 0 {
            self.log.set_len(0)?;
            self.log.seek(SeekFrom::Start(0))?;
            self.log_len = 0;
            self.log.sync_data()?;
        }
        Ok(())
    }

    /// Sync the log now.
    pub(crate) fn sync_log(&self) -> Result<(), fjall::Error> {
        self.log.sync_data()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_records_round_trip_and_a_torn_tail_is_where_replay_ends() {
        let mut log = Vec::new();
        encode_record(&mut log, &[("p", b"a\0k1", b"v1"), ("q", b"b\0k2", b"")]);
        encode_record(&mut log, &[("p", b"c\0k3", b"v3")]);
        let whole = decode_log(&log);
        assert_eq!(
            whole,
            vec![
                ("p".to_string(), b"a\0k1".to_vec(), b"v1".to_vec()),
                ("q".to_string(), b"b\0k2".to_vec(), Vec::new()),
                ("p".to_string(), b"c\0k3".to_vec(), b"v3".to_vec()),
            ]
        );
        // Cut anywhere inside the second record: the first alone is replayed.
        for cut in 1..(log.len() - whole_first_len(&log)) {
            let torn = &log[..log.len() - cut];
            assert_eq!(decode_log(torn).len(), 2, "cut {cut}");
        }
        // A flipped byte in the second record's payload: its checksum fails.
        let mut bad = log.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert_eq!(decode_log(&bad).len(), 2);
        assert!(decode_log(&[]).is_empty());
    }

    fn whole_first_len(log: &[u8]) -> usize {
        12 + u32::from_le_bytes([log[0], log[1], log[2], log[3]]) as usize
    }

    #[test]
    fn chunks_take_every_entry_once_and_skip_what_a_read_took() {
        let dir = crate::testutil::TempDir::new("stage-chunks");
        let keyspace = fjall::Config::new(dir.path().join("lsm")).open().unwrap();
        let p = keyspace
            .open_partition("p", fjall::PartitionCreateOptions::default())
            .unwrap();
        let (mut stage, replayed) = Stage::open(&dir.path().join("lsm.stage"), &keyspace).unwrap();
        assert_eq!(replayed, 0);
        let keys: Vec<String> = (0..50)
            .map(|i| format!("u{}\0{:03}", (i * 7) % 5, 99 - i))
            .collect();
        stage
            .stage(
                keys.iter()
                    .map(|k| (p.clone(), k.as_bytes().to_vec(), b"v".to_vec()))
                    .collect(),
            )
            .unwrap();
        // A read of u3's account takes its entries while the stage goes in by chunks.
        let mut taken = 0;
        let mut chunks = 0;
        loop {
            let mut batch = keyspace.batch();
            if chunks == 2 {
                taken += stage.take_owner(b"u3", &mut batch);
            }
            let (n, done) = stage.take_chunk(7, &mut batch);
            assert!(n <= 7);
            taken += n;
            batch.commit().unwrap();
            chunks += 1;
            if done {
                break;
            }
        }
        assert_eq!(taken, keys.len(), "every entry once");
        assert_eq!(chunks, 8, "50 entries in chunks of 7");
        assert_eq!(p.len().unwrap(), keys.len());
        assert!(!stage.is_clear(), "the log stays until it is truncated");
        stage.truncate_log().unwrap();
        assert!(stage.is_clear());
    }

    #[test]
    fn owners_are_the_bytes_before_the_first_nul() {
        assert_eq!(
            owner_of(b"alice@example.com\x00abcd"),
            Some(&b"alice@example.com"[..])
        );
        assert_eq!(
            owner_of(b"alice@example.com\0"),
            Some(&b"alice@example.com"[..])
        );
        assert_eq!(owner_of(b"alice@exa"), None);
        assert_eq!(owner_of(b""), None);
    }
}
