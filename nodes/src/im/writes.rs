//! Every write the AccountShard makes to an account's data goes through here: applied at once
//! on a node without a cluster, committed to the account's shard first in a cluster (the
//! actor runs on the shard's leader, and the client hears of the write only once it is
//! committed). One method per write keeps the call sites reading like the stores' own API.

use std::sync::Arc;

use storage::{PrivacyItem, RosterItem, StorageError, UserData, UserDataWrite, WriteOutcome};

use super::AccountShard;
use crate::cluster::shards::ShardGroups;
use proto::error::StanzaErrorCondition as Cond;

/// Where the AccountShard's writes go.
#[derive(Clone)]
pub enum DataWriter {
    /// Straight into this node's trees (no cluster).
    Local(UserData),
    /// Through the shard's Raft log.
    Replicated(Arc<ShardGroups>),
}

impl DataWriter {
    pub fn write(&self, w: UserDataWrite) -> Result<WriteOutcome, StorageError> {
        match self {
            DataWriter::Local(data) => data.apply(&w),
            DataWriter::Replicated(groups) => groups.write_blocking(w),
        }
    }
}

/// The stanza error for a write that failed: a shard without a leader for now is worth a
/// retry (`resource-constraint`, type `wait`); anything else is the server's fault.
pub(super) fn write_error(e: StorageError) -> Cond {
    match e {
        StorageError::Unavailable(_) => Cond::ResourceConstraint,
        _ => Cond::InternalServerError,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the write gave an unexpected outcome {0:?}")]
struct UnexpectedOutcome(WriteOutcome);

fn unexpected(o: WriteOutcome) -> StorageError {
    StorageError::Unavailable(UnexpectedOutcome(o).to_string())
}

impl AccountShard {
    fn write(&self, w: UserDataWrite) -> Result<WriteOutcome, StorageError> {
        self.writer.write(w)
    }

    fn write_done(&self, w: UserDataWrite) -> Result<(), StorageError> {
        self.write(w).map(|_| ())
    }

    pub(super) fn roster_item_put(
        &self,
        user: &str,
        item: &RosterItem,
    ) -> Result<u64, StorageError> {
        match self.write(UserDataWrite::RosterPut {
            user: user.into(),
            item: item.clone(),
        })? {
            WriteOutcome::Version(v) => Ok(v),
            o => Err(unexpected(o)),
        }
    }

    pub(super) fn roster_item_remove(
        &self,
        user: &str,
        contact: &str,
    ) -> Result<Option<u64>, StorageError> {
        match self.write(UserDataWrite::RosterRemove {
            user: user.into(),
            contact: contact.into(),
        })? {
            WriteOutcome::Removed(v) => Ok(v),
            o => Err(unexpected(o)),
        }
    }

    /// Returns how many of `items` changed.
    pub(super) fn roster_items_import(
        &self,
        user: &str,
        items: Vec<RosterItem>,
    ) -> Result<usize, StorageError> {
        match self.write(UserDataWrite::RosterImport {
            user: user.into(),
            items,
        })? {
            WriteOutcome::Count(n) => Ok(n),
            o => Err(unexpected(o)),
        }
    }

    pub(super) fn pending_put(
        &self,
        user: &str,
        contact: &str,
        status: Option<&str>,
    ) -> Result<(), StorageError> {
        self.write_done(UserDataWrite::PendingPut {
            user: user.into(),
            contact: contact.into(),
            status: status.map(str::to_string),
        })
    }

    pub(super) fn pending_remove(&self, user: &str, contact: &str) -> Result<bool, StorageError> {
        match self.write(UserDataWrite::PendingRemove {
            user: user.into(),
            contact: contact.into(),
        })? {
            WriteOutcome::Existed(e) => Ok(e),
            o => Err(unexpected(o)),
        }
    }

    pub(super) fn offline_push(
        &self,
        user: &str,
        xml: &str,
        quota: usize,
        max_bytes: u64,
    ) -> Result<(), StorageError> {
        self.write_done(UserDataWrite::OfflinePush {
            user: user.into(),
            xml: xml.into(),
            quota,
            max_bytes: Some(max_bytes),
        })
    }

    pub(super) fn offline_remove(&self, user: &str, seqs: &[u64]) -> Result<(), StorageError> {
        self.write_done(UserDataWrite::OfflineRemove {
            user: user.into(),
            seqs: seqs.to_vec(),
        })
    }

    pub(super) fn blocklist_add(&self, user: &str, jids: &[String]) -> Result<(), StorageError> {
        self.write_done(UserDataWrite::Block {
            user: user.into(),
            jids: jids.to_vec(),
        })
    }

    pub(super) fn blocklist_remove(&self, user: &str, jids: &[String]) -> Result<(), StorageError> {
        self.write_done(UserDataWrite::Unblock {
            user: user.into(),
            jids: jids.to_vec(),
        })
    }

    pub(super) fn blocklist_clear(&self, user: &str) -> Result<(), StorageError> {
        self.write_done(UserDataWrite::UnblockAll { user: user.into() })
    }

    pub(super) fn privacy_put(
        &self,
        user: &str,
        name: &str,
        items: &[PrivacyItem],
    ) -> Result<(), StorageError> {
        self.write_done(UserDataWrite::PrivacyPut {
            user: user.into(),
            name: name.into(),
            items: items.to_vec(),
        })
    }

    pub(super) fn privacy_remove(&self, user: &str, name: &str) -> Result<bool, StorageError> {
        match self.write(UserDataWrite::PrivacyRemove {
            user: user.into(),
            name: name.into(),
        })? {
            WriteOutcome::Existed(e) => Ok(e),
            o => Err(unexpected(o)),
        }
    }

    pub(super) fn privacy_set_default(
        &self,
        user: &str,
        name: Option<&str>,
    ) -> Result<(), StorageError> {
        self.write_done(UserDataWrite::PrivacyDefault {
            user: user.into(),
            name: name.map(str::to_string),
        })
    }

    pub(super) fn delete_user_data(&self, user: &str) -> Result<(), StorageError> {
        self.write_done(UserDataWrite::DeleteUser { user: user.into() })
    }
}
