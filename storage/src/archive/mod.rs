//! The message archive (XEP-0313 Message Archive Management): what the node archives and asks
//! back, as one contract with two backends.
//!
//! * [`embedded`]: in the account's shard, on [`crate::ModuleStore`] (trees `mod.mam_archive` and
//!   `mod.mam_with`), written through [`crate::UserDataWrite`]s, so the shard's Raft log, its
//!   snapshots and account deletion carry the archive with no code of their own.
//! * [`postgres`]: one PostgreSQL table (`mam_message`) shared by the cluster, through a
//!   bounded pool of `tokio-postgres` connections.
//!
//! Both answer an [`ArchiveQuery`] with the same [`ArchivePage`]; `storage/tests/
//! archive_backends.rs` runs one set of scenarios against both and compares the pages.
//!
//! Messages are keyed by their [`ArchiveId`] (XEP-0359 stanza id), whose top bits are the
//! millisecond it was archived in: id order is time order, and the `start`/`end` of a query
//! (XEP-0313 §4.1.2) are id bounds ([`ArchiveId::floor`], [`ArchiveId::ceiling`]). Every
//! filter of a query is therefore a key range of an index, never a scan of the records, and a
//! page costs the page (plus one message to tell whether it is the last) at any archive size.
//! Only the total count (XEP-0059 `<count/>`) needs a scan, and it is given up
//! ([`ArchivePage::count`] `None`) past [`COUNT_SCAN_LIMIT`] messages.

pub mod embedded;
pub mod postgres;

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use proto::stanza_id::ArchiveId;

use serde::{Deserialize, Serialize};

use crate::StorageError;

/// Counting a result set stops after this many messages: the count is then left out
/// (XEP-0059 §2.6 allows it) rather than scanning millions of entries for it.
pub const COUNT_SCAN_LIMIT: u64 = 100_000;

/// What the archive's callers keep per account (the shard's cache of preferences), keyed by
/// [`account_key`]: 16 bytes inline, so a lookup does not chase a JID's strings through the
/// cache (issue 19: the cache keyed by JID cost more than a µs per message at the carrier
/// shape, 10,000 accounts).
pub type AccountMap<V> = HashMap<u128, V, BuildHasherDefault<crate::lsm::HashHasher>>;

/// The key of `account` (its bare JID as text) in an [`AccountMap`]: its 128-bit XXH3 (two
/// accounts share one with a chance of 2^-128 per pair, as `crate::lsm::KnownEntries`).
pub fn account_key(account: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(account.as_bytes())
}

/// One archived message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedMessage {
    /// Its [`ArchiveId`]; the time it was archived is `ArchiveId(id).millis()`.
    pub id: u64,
    /// The peer's bare JID (the recipient of an outgoing message, the sender of an incoming
    /// one).
    pub with: String,
    /// The peer's resource, `""` if none.
    pub with_resource: String,
    /// Sent by the archive's owner.
    pub outgoing: bool,
    /// The message as archived. Shared: the Router archives one message in the sender's
    /// and the recipient's archive, and the shard's write takes a copy of the entry (issue
    /// 19: a copy of the XML each time was an allocation and a copy per archive entry).
    pub xml: Arc<str>,
}

impl ArchivedMessage {
    /// Milliseconds since the Unix epoch when it was archived.
    pub fn millis(&self) -> u64 {
        ArchiveId(self.id).millis()
    }
}

/// A query of one account's archive (XEP-0313 §4 with XEP-0059 paging).
///
/// The *result set* is the messages matching `with`/`with_resource`, `start_ms`/`end_ms` and
/// `ids`, in id order. The *page* is taken from those also strictly between `after_id` and
/// `before_id`: the first `max` of them, or with `from_end` the last `max` (RSM `<before/>`,
/// paging backwards), and is always returned in ascending id order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveQuery {
    /// Only messages with this bare JID.
    pub with: Option<String>,
    /// With `with` (a full JID was asked for): only messages with this resource of it.
    /// Ignored without `with`, and when empty.
    pub with_resource: Option<String>,
    /// Only messages archived at or after this millisecond.
    pub start_ms: Option<u64>,
    /// Only messages archived at or before this millisecond.
    pub end_ms: Option<u64>,
    /// The page starts after this id (RSM `<after/>`, XEP-0313 `after-id`).
    pub after_id: Option<u64>,
    /// The page ends before this id (RSM `<before/>`, XEP-0313 `before-id`).
    pub before_id: Option<u64>,
    /// Non-empty: only these messages (XEP-0313 §4.1.4 `ids`).
    pub ids: Vec<u64>,
    /// The page's size at most.
    pub max: usize,
    /// The last `max` of the set rather than the first.
    pub from_end: bool,
    /// Also count the result set ([`ArchivePage::count`]).
    pub count: bool,
}

impl ArchiveQuery {
    /// The ids the result set lies in (`start_ms`/`end_ms`), inclusive; `None`: none.
    pub fn result_range(&self) -> Option<(u64, u64)> {
        let lo = self.start_ms.map_or(0, |ms| ArchiveId::floor(ms).0);
        let hi = self.end_ms.map_or(u64::MAX, |ms| ArchiveId::ceiling(ms).0);
        (lo <= hi).then_some((lo, hi))
    }

