//! Trees `roster`, `roster_meta` and `roster_pending`: each user's roster, versioned as RFC 6121
//! §2.6 asks, and the inbound subscription requests not answered yet (RFC 6121 §3.1.3).
//!
//! - `roster`: `user \0 contact` → the item and the roster version that last changed it. A removed
//!   item stays as a tombstone carrying its removal version, so [`RosterStore::changes_since`] can
//!   report removals. The oldest tombstones beyond a per-user limit are pruned.
//! - `roster_meta`: `user` → the user's version counter, the oldest version `changes_since` can
//!   still answer from (raised by pruning), the live item and tombstone counts, and the number of
//!   pending requests. It changes in the same transaction as the item (or request), so every
//!   version stamps exactly one change and the counts stay exact.
//! - `roster_pending`: `user \0 contact` → what is kept of the subscription request: its
//!   `<status/>` text, if any (the sender is the key). Not the stanza: a remote peer decides what
//!   a stanza holds, and the node stores only what it redelivers. Records written before this
//!   format kept the whole stanza (`xml`); they are still read, their status taken from it.
//!
//! Versions are plain numbers, 0 for a user who never had a roster change. A client that
//! presents a `ver` the node cannot parse as one gets the full roster, as for an unknown one.

use serde::{Deserialize, Serialize};
use sled::transaction::{Transactional, TransactionalTree};

use crate::{abort, decode, encode, key, part, prefix, suffix, Record, StorageError, TxResult};

/// Tombstones kept per user; removals older than the oldest one kept cannot be reported, so
/// clients holding those versions get the full roster.
const TOMBSTONE_LIMIT: usize = 1000;

const SUBSCRIPTIONS: [&str; 4] = ["none", "to", "from", "both"];

/// One roster item as stored. The node converts to and from its protocol types.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterItem {
    /// The contact's prepared bare JID.
    pub jid: String,
    pub name: Option<String>,
    pub groups: Vec<String>,
    /// `"none"`, `"to"`, `"from"` or `"both"`.
    pub subscription: String,
    /// The user asked the contact for a subscription (`ask="subscribe"`).
    pub pending_out: bool,
    /// The contact asked the user for a subscription, not answered yet.
    pub pending_in: bool,
    /// The user pre-approved the contact's subscription (RFC 6121 §3.4).
    pub approved: bool,
}

/// A change and the roster version it produced.
pub type VersionedChange = (u64, RosterChange);

/// One change reported by [`RosterStore::changes_since`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RosterChange {
    Updated(RosterItem),
    /// The contact's bare JID.
    Removed(String),
}

#[derive(Serialize, Deserialize)]
struct ItemRecord {
    v: u8,
    /// The roster version of the last change to this item.
    ver: u64,
    /// `None`: a tombstone, removed at `ver`.
    item: Option<ItemBody>,
}

