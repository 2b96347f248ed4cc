//! The message archive kept in the account's own shard, on [`ModuleStore`] (see the
//! [`crate::archive`] contract). Two module trees:
//!
//! * `mod.mam_archive`: `user \0 <id, 16 hex digits>` → the record: `i` or `o` (incoming,
//!   outgoing; the letter is also the format version), the peer's bare JID, NUL, its
//!   resource, NUL, the message XML. Ids written as hex sort as the numbers do, so the
//!   account's archive is one key range in time order.
//! * `mod.mam_peers`, the by-peer index: `user \0 <peer> \0 <span>` → empty, where
//!   `<peer>` is the peer's bare JID and, in a room's archive (where every message is
//!   with the room itself), also `bare/resource` (a bare JID never holds `/`, so the two
//!   never mix; see [`indexed_peers`]), and `<span>` the first id of a [`SPAN_MS_BITS`]
//!   span of time (about a minute) in which the account exchanged a message with that
//!   peer. A query `with` a bare or full JID reads the bare JID's spans (a room's: the
//!   nick's) in its range and, in each, the account's records, keeping the peer's (and
//!   the resource's). So a conversation writes an index entry a minute rather than
//!   one or two per message: the memtable inserts of the index were three of the five a
//!   message cost (issue 19), and an entry already known to be there is not written again
//!   at all (`crate::lsm::KnownEntries`). A page `with` a peer costs the records of the
//!   spans it touches: at most the account's messages of those minutes each, however
//!   large the archive; `with` a room's occupant (room archives name the nick as the
//!   resource) reads only the spans in which that nick spoke.
//!
//! Both are served by fjall, not sled ([`crate::module_store::LSM_MODULES`]): a partition
//! each (per placement) of the LSM keyspace under `<data_dir>/lsm`, since a sled insert
//! (10–13 µs) made the archive cost three times the routing of the message (issue 19).
//! [`ModuleStore`] hides which engine a tree lives in. The index of earlier versions,
//! `mod.mam_with` (an entry per message, and a second under `bare/resource`), is converted
//! when a placement is opened or restored ([`migrate_index`]).
//!
//! Writes are [`UserDataWrite`]s ([`append_writes`], [`remove_writes`]), which the node
//! applies locally or commits to the shard's Raft log, many at a time as one
//! [`UserDataWrite::Batch`]: the log, the snapshots and account deletion carry the archive
//! without code of their own. Reads ([`query`], [`exists`], [`bounds`], and for retention
//! [`expired`] and [`over_cap`]) go to the store directly; each is a bounded walk of a key
//! range, so a page costs the same at ten or ten million messages.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashSet};
use std::ops::Bound;

use proto::stanza_id::ArchiveId;

use super::{ArchivePage, ArchiveQuery, ArchivedMessage, COUNT_SCAN_LIMIT};
use crate::module_store::LsmWrite;
use crate::{ModuleStore, StorageError, UserDataWrite};

/// The records' module tree (`mod.mam_archive`).
pub const MODULE: &str = "mam_archive";
/// The by-peer index's module tree (`mod.mam_peers`).
pub const PEERS_MODULE: &str = "mam_peers";
/// The by-peer index of earlier versions (see the header).
pub const LEGACY_WITH_MODULE: &str = "mam_with";

/// A by-peer index span is 2^this milliseconds (65.5 s): long enough that a lively
/// conversation writes an index entry a minute rather than one per message, short enough
/// that a page `with` a peer reads few of the account's other records when the peer is
/// rare (a busy account's minute, not its hour).
pub const SPAN_MS_BITS: u32 = 16;

/// The first id of the span `id` is in.
fn span_start(id: u64) -> u64 {
    ArchiveId::floor((ArchiveId(id).millis() >> SPAN_MS_BITS) << SPAN_MS_BITS).0
}

/// The last id of the span that starts at `start`.
fn span_end(start: u64) -> u64 {
    ArchiveId::ceiling(ArchiveId(start).millis() | ((1 << SPAN_MS_BITS) - 1)).0
}

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

