//! The message archive kept in the account's own shard, on [`ModuleStore`] (see the
//! [`crate::archive`] contract). Two module trees:
//!
//! * `mod.mam_archive`: `user \0 <id, 16 hex digits>` → the record: `i` or `o` (incoming,
//!   outgoing; the letter is also the format version), the peer's bare JID, NUL, its
//!   resource, NUL, the message XML. Ids written as hex sort as the numbers do, so the
//!   account's archive is one key range in time order.
//! * `mod.mam_with`: `user \0 <with> \0 <id>` → empty, where `<with>` is the peer's bare JID,
//!   and, for a message with a resource, a second entry under `<bare>/<resource>` (a bare JID
//!   never contains `/`, so the two never mix). A query `with` a bare or full JID is one key
//!   range of this index.
//!
//! Both are served by fjall, not sled ([`crate::module_store::LSM_MODULES`]): a partition
//! each (per placement) of the LSM keyspace under `<data_dir>/lsm`, since the archive takes
//! ~4.6 inserts per message and a sled insert (10–13 µs) made it cost three times the
//! routing of the message (issue 19). [`ModuleStore`] hides which engine a tree lives in.
//!
//! Writes are [`UserDataWrite::Module`]s ([`append_writes`], [`remove_writes`]), which the
//! node applies locally or commits to the shard's Raft log, many at a time as one
//! [`UserDataWrite::Batch`]: the log, the snapshots and account deletion carry the archive
//! without code of their own. Reads ([`query`], [`exists`], [`bounds`], and for retention
//! [`expired`] and [`over_cap`]) go to the store directly; each is a bounded walk of a key
//! range, so a page costs the same at ten or ten million messages.

use std::borrow::Cow;
use std::ops::Bound;

use proto::stanza_id::ArchiveId;

use super::{ArchivePage, ArchiveQuery, ArchivedMessage, COUNT_SCAN_LIMIT};
use crate::module_store::LsmWrite;
use crate::{ModuleStore, StorageError, UserDataWrite};

/// The records' module tree (`mod.mam_archive`).
pub const MODULE: &str = "mam_archive";
/// The by-peer index's module tree (`mod.mam_with`).
pub const WITH_MODULE: &str = "mam_with";

fn hex(id: u64) -> String {
    ArchiveId(id).to_string()
}

fn corrupt(key: &[u8]) -> StorageError {
    StorageError::Corrupt(String::from_utf8_lossy(key).escape_debug().to_string())
}

/// The id at the end of a key (`… <16 hex digits>`).
fn key_id(key: &[u8]) -> Result<u64, StorageError> {
    key.len()
        .checked_sub(16)
        .and_then(|at| std::str::from_utf8(&key[at..]).ok())
        .and_then(ArchiveId::parse)
        .map(|id| id.0)
        .ok_or_else(|| corrupt(key))
}

/// The index name a message is found under: its bare JID, or `bare/resource`.
fn index_name(with: &str, resource: Option<&str>) -> String {
    match resource {
        Some(r) => format!("{with}/{r}"),
        None => with.to_string(),
    }
}

/// The index keys of `msg` (after `user \0`).
fn index_keys(msg: &ArchivedMessage) -> Vec<String> {
    let id = hex(msg.id);
    let mut keys = vec![format!("{}\0{id}", msg.with)];
    if !msg.with_resource.is_empty() {
        keys.push(format!(
            "{}\0{id}",
            index_name(&msg.with, Some(&msg.with_resource))
        ));
    }
    keys
}

/// A peer JID part that can be a key part: `with` non-empty, neither with NUL, `with`
/// without `/` (it is a bare JID).
fn check(msg: &ArchivedMessage) -> Result<(), StorageError> {
    if msg.with.is_empty() || msg.with.contains(['\0', '/']) {
        return Err(StorageError::InvalidKey(msg.with.clone()));
    }
    if msg.with_resource.contains('\0') {
        return Err(StorageError::InvalidKey(msg.with_resource.clone()));
    }
    Ok(())
}

fn encode(msg: &ArchivedMessage) -> String {
    let flag = if msg.outgoing { 'o' } else { 'i' };
    let mut s = String::with_capacity(3 + msg.with.len() + msg.with_resource.len() + msg.xml.len());
    s.push(flag);
    s.push_str(&msg.with);
    s.push('\0');
    s.push_str(&msg.with_resource);
    s.push('\0');
    s.push_str(&msg.xml);
    s
}