    /// The ids the page lies in (the result range, after `after_id` and before
    /// `before_id`), inclusive; `None`: none.
    pub fn page_range(&self) -> Option<(u64, u64)> {
        let (mut lo, mut hi) = self.result_range()?;
        if let Some(after) = self.after_id {
            lo = lo.max(after.checked_add(1)?);
        }
        if let Some(before) = self.before_id {
            hi = hi.min(before.checked_sub(1)?);
        }
        (lo <= hi).then_some((lo, hi))
    }

    /// The resource asked for, if any (only with `with`, only non-empty).
    pub fn resource(&self) -> Option<&str> {
        self.with.as_ref()?;
        self.with_resource.as_deref().filter(|r| !r.is_empty())
    }

    /// The `ids` asked for within `range`, sorted, once each.
    pub(crate) fn ids_in(&self, (lo, hi): (u64, u64)) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .ids
            .iter()
            .copied()
            .filter(|id| (lo..=hi).contains(id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Whether a message of the archive matches `with`/`with_resource` (the id filters are
    /// applied by the caller).
    pub(crate) fn matches_peer(&self, with: &str, resource: &str) -> bool {
        self.with.as_ref().is_none_or(|w| w == with)
            && self.resource().is_none_or(|r| r == resource)
    }
}

/// The answer to an [`ArchiveQuery`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivePage {
    /// In ascending id order.
    pub messages: Vec<ArchivedMessage>,
    /// The page reaches the end of the set in its paging direction (forward: nothing
    /// matches after its last message; backward: nothing before its first). An empty page
    /// is complete. XEP-0313 §4.3 `complete`.
    pub complete: bool,
    /// The size of the result set (ignoring `after_id`/`before_id`), when asked for and
    /// found within [`COUNT_SCAN_LIMIT`].
    pub count: Option<u64>,
}

impl ArchivePage {
    /// The page from up to `max + 1` messages fetched in paging direction (`from_end`:
    /// newest first): the extra one only tells that the page is not the last.
    pub(crate) fn from_fetched(
        mut fetched: Vec<ArchivedMessage>,
        max: usize,
        from_end: bool,
        count: Option<u64>,
    ) -> ArchivePage {
        let complete = fetched.len() <= max;
        fetched.truncate(max);
        if from_end {
            fetched.reverse();
        }
        ArchivePage {
            messages: fetched,
            complete,
            count,
        }
    }
}

/// What an archive backend can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot connect to the archive database {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("invalid archive database URL {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("the archive database has schema version {found}; this build knows {known} at most (downgrade refused)")]
    SchemaTooNew { found: i32, known: i32 },
    #[error("archive database: {0}")]
    Database(String),
    #[error("invalid archive write: {0}")]
    Invalid(String),
    #[error("archive storage: {0}")]
    Storage(#[from] StorageError),
}

/// `url` without its password, for messages and logs: `postgres://user:secret@host/db` →
/// `postgres://user:***@host/db`, `host=h password=secret` → `host=h password=***`.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        // The userinfo ends at the last '@' before the path.
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        if let Some(at) = authority.rfind('@') {
            let (userinfo, host) = authority.split_at(at);
            if let Some((user, _)) = userinfo.split_once(':') {
                return format!("{scheme}://{user}:***{host}{path}");
            }
        }
        return url.to_string();
    }
    url.split_whitespace()
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_combine_time_and_id_bounds() {
        let q = ArchiveQuery {
            start_ms: Some(10),
            end_ms: Some(20),
            ..Default::default()
        };
        assert_eq!(
            q.result_range(),
            Some((ArchiveId::floor(10).0, ArchiveId::ceiling(20).0))
        );
        let mid = ArchiveId::new(15, 1, 1).0;
        let paged = ArchiveQuery {
            after_id: Some(mid),
            ..q.clone()
        };
        assert_eq!(
            paged.page_range(),
            Some((mid + 1, ArchiveId::ceiling(20).0))
        );
        let before = ArchiveQuery {
            before_id: Some(0),
            ..Default::default()
        };
        assert_eq!(before.page_range(), None);
        let after = ArchiveQuery {
            after_id: Some(u64::MAX),
            ..Default::default()
        };
        assert_eq!(after.page_range(), None);
        let inverted = ArchiveQuery {
            start_ms: Some(20),
            end_ms: Some(10),
            ..Default::default()
        };
        assert_eq!(inverted.result_range(), None);
    }

    #[test]
    fn a_resource_counts_only_with_a_bare_jid() {
        let mut q = ArchiveQuery {
            with_resource: Some("r".into()),
            ..Default::default()
        };
        assert_eq!(q.resource(), None);
        q.with = Some("a@x".into());
        assert_eq!(q.resource(), Some("r"));
        assert!(q.matches_peer("a@x", "r") && !q.matches_peer("a@x", "s"));
        q.with_resource = Some(String::new());
        assert!(q.matches_peer("a@x", "s") && !q.matches_peer("b@x", ""));
    }

    #[test]
    fn passwords_are_left_out_of_urls() {
        assert_eq!(
            redact_url("postgres://sb:s3cr@t@db.example:5432/sb"),
            "postgres://sb:***@db.example:5432/sb"
        );
        assert_eq!(
            redact_url("postgresql://sb@localhost/sb"),
            "postgresql://sb@localhost/sb"
        );
        assert_eq!(
            redact_url("host=/tmp port=5 password=x user=sb"),
            "host=/tmp port=5 password=*** user=sb"
        );
    }
}