/// A peer as the by-peer index names it: its bare JID, and a resource for the entries of
/// a full JID (`bare/resource`; a bare JID never holds `/`, so the two never mix).
type Peer<'a> = (&'a str, Option<&'a str>);

/// The by-peer index key of a message with `peer` and id `id`, after `user \0`: `<bare JID
/// or bare/resource> \0 <first id of the span>`, appended to `out` (the one definition of
/// its layout).
fn push_index_key(out: &mut Vec<u8>, (with, resource): Peer<'_>, id: u64) {
    out.extend_from_slice(with.as_bytes());
    if let Some(r) = resource {
        out.push(b'/');
        out.extend_from_slice(r.as_bytes());
    }
    out.push(0);
    push_hex(out, span_start(id));
}

/// [`push_index_key`] as text, for the module writes and ranges that name keys so.
fn index_key(peer: Peer<'_>, id: u64) -> String {
    let mut key = Vec::with_capacity(peer.0.len() + peer.1.map_or(0, str::len) + 18);
    push_index_key(&mut key, peer, id);
    // Built from a `&str`, a NUL and hex digits: always UTF-8.
    String::from_utf8_lossy(&key).into_owned()
}

/// A peer JID part that can be a key part: `with` non-empty, neither with NUL, `with`
/// without `/` (it is a bare JID).
fn check(msg: &ArchivedMessage) -> Result<(), StorageError> {
    if msg.with.is_empty() || msg.with.bytes().any(|b| b == 0 || b == b'/') {
        return Err(StorageError::InvalidKey(msg.with.clone()));
    }
    if msg.with_resource.bytes().any(|b| b == 0) {
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
        xml: xml.into(),
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

/// The write that archives `msg` for `user`: a [`UserDataWrite::ArchiveAppend`], which the
/// store expands into its record and its by-peer span entry ([`lsm_writes`]). Commit it
/// with other messages' as one [`UserDataWrite::Batch`]. `InvalidKey` for a peer that
/// cannot be a key (empty, NUL, a `/` in the bare JID).
pub fn append_writes(user: &str, msg: &ArchivedMessage) -> Result<UserDataWrite, StorageError> {
    crate::part(user)?;
    check(msg)?;
    Ok(UserDataWrite::ArchiveAppend {
        user: user.to_string(),
        msg: msg.clone(),
    })
}

/// Where [`MODULE`] and [`PEERS_MODULE`] are in [`crate::module_store::LSM_MODULES`]
/// ([`LEGACY_WITH_MODULE`] is between them).
const RECORDS_PART: usize = 0;
const PEERS_PART: usize = 2;

/// The store's writes for [`UserDataWrite::ArchiveAppend`]: the record (`user \0 <id>`)
/// and the by-peer span entry ([`index_key`], left out by the store when it is known to be
/// there) of `msg` in `user`'s archive.
pub(crate) fn lsm_writes(
    user: &str,
    msg: &ArchivedMessage,
    out: &mut Vec<LsmWrite<'static>>,
) -> Result<(), StorageError> {
    check(msg)?;
    // Built straight into their bytes, one allocation each (two writes for every archived
    // message: issue 19 counts them).
    let owner = crate::part(user)?;
    let mut record = Vec::with_capacity(owner.len() + 17);
    record.extend_from_slice(owner);
    record.push(0);
    push_hex(&mut record, msg.id);
    out.push(LsmWrite {
        part: RECORDS_PART,
        key: record,
        value: Some(Cow::Owned(encode(msg).into_bytes())),
        once: false,
    });
    for peer in indexed_peers(user, msg) {
        let mut span = Vec::with_capacity(owner.len() + msg.with.len() + 32);
        span.extend_from_slice(owner);
        span.push(0);
        push_index_key(&mut span, peer, msg.id);
        out.push(LsmWrite {
            part: PEERS_PART,
            key: span,
            value: Some(Cow::Borrowed(b"")),
            once: true,
        });
    }
    Ok(())
}

/// The peers `msg` is indexed under in `user`'s archive: its bare JID and, where the bare
/// JID is the archive's owner itself, its full JID: in a room's archive every message is
/// `with` the room (`room/nick`), so only the full JID lets a query `with` an occupant read
/// just the spans in which that nick spoke. Elsewhere a query `with` a full JID reads the
/// bare JID's spans and keeps the resource's records ([`span_peer`]); a full-JID entry for
/// every message of an account's archive was a third of the archive's memtable inserts for
/// a query clients seldom make (issue 19). Archives written before hold full-JID entries
/// for every message with a resource; [`remove_writes`] takes them with their spans' last
/// messages.
fn indexed_peers<'m>(user: &str, msg: &'m ArchivedMessage) -> impl Iterator<Item = Peer<'m>> {
    let full = (!msg.with_resource.is_empty() && full_jids_indexed(user, &msg.with))
        .then_some((msg.with.as_str(), Some(msg.with_resource.as_str())));
    std::iter::once((msg.with.as_str(), None)).chain(full)
}