impl Record for ItemRecord {
    fn v(&self) -> u8 {
        self.v
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct ItemBody {
    name: Option<String>,
    groups: Vec<String>,
    sub: String,
    pending_out: bool,
    pending_in: bool,
    approved: bool,
}

impl ItemBody {
    fn from_item(item: &RosterItem) -> ItemBody {
        ItemBody {
            name: item.name.clone(),
            groups: item.groups.clone(),
            sub: item.subscription.clone(),
            pending_out: item.pending_out,
            pending_in: item.pending_in,
            approved: item.approved,
        }
    }

    fn into_item(self, jid: String) -> RosterItem {
        RosterItem {
            jid,
            name: self.name,
            groups: self.groups,
            subscription: self.sub,
            pending_out: self.pending_out,
            pending_in: self.pending_in,
            approved: self.approved,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct MetaRecord {
    v: u8,
    /// The current roster version: the number of changes ever made.
    ver: u64,
    /// The oldest version `changes_since` answers from: the newest removal pruned.
    floor: u64,
    live: u64,
    tombstones: u64,
    /// Pending inbound requests (records older than this field count as 0 until answered).
    #[serde(default)]
    pending: u64,
}

impl Record for MetaRecord {
    fn v(&self) -> u8 {
        self.v
    }
}

impl MetaRecord {
    fn empty() -> MetaRecord {
        MetaRecord {
            v: Self::V,
            ver: 0,
            floor: 0,
            live: 0,
            tombstones: 0,
            pending: 0,
        }
    }

    fn read(tree: &sled::Tree, user: &str) -> Result<MetaRecord, StorageError> {
        match tree.get(part(user)?)? {
            Some(v) => decode(user.as_bytes(), &v),
            None => Ok(MetaRecord::empty()),
        }
    }

    fn read_tx(tree: &TransactionalTree, user: &str) -> TxResult<Option<MetaRecord>> {
        match tree.get(user.as_bytes())? {
            Some(v) => Ok(Some(decode(user.as_bytes(), &v).map_err(abort)?)),
            None => Ok(None),
        }
    }

    fn write_tx(&self, tree: &TransactionalTree, user: &str) -> TxResult<()> {
        tree.insert(user.as_bytes(), encode(self).map_err(abort)?)?;
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct PendingRecord {
    v: u8,
    /// The request's `<status/>` text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<String>,
    /// The whole stanza, as records before the status-only format kept it.
    #[serde(default, skip_serializing)]
    xml: Option<String>,
}

impl PendingRecord {
    fn status(self) -> Option<String> {
        if self.status.is_some() {
            return self.status;
        }
        let stanza = proto::element::Element::parse(self.xml.as_deref()?).ok()?;
        let status = stanza
            .children()
            .find(|c| c.name == "status")
            .map(|c| c.text());
        status
    }
}

/// An inbound subscription request not answered yet (RFC 6121 §3.1.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingRequest {
    /// The requester's bare JID.
    pub contact: String,
    /// The `<status/>` text it sent, if any.
    pub status: Option<String>,
}

impl Record for PendingRecord {
    fn v(&self) -> u8 {
        self.v
    }
}

/// Inside a transaction on `roster_meta`: advance `user`'s version and retire every older one,
/// after their roster was wiped. Nothing to do for a user who never had a roster change.
pub(crate) fn retire(meta: &TransactionalTree, user: &str) -> TxResult<()> {
    if let Some(mut m) = MetaRecord::read_tx(meta, user)? {
        m.ver += 1;
        m.floor = m.ver;
        m.live = 0;
        m.tombstones = 0;
        m.pending = 0;
        m.write_tx(meta, user)?;
    }
    Ok(())
}

#[derive(Clone)]
pub struct RosterStore {
    pub(crate) items: sled::Tree,
    pub(crate) meta: sled::Tree,
    pub(crate) pending: sled::Tree,
    tombstone_limit: usize,
    /// Flush after each write (off for replicated shards: their Raft log is durable).
    durable: bool,
}

impl RosterStore {
    pub(crate) fn new(items: sled::Tree, meta: sled::Tree, pending: sled::Tree) -> Self {
        RosterStore {
            items,
            meta,
            pending,
            tombstone_limit: TOMBSTONE_LIMIT,
            durable: true,
        }
    }

    /// Without flushes (see the `durable` field).
    pub(crate) fn volatile(mut self) -> Self {
        self.durable = false;
        self
    }

    /// `user`'s current roster version.
    pub fn version(&self, user: &str) -> Result<u64, StorageError> {
        Ok(MetaRecord::read(&self.meta, user)?.ver)
    }

    /// The number of items in `user`'s roster (for the roster size limit).
    pub fn count(&self, user: &str) -> Result<usize, StorageError> {
        Ok(MetaRecord::read(&self.meta, user)?.live as usize)
    }

    /// The roster version and the items, sorted by JID.
    ///
    /// Under concurrent changes to the same roster the items can be newer than the version,
    /// never older; that is harmless, as replaying the later changes onto them is idempotent.
    pub fn get(&self, user: &str) -> Result<(u64, Vec<RosterItem>), StorageError> {
        let pfx = prefix(user)?;
        let mut attempts = 0;
        loop {
            let before = self.version(user)?;
            let mut items = Vec::new();
            for kv in self.items.scan_prefix(&pfx) {
                let (k, v) = kv?;
                let r: ItemRecord = decode(&k, &v)?;
                if let Some(body) = r.item {
                    items.push(body.into_item(suffix(&k, pfx.len())?));
                }
            }
            attempts += 1;
            // Every committed change advances the version: unchanged means an exact snapshot.
            if attempts == 3 || self.version(user)? == before {
                return Ok((before, items));
            }
        }
    }

    pub fn item(&self, user: &str, contact: &str) -> Result<Option<RosterItem>, StorageError> {
        let k = key(user, &[contact])?;
        match self.items.get(&k)? {
            Some(v) => {
                let r: ItemRecord = decode(&k, &v)?;
                Ok(r.item.map(|b| b.into_item(contact.to_string())))
            }
            None => Ok(None),
        }
    }

    /// Add or replace an item; returns the new roster version, which the item now carries.
    pub fn put(&self, user: &str, item: &RosterItem) -> Result<u64, StorageError> {
        if !SUBSCRIPTIONS.contains(&item.subscription.as_str()) {
            return Err(StorageError::InvalidSubscription(item.subscription.clone()));
        }
        let k = key(user, &[&item.jid])?;
        let body = ItemBody::from_item(item);
        let ver = (&self.items, &self.meta).transaction(|(items, meta)| {
            let mut m = MetaRecord::read_tx(meta, user)?.unwrap_or_else(MetaRecord::empty);
            match items.get(&k)? {
                None => m.live += 1,
                Some(old) => {
                    let old: ItemRecord = decode(&k, &old).map_err(abort)?;
                    if old.item.is_none() {
                        m.tombstones = m.tombstones.saturating_sub(1);
                        m.live += 1;
                    }
                }
            }
            m.ver += 1;
            let record = ItemRecord {
                v: ItemRecord::V,
                ver: m.ver,
                item: Some(body.clone()),
            };
            items.insert(k.as_slice(), encode(&record).map_err(abort)?)?;
            m.write_tx(meta, user)?;
            Ok(m.ver)
        })?;
        if self.durable {
            self.items.flush()?;
        }
        Ok(ver)
    }

    /// Remove an item, leaving a tombstone; returns the new roster version, or `None` (and
    /// changes nothing) if there was no such item.
    pub fn remove(&self, user: &str, contact: &str) -> Result<Option<u64>, StorageError> {
        let k = key(user, &[contact])?;
        let done = (&self.items, &self.meta).transaction(|(items, meta)| {
            let Some(old) = items.get(&k)? else {
                return Ok(None);
            };
            let old: ItemRecord = decode(&k, &old).map_err(abort)?;
            if old.item.is_none() {
                return Ok(None);
            }
            let mut m = MetaRecord::read_tx(meta, user)?.unwrap_or_else(MetaRecord::empty);
            m.ver += 1;
            m.live = m.live.saturating_sub(1);
            m.tombstones += 1;
            let record = ItemRecord {
                v: ItemRecord::V,
                ver: m.ver,
                item: None,
            };
            items.insert(k.as_slice(), encode(&record).map_err(abort)?)?;
            m.write_tx(meta, user)?;
            Ok(Some((m.ver, m.tombstones)))
        })?;
        let Some((ver, tombstones)) = done else {
            return Ok(None);
        };
        if tombstones > self.tombstone_limit as u64 {
            self.prune(user)?;
        }
        if self.durable {
            self.items.flush()?;
        }
        Ok(Some(ver))
    }

    /// Drop the oldest tombstones beyond the limit and raise the floor past them.
    fn prune(&self, user: &str) -> Result<(), StorageError> {
        let pfx = prefix(user)?;
        let mut tombstones = Vec::new();
        for kv in self.items.scan_prefix(&pfx) {
            let (k, v) = kv?;
            let r: ItemRecord = decode(&k, &v)?;
            if r.item.is_none() {
                tombstones.push((r.ver, k));
            }
        }
        if tombstones.len() <= self.tombstone_limit {
            return Ok(());
        }
        tombstones.sort_unstable();
        tombstones.truncate(tombstones.len() - self.tombstone_limit);
        (&self.items, &self.meta).transaction(|(items, meta)| {
            let mut m = MetaRecord::read_tx(meta, user)?.unwrap_or_else(MetaRecord::empty);
            for (_, k) in &tombstones {
                // Re-read: a concurrent put may have revived it, or a removal re-stamped it.
                let Some(cur) = items.get(k)? else { continue };
                let r: ItemRecord = decode(k, &cur).map_err(abort)?;
                if r.item.is_some() {
                    continue;
                }
                items.remove(k)?;
                m.tombstones = m.tombstones.saturating_sub(1);
                m.floor = m.floor.max(r.ver);
            }
            m.write_tx(meta, user)
        })?;
        Ok(())
    }

    /// What changed after version `ver`, for a client that cached the roster at `ver`: the
    /// current version and the changes, oldest first, each with the version it was made at (an
    /// interim push carries it, RFC 6121 §2.6.3). `None` if `ver` is newer than the current
    /// version or older than the oldest removal still remembered: send the full roster then.
    ///
    /// As with [`get`](Self::get), concurrent changes may be included beyond the version
    /// returned, never missing below it.
    pub fn changes_since(
        &self,
        user: &str,
        ver: u64,
    ) -> Result<Option<(u64, Vec<VersionedChange>)>, StorageError> {
        let pfx = prefix(user)?;
        let m = MetaRecord::read(&self.meta, user)?;
        if ver > m.ver || ver < m.floor {
            return Ok(None);
        }
        if ver == m.ver {
            return Ok(Some((ver, Vec::new())));
        }
        let mut changes = Vec::new();
        for kv in self.items.scan_prefix(&pfx) {
            let (k, v) = kv?;
            let r: ItemRecord = decode(&k, &v)?;
            if r.ver > ver {
                let jid = suffix(&k, pfx.len())?;
                let change = match r.item {
                    Some(body) => RosterChange::Updated(body.into_item(jid)),
                    None => RosterChange::Removed(jid),
                };
                changes.push((r.ver, change));
            }
        }
        // Tombstones this answer needed may have been pruned (or the roster wiped) meanwhile.
        if MetaRecord::read(&self.meta, user)?.floor > ver {
            return Ok(None);
        }
        changes.sort_by_key(|(v, _)| *v);
        Ok(Some((m.ver, changes)))
    }

    /// Record an inbound subscription request until the user answers it, replacing an earlier
    /// one from the same contact. Returns whether it is a new one (it then counts towards
    /// [`pending_count`](Self::pending_count)).
    pub fn put_pending_in(
        &self,
        user: &str,
        contact: &str,
        status: Option<&str>,
    ) -> Result<bool, StorageError> {
        let k = key(user, &[contact])?;
        let record = encode(&PendingRecord {
            v: PendingRecord::V,
            status: status.map(str::to_string),
            xml: None,
        })?;
        let added = (&self.pending, &self.meta).transaction(|(pending, meta)| {
            let added = pending.insert(k.as_slice(), record.as_slice())?.is_none();
            if added {
                let mut m = MetaRecord::read_tx(meta, user)?.unwrap_or_else(MetaRecord::empty);
                m.pending += 1;
                m.write_tx(meta, user)?;
            }
            Ok(added)
        })?;
        if self.durable {
            self.pending.flush()?;
        }
        Ok(added)
    }

    /// Whether `contact` has a request pending with `user`: one key lookup.
    pub fn has_pending_in(&self, user: &str, contact: &str) -> Result<bool, StorageError> {
        Ok(self.pending.contains_key(key(user, &[contact])?)?)
    }

    /// How many requests are pending for `user`, from the counter (no scan).
    pub fn pending_count(&self, user: &str) -> Result<usize, StorageError> {
        Ok(MetaRecord::read(&self.meta, user)?.pending as usize)
    }

    /// The unanswered subscription requests, sorted by contact.
    pub fn pending_in(&self, user: &str) -> Result<Vec<PendingRequest>, StorageError> {
        let pfx = prefix(user)?;
        self.pending
            .scan_prefix(&pfx)
            .map(|kv| {
                let (k, v) = kv?;
                let r: PendingRecord = decode(&k, &v)?;
                Ok(PendingRequest {
                    contact: suffix(&k, pfx.len())?,
                    status: r.status(),
                })
            })
            .collect()
    }

    /// Forget an answered request; `false` if there was none.
    pub fn remove_pending_in(&self, user: &str, contact: &str) -> Result<bool, StorageError> {
        let k = key(user, &[contact])?;
        let removed = (&self.pending, &self.meta).transaction(|(pending, meta)| {
            let removed = pending.remove(k.as_slice())?.is_some();
            if removed {
                if let Some(mut m) = MetaRecord::read_tx(meta, user)? {
                    m.pending = m.pending.saturating_sub(1);
                    m.write_tx(meta, user)?;
                }
            }
            Ok(removed)
        })?;
        if !removed {
            return Ok(false);
        }
        if self.durable {
            self.pending.flush()?;
        }
        Ok(true)
    }

    /// Remove the roster and pending requests of a deleted account, in one transaction. The
    /// version counter is kept and advanced, every older version retired, so a cached roster
    /// of the deleted account is never taken as current.
    pub fn delete_user(&self, user: &str) -> Result<(), StorageError> {
        crate::wipe_user(user, &[&self.items, &self.pending], &[], Some(&self.meta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{open, TempDir};

    const U: &str = "juliet@example.com";

    fn item(jid: &str, sub: &str) -> RosterItem {
        RosterItem {
            jid: jid.to_string(),
            name: None,
            groups: Vec::new(),
            subscription: sub.to_string(),
            pending_out: false,
            pending_in: false,
            approved: false,
        }
    }

    #[test]
    fn crud_and_counts() {
        let dir = TempDir::new("roster-crud");
        let store = open(dir.path());
        let r = store.rosters().unwrap();
        assert_eq!(r.version(U).unwrap(), 0);
        assert_eq!(r.get(U).unwrap(), (0, vec![]));
        let mut romeo = item("romeo@example.net", "both");
        romeo.name = Some("Romeo".into());
        romeo.groups = vec!["Friends".into(), "Verona".into()];
        romeo.approved = true;
        let nurse = item("nurse@example.com", "none");
        assert_eq!(r.put(U, &romeo).unwrap(), 1);
        assert_eq!(r.put(U, &nurse).unwrap(), 2);
        // Another user's roster is separate, even with a JID that extends this one.
        r.put("juliet@example.co", &item("x@y", "to")).unwrap();
        assert_eq!(r.count(U).unwrap(), 2);
        assert_eq!(
            r.get(U).unwrap(),
            (2, vec![nurse.clone(), romeo.clone()]),
            "sorted by jid"
        );
        assert_eq!(r.item(U, "romeo@example.net").unwrap(), Some(romeo.clone()));
        romeo.subscription = "from".into();
        romeo.pending_out = true;
        assert_eq!(r.put(U, &romeo).unwrap(), 3);
        assert_eq!(r.count(U).unwrap(), 2);
        assert_eq!(r.item(U, "romeo@example.net").unwrap(), Some(romeo));
        assert_eq!(r.remove(U, "nurse@example.com").unwrap(), Some(4));
        assert_eq!(
            r.remove(U, "nurse@example.com").unwrap(),
            None,
            "already removed"
        );
        assert_eq!(r.remove(U, "tybalt@example.com").unwrap(), None);
        assert_eq!(r.version(U).unwrap(), 4);
        assert_eq!(r.count(U).unwrap(), 1);
        assert_eq!(r.item(U, "nurse@example.com").unwrap(), None);
        assert_eq!(r.get(U).unwrap().1.len(), 1);
        // Re-adding over a tombstone.
        assert_eq!(r.put(U, &nurse).unwrap(), 5);
        assert_eq!(r.count(U).unwrap(), 2);
        assert!(matches!(
            r.put(U, &item("a@b", "maybe")),
            Err(StorageError::InvalidSubscription(_))
        ));
        assert!(matches!(
            r.put(U, &item("a\0b", "none")),
            Err(StorageError::InvalidKey(_))
        ));
        assert!(matches!(
            r.put(U, &item("", "none")),
            Err(StorageError::InvalidKey(_))
        ));
        assert_eq!(r.version(U).unwrap(), 5, "refused puts change nothing");
    }

    #[test]
    fn changes_since_reports_updates_and_removals() {
        let dir = TempDir::new("roster-ver");
        let store = open(dir.path());
        let r = store.rosters().unwrap();
        assert_eq!(r.changes_since(U, 0).unwrap(), Some((0, vec![])));
        assert_eq!(r.changes_since(U, 1).unwrap(), None, "newer than current");
        let a = item("a@x", "both");
        let b = item("b@x", "to");
        let c = item("c@x", "none");
        r.put(U, &a).unwrap(); // 1
        r.put(U, &b).unwrap(); // 2
        r.put(U, &c).unwrap(); // 3
        r.remove(U, "a@x").unwrap(); // 4
        let mut b2 = b.clone();
        b2.name = Some("Bee".into());
        r.put(U, &b2).unwrap(); // 5
        assert_eq!(
            r.changes_since(U, 0).unwrap(),
            Some((
                5,
                vec![
                    (3, RosterChange::Updated(c.clone())),
                    (4, RosterChange::Removed("a@x".into())),
                    (5, RosterChange::Updated(b2.clone())),
                ]
            ))
        );
        assert_eq!(
            r.changes_since(U, 3).unwrap(),
            Some((
                5,
                vec![
                    (4, RosterChange::Removed("a@x".into())),
                    (5, RosterChange::Updated(b2.clone())),
                ]
            ))
        );
        assert_eq!(
            r.changes_since(U, 4).unwrap(),
            Some((5, vec![(5, RosterChange::Updated(b2))]))
        );
        assert_eq!(r.changes_since(U, 5).unwrap(), Some((5, vec![])));
        assert_eq!(r.changes_since(U, 6).unwrap(), None);
        assert_eq!(r.changes_since(U, u64::MAX).unwrap(), None);
    }

    #[test]
    fn pruned_tombstones_make_old_versions_unknown() {
        let dir = TempDir::new("roster-prune");
        let store = open(dir.path());
        let mut r = store.rosters().unwrap();
        r.tombstone_limit = 3;
        for i in 0..6 {
            r.put(U, &item(&format!("c{i}@x"), "none")).unwrap(); // 1..=6
        }
        for i in 0..4 {
            r.remove(U, &format!("c{i}@x")).unwrap(); // 7..=10; the 4th prunes c0 (ver 7)
        }
        assert_eq!(r.version(U).unwrap(), 10);
        let tombstones = r
            .items
            .scan_prefix(prefix(U).unwrap())
            .values()
            .filter(|v| {
                decode::<ItemRecord>(b"", &v.as_ref().unwrap()[..])
                    .unwrap()
                    .item
                    .is_none()
            })
            .count();
        assert_eq!(tombstones, 3);
        assert_eq!(
            r.changes_since(U, 6).unwrap(),
            None,
            "c0's removal is forgotten"
        );
        assert_eq!(r.changes_since(U, 0).unwrap(), None);
        assert_eq!(
            r.changes_since(U, 7).unwrap(),
            Some((
                10,
                vec![
                    (8, RosterChange::Removed("c1@x".into())),
                    (9, RosterChange::Removed("c2@x".into())),
                    (10, RosterChange::Removed("c3@x".into())),
                ]
            ))
        );
        // Reviving a tombstoned contact frees a tombstone slot and counts stay right.
        r.put(U, &item("c3@x", "none")).unwrap(); // 11
        assert_eq!(r.count(U).unwrap(), 3);
        let m = MetaRecord::read(&r.meta, U).unwrap();
        assert_eq!((m.live, m.tombstones, m.floor), (3, 2, 7));
    }

    #[test]
    fn version_bump_and_item_write_are_atomic() {
        let dir = TempDir::new("roster-atomic");
        let store = open(dir.path());
        let r = store.rosters().unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        let jid = format!("t{t}-{i}@x");
                        r.put(U, &item(&jid, "none")).unwrap();
                        if i % 5 == 0 {
                            r.remove(U, &jid).unwrap().unwrap();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // 100 puts + 20 removals: no version lost or given twice.
        assert_eq!(r.version(U).unwrap(), 120);
        assert_eq!(r.count(U).unwrap(), 80);
        assert_eq!(r.get(U).unwrap().1.len(), 80);
        let mut vers: Vec<u64> = r
            .items
            .scan_prefix(prefix(U).unwrap())
            .values()
            .map(|v| decode::<ItemRecord>(b"", &v.unwrap()).unwrap().ver)
            .collect();
        vers.sort_unstable();
        vers.dedup();
        assert_eq!(vers.len(), 100, "every item carries a distinct version");
        assert!(vers.iter().all(|&v| (1..=120).contains(&v)));
        let (ver, changes) = r.changes_since(U, 0).unwrap().unwrap();
        assert_eq!((ver, changes.len()), (120, 100));
    }

    #[test]
    fn pending_requests() {
        let dir = TempDir::new("roster-pending");
        let store = open(dir.path());
        let r = store.rosters().unwrap();
        assert!(r.put_pending_in(U, "romeo@x", None).unwrap());
        assert!(r.put_pending_in(U, "benvolio@x", Some("1")).unwrap());
        assert!(
            !r.put_pending_in(U, "benvolio@x", Some("2")).unwrap(),
            "a repeated request replaces the first"
        );
        assert_eq!(r.pending_count(U).unwrap(), 2);
        assert!(r.has_pending_in(U, "romeo@x").unwrap());
        assert!(!r.has_pending_in(U, "mercutio@x").unwrap());
        assert_eq!(
            r.pending_in(U).unwrap(),
            vec![
                PendingRequest {
                    contact: "benvolio@x".into(),
                    status: Some("2".into())
                },
                PendingRequest {
                    contact: "romeo@x".into(),
                    status: None
                },
            ]
        );
        assert!(r.remove_pending_in(U, "romeo@x").unwrap());
        assert!(!r.remove_pending_in(U, "romeo@x").unwrap());
        assert_eq!(r.pending_in(U).unwrap().len(), 1);
        assert_eq!(r.pending_count(U).unwrap(), 1);
        assert_eq!(r.version(U).unwrap(), 0, "requests are not roster changes");
        r.delete_user(U).unwrap();
        assert_eq!(r.pending_count(U).unwrap(), 0);
    }

    #[test]
    fn pending_records_of_the_old_format_are_read() {
        let dir = TempDir::new("roster-pending-old");
        let store = open(dir.path());
        let r = store.rosters().unwrap();
        let old = br#"{"v":1,"xml":"<presence xmlns='jabber:client' type='subscribe'><status>hi</status></presence>"}"#;
        r.pending
            .insert(key(U, &["romeo@x"]).unwrap(), &old[..])
            .unwrap();
        assert_eq!(
            r.pending_in(U).unwrap(),
            vec![PendingRequest {
                contact: "romeo@x".into(),
                status: Some("hi".into())
            }]
        );
        assert!(r.has_pending_in(U, "romeo@x").unwrap());
        // Not counted (written before the counter), and removing it does not underflow.
        assert!(r.remove_pending_in(U, "romeo@x").unwrap());
        assert_eq!(r.pending_count(U).unwrap(), 0);
    }

    #[test]
    fn delete_user_retires_versions() {
        let dir = TempDir::new("roster-delete");
        let store = open(dir.path());
        let r = store.rosters().unwrap();
        r.put(U, &item("a@x", "both")).unwrap();
        r.put(U, &item("b@x", "both")).unwrap();
        r.remove(U, "b@x").unwrap();
        r.put_pending_in(U, "c@x", None).unwrap();
        r.put("other@x", &item("a@x", "both")).unwrap();
        r.delete_user(U).unwrap();
        assert_eq!(r.get(U).unwrap(), (4, vec![]));
        assert_eq!(r.count(U).unwrap(), 0);
        assert!(r.pending_in(U).unwrap().is_empty());
        assert_eq!(r.changes_since(U, 3).unwrap(), None, "old cache is stale");
        assert_eq!(r.changes_since(U, 4).unwrap(), Some((4, vec![])));
        assert_eq!(r.put(U, &item("z@x", "none")).unwrap(), 5);
        assert_eq!(r.get("other@x").unwrap().1.len(), 1, "others untouched");
        r.delete_user("nobody@x").unwrap();
        assert_eq!(r.version("nobody@x").unwrap(), 0);
    }

    #[test]
    fn survives_reopen() {
        let dir = TempDir::new("roster-reopen");
        let a = item("a@x", "both");
        {
            let store = open(dir.path());
            let r = store.rosters().unwrap();
            r.put(U, &a).unwrap();
            r.put(U, &item("b@x", "to")).unwrap();
            r.remove(U, "b@x").unwrap();
            r.put_pending_in(U, "c@x", Some("s")).unwrap();
        }
        let store = open(dir.path());
        let r = store.rosters().unwrap();
        assert_eq!(r.get(U).unwrap(), (3, vec![a]));
        assert_eq!(
            r.changes_since(U, 2).unwrap(),
            Some((3, vec![(3, RosterChange::Removed("b@x".into()))]))
        );
        assert_eq!(r.pending_in(U).unwrap().len(), 1);
    }
}