fn decode(id: u64, payload: &[u8]) -> Result<ArchivedMessage, StorageError> {
    let bad = || StorageError::Corrupt(format!("archived message {}", hex(id)));
    let text = std::str::from_utf8(payload).map_err(|_| bad())?;
    let outgoing = match text.as_bytes().first() {
        Some(b'o') => true,
        Some(b'i') => false,
        _ => return Err(bad()),
    };
    let mut parts = text[1..].splitn(3, '\0');
    let (Some(with), Some(resource), Some(xml)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    Ok(ArchivedMessage {
        id,
        with: with.to_string(),
        with_resource: resource.to_string(),
        outgoing,
        xml: xml.to_string(),
    })
}

fn module_write(module: &str, user: &str, key: String, payload: Option<String>) -> UserDataWrite {
    UserDataWrite::Module {
        module: module.to_string(),
        user: user.to_string(),
        key,
        payload,
    }
}

/// The write that archives `msg` for `user`: one [`UserDataWrite::ArchiveAppend`], which
/// the store expands into its record and its index entries ([`lsm_writes`]). Commit it with
/// other messages' as one [`UserDataWrite::Batch`]. `InvalidKey` for a peer that cannot be a
/// key (empty, NUL, a `/` in the bare JID).
pub fn append_writes(
    user: &str,
    msg: &ArchivedMessage,
) -> Result<Vec<UserDataWrite>, StorageError> {
    crate::part(user)?;
    check(msg)?;
    Ok(vec![UserDataWrite::ArchiveAppend {
        user: user.to_string(),
        msg: msg.clone(),
    }])
}

/// Where [`MODULE`] and [`WITH_MODULE`] are in [`crate::module_store::LSM_MODULES`].
const RECORDS_PART: usize = 0;
const INDEX_PART: usize = 1;

/// The store's writes for [`UserDataWrite::ArchiveAppend`]: the record (`user \0 <id>`)
/// and the index entries ([`index_keys`]) of `msg` in `user`'s archive.
pub(crate) fn lsm_writes(
    user: &str,
    msg: &ArchivedMessage,
    out: &mut Vec<LsmWrite<'static>>,
) -> Result<(), StorageError> {
    check(msg)?;
    let user_key = crate::prefix(user)?;
    let key = |rest: &str| [user_key.as_slice(), rest.as_bytes()].concat();
    out.push(LsmWrite {
        part: RECORDS_PART,
        key: key(&hex(msg.id)),
        value: Some(Cow::Owned(encode(msg).into_bytes())),
    });
    for k in index_keys(msg) {
        out.push(LsmWrite {
            part: INDEX_PART,
            key: key(&k),
            value: Some(Cow::Borrowed(b"")),
        });
    }
    Ok(())
}

/// The writes that remove `ids` (and their index entries) from `user`'s archive; ids that
/// are not there are skipped.
pub fn remove_writes(
    store: &ModuleStore,
    user: &str,
    ids: &[u64],
) -> Result<Vec<UserDataWrite>, StorageError> {
    let mut writes = Vec::new();
    for &id in ids {
        if let Some(msg) = get(store, user, id)? {
            writes.push(module_write(MODULE, user, hex(id), None));
            for k in index_keys(&msg) {
                writes.push(module_write(WITH_MODULE, user, k, None));
            }
        }
    }
    Ok(writes)
}

/// Message `id` of `user`'s archive.
pub fn get(
    store: &ModuleStore,
    user: &str,
    id: u64,
) -> Result<Option<ArchivedMessage>, StorageError> {
    match store.get(MODULE, user, &hex(id))? {
        Some(payload) => Ok(Some(decode(id, payload.as_bytes())?)),
        None => Ok(None),
    }
}

/// Whether `user`'s archive holds message `id` (an unknown `after-id`/`before-id` is
/// answered with `item-not-found`, XEP-0313 §4.1.3).
pub fn exists(store: &ModuleStore, user: &str, id: u64) -> Result<bool, StorageError> {
    Ok(store.get(MODULE, user, &hex(id))?.is_some())
}

/// The first and the last id of `user`'s archive (XEP-0313 §6.1 metadata).
pub fn bounds(store: &ModuleStore, user: &str) -> Result<Option<(u64, u64)>, StorageError> {
    let end = |reverse| -> Result<Option<u64>, StorageError> {
        let mut r = store.range(MODULE, user, Bound::Unbounded, Bound::Unbounded, reverse)?;
        match r.next_raw() {
            Some(kv) => Ok(Some(key_id(&kv?.0)?)),
            None => Ok(None),
        }
    };
    Ok(end(false)?.zip(end(true)?))
}

/// The ids of `user`'s archive in `range` (inclusive) in paging direction, from the index
/// when `with` is asked for, from the records otherwise; lazily.
fn ids_between(
    store: &ModuleStore,
    user: &str,
    q: &ArchiveQuery,
    (lo, hi): (u64, u64),
    reverse: bool,
) -> Result<impl Iterator<Item = Result<u64, StorageError>>, StorageError> {
    let (module, lo, hi) = match &q.with {
        Some(with) => {
            let name = index_name(with, q.resource());
            (
                WITH_MODULE,
                format!("{name}\0{}", hex(lo)),
                format!("{name}\0{}", hex(hi)),
            )
        }
        None => (MODULE, hex(lo), hex(hi)),
    };
    let mut r = store.range(
        module,
        user,
        Bound::Included(&lo),
        Bound::Included(&hi),
        reverse,
    )?;
    Ok(std::iter::from_fn(move || {
        r.next_raw().map(|kv| kv.and_then(|(k, _)| key_id(&k)))
    }))
}

/// One page of `user`'s archive (see [`ArchiveQuery`]).
pub fn query(
    store: &ModuleStore,
    user: &str,
    q: &ArchiveQuery,
) -> Result<ArchivePage, StorageError> {
    let count = if q.count {
        count(store, user, q)?
    } else {
        None
    };
    let Some(range) = q.page_range() else {
        return Ok(ArchivePage::from_fetched(
            Vec::new(),
            q.max,
            q.from_end,
            count,
        ));
    };
    // One more than the page: whether it is there says whether the page is the last.
    let want = q.max.saturating_add(1);
    let mut fetched = Vec::new();
    if !q.ids.is_empty() {
        let mut ids = q.ids_in(range);
        if q.from_end {
            ids.reverse();
        }
        for id in ids {
            if fetched.len() >= want {
                break;
            }
            if let Some(msg) = get(store, user, id)? {
                if q.matches_peer(&msg.with, &msg.with_resource) {
                    fetched.push(msg);
                }
            }
        }
    } else if q.with.is_some() {
        for id in ids_between(store, user, q, range, q.from_end)? {
            if fetched.len() >= want {
                break;
            }
            // An index entry always has its record (they are written in one batch).
            if let Some(msg) = get(store, user, id?)? {
                fetched.push(msg);
            }
        }
    } else {
        let mut r = store.range(
            MODULE,
            user,
            Bound::Included(&hex(range.0)),
            Bound::Included(&hex(range.1)),
            q.from_end,
        )?;
        while fetched.len() < want {
            let Some(kv) = r.next_raw() else { break };
            let (k, v) = kv?;
            fetched.push(decode(key_id(&k)?, &v)?);
        }
    }
    Ok(ArchivePage::from_fetched(fetched, q.max, q.from_end, count))
}

/// The size of the result set, or `None` past [`COUNT_SCAN_LIMIT`].
fn count(store: &ModuleStore, user: &str, q: &ArchiveQuery) -> Result<Option<u64>, StorageError> {
    let Some(range) = q.result_range() else {
        return Ok(Some(0));
    };
    let mut n = 0u64;
    if !q.ids.is_empty() {
        for id in q.ids_in(range) {
            if get(store, user, id)?.is_some_and(|m| q.matches_peer(&m.with, &m.with_resource)) {
                n += 1;
            }
        }
        return Ok(Some(n));
    }
    for id in ids_between(store, user, q, range, false)? {
        id?;
        n += 1;
        if n > COUNT_SCAN_LIMIT {
            return Ok(None);
        }
    }
    Ok(Some(n))
}

/// What one step of the retention walk found, (account, id), and where the next goes on
/// from (`None`: the walk is over).
pub type ExpiryStep = (Vec<(String, u64)>, Option<String>);

/// Retention by age: up to `limit` messages of any account archived before `cutoff_ms`, as
/// (account, id), walking the archive in key order from `cursor` (`None`: the start), and
/// where to go on from (`None`: the walk is over). An account's messages are in time order,
/// so the walk leaves an account at its first message still kept: it costs what it finds
/// plus one step per account. Remove what it returns with [`remove_writes`].
pub fn expired(
    store: &ModuleStore,
    cursor: Option<&str>,
    cutoff_ms: u64,
    limit: usize,
) -> Result<ExpiryStep, StorageError> {
    let cutoff = ArchiveId::floor(cutoff_ms).0;
    let tree = store.tree(MODULE)?;
    let mut found = Vec::new();
    let mut iter = tree.range((
        Bound::Included(cursor.unwrap_or("").as_bytes().to_vec()),
        Bound::Unbounded,
    ));
    while let Some(kv) = iter.next() {
        let (k, _) = kv?;
        let sep = k.iter().position(|b| *b == 0).ok_or_else(|| corrupt(&k))?;
        let id = key_id(&k)?;
        if id < cutoff {
            if found.len() >= limit {
                let next = String::from_utf8(k.to_vec()).map_err(|_| corrupt(&k))?;
                return Ok((found, Some(next)));
            }
            let user = std::str::from_utf8(&k[..sep]).map_err(|_| corrupt(&k))?;
            found.push((user.to_string(), id));
        } else {
            // The rest of this account's messages are newer: on to the next account
            // (`user \1` is the first key after every `user \0 …`).
            let mut next = k[..sep].to_vec();
            next.push(1);
            iter = tree.range((Bound::Included(next), Bound::Unbounded));
        }
    }
    Ok((found, None))
}

/// Retention by size: the oldest ids of `user`'s archive beyond its newest `cap`, at most
/// `limit` of them. Walks `cap` entries from the end, then `limit` from the start.
pub fn over_cap(
    store: &ModuleStore,
    user: &str,
    cap: u64,
    limit: usize,
) -> Result<Vec<u64>, StorageError> {
    let mut newest = store.range(MODULE, user, Bound::Unbounded, Bound::Unbounded, true)?;
    for _ in 0..cap {
        match newest.next_raw() {
            Some(kv) => drop(kv?),
            None => return Ok(Vec::new()),
        }
    }
    // The newest message over the cap: it and everything before it go.
    let Some(kv) = newest.next_raw() else {
        return Ok(Vec::new());
    };
    let last = hex(key_id(&kv?.0)?);
    let mut ids = Vec::new();
    let mut oldest = store.range(
        MODULE,
        user,
        Bound::Unbounded,
        Bound::Included(&last),
        false,
    )?;
    while ids.len() < limit {
        let Some(kv) = oldest.next_raw() else { break };
        ids.push(key_id(&kv?.0)?);
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_trees_are_where_lsm_writes_puts_them() {
        use crate::module_store::LSM_MODULES;
        assert_eq!(LSM_MODULES[RECORDS_PART], MODULE);
        assert_eq!(LSM_MODULES[INDEX_PART], WITH_MODULE);
    }

    #[test]
    fn records_round_trip_and_refuse_garbage() {
        let msg = ArchivedMessage {
            id: 7,
            with: "romeo@montague.lit".into(),
            with_resource: "orchard".into(),
            outgoing: true,
            xml: "<message>a\0b ☃</message>".into(),
        };
        assert_eq!(decode(7, encode(&msg).as_bytes()).unwrap(), msg);
        for bad in [&b""[..], b"x", b"o", b"owith\0", b"i\xff\0\0"] {
            assert!(decode(1, bad).is_err());
        }
        let bad_with = ArchivedMessage {
            with: "a@b/c".into(),
            ..msg.clone()
        };
        assert!(append_writes("u@x", &bad_with).is_err());
        assert!(append_writes("", &msg).is_err());
        assert_eq!(append_writes("u@x", &msg).unwrap().len(), 1);
        let mut lsm = Vec::new();
        lsm_writes("u@x", &msg, &mut lsm).unwrap();
        let keys: Vec<_> = lsm.iter().map(|w| (w.part, w.key.clone())).collect();
        assert_eq!(
            keys,
            [
                (RECORDS_PART, b"u@x\x000000000000000007".to_vec()),
                (
                    INDEX_PART,
                    b"u@x\x00romeo@montague.lit\x000000000000000007".to_vec()
                ),
                (
                    INDEX_PART,
                    b"u@x\x00romeo@montague.lit/orchard\x000000000000000007".to_vec()
                ),
            ],
            "the keys index_keys and the record's key name"
        );
    }

    #[test]
    fn counting_gives_up_past_the_scan_limit_and_pages_stay_cheap() {
        let dir = crate::testutil::TempDir::new("mam-count");
        let store = crate::testutil::open(dir.path());
        let m = store.modules();
        // Straight into the tree: a record per id, enough to pass the limit by one.
        let mut batch = Vec::new();
        let msg = |id| ArchivedMessage {
            id,
            with: "a@x".into(),
            with_resource: String::new(),
            outgoing: false,
            xml: "<message/>".into(),
        };
        for id in 1..=COUNT_SCAN_LIMIT + 1 {
            batch.push((
                format!("u@x\0{}", hex(id)).into_bytes(),
                Some(encode(&msg(id)).into_bytes()),
            ));
        }
        m.tree(MODULE).unwrap().apply(batch).unwrap();
        let q = |end_ms: Option<u64>, max| ArchiveQuery {
            count: true,
            end_ms,
            max,
            from_end: true,
            ..Default::default()
        };
        let page = query(&m, "u@x", &q(None, 2)).unwrap();
        assert_eq!(page.count, None);
        assert_eq!(
            page.messages,
            vec![msg(COUNT_SCAN_LIMIT), msg(COUNT_SCAN_LIMIT + 1)]
        );
        assert!(!page.complete);
        // These ids all fall in millisecond 0: `end` 0 still takes every one.
        assert_eq!(query(&m, "u@x", &q(Some(0), 0)).unwrap().count, None);
        assert_eq!(bounds(&m, "u@x").unwrap(), Some((1, COUNT_SCAN_LIMIT + 1)));
    }
}