/// The index entries a query `with` `peer` in `user`'s archive reads (see
/// [`indexed_peers`]): the full JID's where it is the owner's own, else the bare JID's.
fn span_peer<'p>(user: &str, (with, resource): Peer<'p>) -> Peer<'p> {
    (with, resource.filter(|_| full_jids_indexed(user, with)))
}

/// Whether `user`'s archive indexes messages `with` the bare JID `with` by full JID too:
/// only its messages with itself (a room's archive, see [`indexed_peers`]).
fn full_jids_indexed(user: &str, with: &str) -> bool {
    with == user
}

/// `id` as [`hex`] writes it.
fn push_hex(out: &mut Vec<u8>, id: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..16).rev() {
        out.push(DIGITS[((id >> (shift * 4)) & 0xf) as usize]);
    }
}

/// The writes that remove `ids` from `user`'s archive, with the by-peer span entries that no
/// message left in their span needs; ids that are not there are skipped. Give all the ids
/// of one step at once: a span entry is removed only when none of its messages stays.
pub fn remove_writes(
    store: &ModuleStore,
    user: &str,
    ids: &[u64],
) -> Result<Vec<UserDataWrite>, StorageError> {
    let mut writes = Vec::new();
    let gone: HashSet<u64> = ids.iter().copied().collect();
    let mut spans = BTreeSet::new();
    for &id in ids {
        if let Some(msg) = get(store, user, id)? {
            writes.push(module_write(MODULE, user, hex(id), None));
            // Both entries a message may have: archives written before [`indexed_peers`]
            // indexed the full JID of every message with a resource.
            let full = (!msg.with_resource.is_empty()).then(|| msg.with_resource.clone());
            for resource in [None, full] {
                spans.insert((msg.with.clone(), resource, span_start(id)));
            }
        }
    }
    for (with, resource, start) in spans {
        let peer = (with.as_str(), resource.as_deref());
        // A span entry that is not there (a full JID's, in an archive written since
        // [`indexed_peers`]) needs neither the walk nor a removal.
        if store
            .get(PEERS_MODULE, user, &index_key(peer, start))?
            .is_none()
        {
            continue;
        }
        let mut needed = false;
        let mut budget = u64::MAX;
        walk_records(
            store,
            user,
            peer,
            (start, span_end(start)),
            false,
            &mut budget,
            &mut |msg| {
                needed = !gone.contains(&msg.id);
                !needed
            },
        )?;
        if !needed {
            writes.push(module_write(
                PEERS_MODULE,
                user,
                index_key(peer, start),
                None,
            ));
        }
    }
    Ok(writes)
}

/// Whether the record `payload` is of a message with `with` (and `resource`, if given),
/// read without decoding it.
fn record_with(payload: &[u8], with: &str, resource: Option<&str>) -> bool {
    let Some(rest) = payload
        .get(1..)
        .and_then(|p| p.strip_prefix(with.as_bytes()))
        .and_then(|p| p.strip_prefix(b"\0"))
    else {
        return false;
    };
    resource.is_none_or(|r| {
        rest.strip_prefix(r.as_bytes())
            .is_some_and(|p| p.first() == Some(&0))
    })
}

/// How a walk of records ended.
#[derive(PartialEq)]
enum Walk {
    /// At the end of its range.
    Done,
    /// The visitor had enough.
    Stopped,
    /// More records than the budget allowed were in the way.
    OutOfBudget,
}

/// Feed `visit` the messages of `user`'s archive with `peer` among ids `lo..=hi`, in order
/// (`reverse`: newest first), until it answers false. Counts the records read in `budget`.
fn walk_records(
    store: &ModuleStore,
    user: &str,
    (with, resource): Peer<'_>,
    (lo, hi): (u64, u64),
    reverse: bool,
    budget: &mut u64,
    visit: &mut dyn FnMut(ArchivedMessage) -> bool,
) -> Result<Walk, StorageError> {
    let mut r = records(store, user, (lo, hi), reverse)?;
    while let Some(kv) = r.next_raw() {
        let (k, v) = kv?;
        let Some(left) = budget.checked_sub(1) else {
            return Ok(Walk::OutOfBudget);
        };
        *budget = left;
        if record_with(&v, with, resource) && !visit(decode(key_id(&k)?, &v)?) {
            return Ok(Walk::Stopped);
        }
    }
    Ok(Walk::Done)
}

/// Feed `visit` the messages of `user`'s archive `with` the query's peer among ids
/// `lo..=hi`, in order: the peer's spans from the index, and in each the account's records
/// of the peer (see the header). Stops when `visit` answers false; false when more than
/// `budget` records were read first.
fn walk_with(
    store: &ModuleStore,
    user: &str,
    q: &ArchiveQuery,
    (lo, hi): (u64, u64),
    reverse: bool,
    mut budget: u64,
    visit: &mut dyn FnMut(ArchivedMessage) -> bool,
) -> Result<bool, StorageError> {
    let Some(with) = q.with.as_deref() else {
        return Ok(true);
    };
    let peer = (with, q.resource());
    let indexed = span_peer(user, peer);
    let mut spans = store.range(
        PEERS_MODULE,
        user,
        Bound::Included(&index_key(indexed, lo)),
        Bound::Included(&index_key(indexed, hi)),
        reverse,
    )?;
    while let Some(kv) = spans.next_raw() {
        let start = key_id(&kv?.0)?;
        let range = (lo.max(start), hi.min(span_end(start)));
        if range.0 > range.1 {
            continue;
        }
        match walk_records(store, user, peer, range, reverse, &mut budget, visit)? {
            Walk::Done => {}
            Walk::Stopped => break,
            Walk::OutOfBudget => return Ok(false),
        }
    }
    Ok(true)
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

/// The records of `user`'s archive with ids in `lo..=hi`, in order (`reverse`: newest
/// first), lazily.
fn records(
    store: &ModuleStore,
    user: &str,
    (lo, hi): (u64, u64),
    reverse: bool,
) -> Result<crate::module_store::ModuleRange, StorageError> {
    store.range(
        MODULE,
        user,
        Bound::Included(&hex(lo)),
        Bound::Included(&hex(hi)),
        reverse,
    )
}

/// The ids of `user`'s archive in `range` (inclusive) in paging direction, lazily.
fn ids_between(
    store: &ModuleStore,
    user: &str,
    (lo, hi): (u64, u64),
    reverse: bool,
) -> Result<impl Iterator<Item = Result<u64, StorageError>>, StorageError> {
    let mut r = records(store, user, (lo, hi), reverse)?;
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
        walk_with(store, user, q, range, q.from_end, u64::MAX, &mut |msg| {
            fetched.push(msg);
            fetched.len() < want
        })?;
    } else {
        let mut r = records(store, user, range, q.from_end)?;
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
    if q.with.is_some() {
        // The records read, not the matches, are what is bounded.
        let complete = walk_with(store, user, q, range, false, COUNT_SCAN_LIMIT, &mut |_| {
            n += 1;
            true
        })?;
        return Ok(complete.then_some(n));
    }
    for id in ids_between(store, user, range, false)? {
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

/// Convert the by-peer index of earlier versions (`mod.mam_with`: `user \0 <with> \0 <id>`
/// per message, and `user \0 <with>/<resource> \0 <id>`) into span entries, then empty
/// it; how many old entries went. Idempotent: a crash halfway leaves old entries that are
/// converted again (into the same span entries) on the next open.
pub(crate) fn migrate_index(store: &ModuleStore) -> Result<usize, StorageError> {
    /// Old entries read and removed per step.
    const STEP: usize = 10_000;
    // Only where it exists (opening it would create it).
    let Some((_, legacy)) = store
        .trees()?
        .into_iter()
        .find(|(name, _)| name == LEGACY_WITH_MODULE)
    else {
        return Ok(0);
    };
    let peers = store.tree(PEERS_MODULE)?;
    let mut moved = 0;
    loop {
        let keys: Vec<Vec<u8>> = legacy
            .iter()
            .take(STEP)
            .map(|kv| kv.map(|(k, _)| k.to_vec()))
            .collect::<Result<_, _>>()?;
        if keys.is_empty() {
            break;
        }
        let mut spans = BTreeSet::new();
        for k in &keys {
            // `user \0 name \0`, then the id; an entry that is not one is of no use to
            // the new index (which the records alone define) and simply goes.
            let Ok(id) = key_id(k) else { continue };
            let head = &k[..k.len() - 16];
            let Some(at) = head.iter().position(|b| *b == 0) else {
                continue;
            };
            let Some(name) = head
                .get(at + 1..head.len().saturating_sub(1))
                .and_then(|n| std::str::from_utf8(n).ok())
            else {
                continue;
            };
            if head.last() != Some(&0) {
                continue;
            }
            let peer = match name.split_once('/') {
                Some((bare, resource)) => (bare, Some(resource)),
                None => (name, None),
            };
            let mut span = head[..=at].to_vec();
            push_index_key(&mut span, peer, id);
            spans.insert(span);
        }
        moved += keys.len();
        peers.apply(spans.into_iter().map(|k| (k, Some(Vec::new()))).collect())?;
        legacy.apply(keys.into_iter().map(|k| (k, None)).collect())?;
    }
    peers.flush()?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_trees_are_where_lsm_writes_puts_them() {
        use crate::module_store::LSM_MODULES;
        assert_eq!(LSM_MODULES[RECORDS_PART], MODULE);
        assert_eq!(LSM_MODULES[1], LEGACY_WITH_MODULE);
        assert_eq!(LSM_MODULES[PEERS_PART], PEERS_MODULE);
    }

    #[test]
    fn keys_spell_ids_as_hex_does() {
        for id in [
            0,
            7,
            0xabc,
            u64::MAX,
            ArchiveId::new(1_700_000_000_000, 3, 9).0,
        ] {
            let mut k = Vec::new();
            push_hex(&mut k, id);
            assert_eq!(k, hex(id).as_bytes());
        }
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
        assert!(matches!(
            append_writes("u@x", &msg).unwrap(),
            UserDataWrite::ArchiveAppend { .. }
        ));
        let mut lsm = Vec::new();
        lsm_writes("u@x", &msg, &mut lsm).unwrap();
        let keys: Vec<_> = lsm.iter().map(|w| (w.part, w.key.clone())).collect();
        assert_eq!(
            keys,
            [
                (RECORDS_PART, b"u@x\x000000000000000007".to_vec()),
                (
                    PEERS_PART,
                    b"u@x\x00romeo@montague.lit\x000000000000000000".to_vec()
                ),
            ],
            "the record's key and its bare JID's span (id 7 is in the first span)"
        );
        // In a room's archive every message is with the room: the nick gets its own spans.
        let in_room = ArchivedMessage {
            with: "u@x".into(),
            ..msg.clone()
        };
        let mut lsm = Vec::new();
        lsm_writes("u@x", &in_room, &mut lsm).unwrap();
        let keys: Vec<_> = lsm.iter().map(|w| w.key.clone()).collect();
        assert_eq!(
            keys[1..],
            [
                b"u@x\x00u@x\x000000000000000000".to_vec(),
                b"u@x\x00u@x/orchard\x000000000000000000".to_vec()
            ]
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

    fn chat(id: u64, with: &str, resource: &str) -> ArchivedMessage {
        ArchivedMessage {
            id,
            with: with.into(),
            with_resource: resource.into(),
            outgoing: false,
            xml: format!("<message id='{id}'/>").into(),
        }
    }

    fn span_entries(m: &ModuleStore, user: &str) -> Vec<String> {
        m.entries(PEERS_MODULE, user)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }

    fn with_ids(m: &ModuleStore, user: &str, with: &str, resource: Option<&str>) -> Vec<u64> {
        let q = ArchiveQuery {
            with: Some(with.into()),
            with_resource: resource.map(str::to_string),
            max: 100,
            count: true,
            ..Default::default()
        };
        let page = query(m, user, &q).unwrap();
        assert_eq!(page.count, Some(page.messages.len() as u64));
        page.messages.iter().map(|m| m.id).collect()
    }

    #[test]
    fn spans_are_written_once_and_go_with_their_last_message() {
        let dir = crate::testutil::TempDir::new("mam-spans");
        let store = crate::testutil::open(dir.path());
        let data = store.shard_user_data(1).unwrap();
        let m = &data.modules;
        let t0 = 1_700_000_000_000u64 & !((1 << SPAN_MS_BITS) - 1);
        let id = |ms: u64, seq: u16| ArchiveId::new(t0 + ms, 1, seq).0;
        let append = |msgs: &[ArchivedMessage]| {
            let mut writes = Vec::new();
            for msg in msgs {
                writes.push(append_writes("u@x", msg).unwrap());
            }
            data.apply(&UserDataWrite::Batch(writes)).unwrap();
        };
        let later = 1 << SPAN_MS_BITS;
        append(&[
            chat(id(0, 0), "a@x", "phone"),
            chat(id(1, 0), "b@x", ""),
            chat(id(2, 0), "a@x", "laptop"),
        ]);
        append(&[
            chat(id(3, 0), "a@x", "phone"),
            chat(id(later, 0), "a@x", ""),
        ]);
        let (s0, s1) = (hex(span_start(id(0, 0))), hex(span_start(id(later, 0))));
        assert_eq!(
            span_entries(m, "u@x"),
            [
                format!("a@x\0{s0}"),
                format!("a@x\0{s1}"),
                format!("b@x\0{s0}")
            ],
            "the bare JIDs' spans only: the peers are not the archive's owner"
        );
        // As archives written before kept them: a full JID's span entry too.
        m.put(PEERS_MODULE, "u@x", &format!("a@x/phone\0{s0}"), Some(""))
            .unwrap();
        assert_eq!(
            with_ids(m, "u@x", "a@x", None),
            [id(0, 0), id(2, 0), id(3, 0), id(later, 0)]
        );
        assert_eq!(
            with_ids(m, "u@x", "a@x", Some("phone")),
            [id(0, 0), id(3, 0)]
        );
        assert_eq!(with_ids(m, "u@x", "b@x", None), [id(1, 0)]);
        // A peer whose JID another's begins with is not the other.
        assert!(with_ids(m, "u@x", "a@x.y", None).is_empty());
        assert!(with_ids(m, "u@x", "a", None).is_empty());

        // Removing some of a span's messages with a peer keeps its entry; the last takes it.
        let remove = |ids: &[u64]| {
            let writes = remove_writes(m, "u@x", ids).unwrap();
            data.apply(&UserDataWrite::Batch(writes)).unwrap();
        };
        remove(&[id(0, 0), id(2, 0)]);
        assert_eq!(
            span_entries(m, "u@x"),
            [
                format!("a@x\0{s0}"),
                format!("a@x\0{s1}"),
                format!("a@x/phone\0{s0}"),
                format!("b@x\0{s0}")
            ],
            "the phone's old entry stays while the phone has a message in its span"
        );
        remove(&[id(3, 0), id(1, 0)]);
        assert_eq!(span_entries(m, "u@x"), [format!("a@x\0{s1}")]);
        // The store had known the first span's entry: after the removal it writes it again.
        append(&[chat(id(5, 0), "a@x", "")]);
        assert_eq!(with_ids(m, "u@x", "a@x", None), [id(5, 0), id(later, 0)]);
        assert_eq!(span_entries(m, "u@x").len(), 2);
    }

    #[test]
    fn a_rooms_archive_keeps_each_nicks_spans() {
        let dir = crate::testutil::TempDir::new("mam-room-spans");
        let store = crate::testutil::open(dir.path());
        let data = store.shard_user_data(1).unwrap();
        let m = &data.modules;
        let t0 = 1_700_000_000_000u64 & !((1 << SPAN_MS_BITS) - 1);
        let id = |ms: u64| ArchiveId::new(t0 + ms, 1, 0).0;
        let later = 1 << SPAN_MS_BITS;
        let msgs = [
            chat(id(0), "r@m", "ann"),
            chat(id(1), "r@m", "bob"),
            chat(id(later), "r@m", "bob"),
        ];
        let writes = msgs
            .iter()
            .map(|msg| append_writes("r@m", msg).unwrap())
            .collect();
        data.apply(&UserDataWrite::Batch(writes)).unwrap();
        let (s0, s1) = (hex(span_start(id(0))), hex(span_start(id(later))));
        assert_eq!(
            span_entries(m, "r@m"),
            [
                format!("r@m\0{s0}"),
                format!("r@m\0{s1}"),
                format!("r@m/ann\0{s0}"),
                format!("r@m/bob\0{s0}"),
                format!("r@m/bob\0{s1}"),
            ]
        );
        assert_eq!(with_ids(m, "r@m", "r@m", Some("ann")), [id(0)]);
        assert_eq!(with_ids(m, "r@m", "r@m", Some("bob")), [id(1), id(later)]);
        assert_eq!(with_ids(m, "r@m", "r@m", None).len(), 3);
    }

    #[test]
    fn the_old_index_is_converted_to_spans_on_open() {
        let dir = crate::testutil::TempDir::new("mam-old-index");
        let t0 = 1_700_000_000_000u64;
        let ids = [ArchiveId::new(t0, 0, 0).0, ArchiveId::new(t0 + 1, 0, 0).0];
        {
            let store = crate::testutil::open(dir.path());
            let data = store.shard_user_data(1).unwrap();
            let m = &data.modules;
            // As the previous version wrote them: a record and one or two index entries each.
            for (i, id) in ids.iter().enumerate() {
                let msg = chat(*id, "a@x", ["", "phone"][i]);
                m.put(MODULE, "u@x", &hex(*id), Some(&encode(&msg)))
                    .unwrap();
                let mut names = vec!["a@x".to_string()];
                if i == 1 {
                    names.push("a@x/phone".into());
                }
                for name in names {
                    m.put(
                        LEGACY_WITH_MODULE,
                        "u@x",
                        &format!("{name}\0{}", hex(*id)),
                        Some(""),
                    )
                    .unwrap();
                }
            }
            m.put(LEGACY_WITH_MODULE, "u@x", "garbage", Some(""))
                .unwrap();
        }
        let store = crate::testutil::open(dir.path());
        let data = store.shard_user_data(1).unwrap();
        let m = &data.modules;
        assert!(m.entries(LEGACY_WITH_MODULE, "u@x").unwrap().is_empty());
        let s0 = hex(span_start(ids[0]));
        assert_eq!(
            span_entries(m, "u@x"),
            [format!("a@x\0{s0}"), format!("a@x/phone\0{s0}")]
        );
        assert_eq!(with_ids(m, "u@x", "a@x", None), ids);
        assert_eq!(with_ids(m, "u@x", "a@x", Some("phone")), [ids[1]]);
        assert_eq!(migrate_index(m).unwrap(), 0, "nothing left to convert");
    }
}
