//! The Raft state machine of the metadata group: the [`RoutingTable`], the accounts (applied
//! to this node's account store, so every node authenticates every user), plus what openraft
//! needs (last applied log id, membership). Snapshots are the whole table as JSON, kept in
//! the node's sled (`SnapshotSlot`) so that a restarted node starts from its last snapshot
//! and replays only the log after it.

// openraft fixes the (large) error type of its storage traits.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, BasicNode, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use storage::SnapshotSlot;

use super::routing_table::{
    AccountChange, AccountOutcome, ClusterCommand, ClusterResponse, RouteEvent, RoutingTable,
};
use super::types::{ClusterTypes, NodeId};

/// How the node's Router learns what the log changed.
#[derive(Debug)]
pub enum TableUpdate {
    Applied(Vec<RouteEvent>),
    /// A snapshot replaced the whole table.
    Replaced(RoutingTable),
}

pub type UpdateSink = Arc<dyn Fn(TableUpdate) + Send + Sync>;

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, BasicNode>,
    #[serde(flatten)]
    data: SnapshotData,
}

/// What a snapshot carries besides openraft's metadata.
#[derive(Serialize, Deserialize, Default)]
struct SnapshotData {
    table: RoutingTable,
    /// `(bare JID, account record)`, sorted.
    #[serde(default)]
    accounts: Vec<(String, String)>,
}

pub struct RoutingStateMachine {
    table: RoutingTable,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    slot: SnapshotSlot,
    sink: UpdateSink,
    /// This node's storage, where replicated accounts land (`None` in storage tests).
    store: Option<storage::Store>,
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

impl RoutingStateMachine {
    /// Restores the last saved snapshot, if any.
    pub fn open(
        slot: SnapshotSlot,
        sink: UpdateSink,
        store: Option<storage::Store>,
    ) -> Result<Self, storage::StorageError> {
        let mut sm = RoutingStateMachine {
            table: RoutingTable::default(),
            last_applied: None,
            membership: StoredMembership::default(),
            slot,
            sink,
            store,
        };
        if let Some(bytes) = sm.slot.load()? {
            let file: SnapshotFile = serde_json::from_slice(&bytes)
                .map_err(|_| storage::StorageError::Corrupt("raft snapshot".into()))?;
            sm.table = file.data.table.clone();
            sm.last_applied = file.meta.last_log_id;
            sm.membership = file.meta.last_membership.clone();
            (sm.sink)(TableUpdate::Replaced(sm.table.clone()));
        }
        Ok(sm)
    }

    async fn save(&mut self, file: SnapshotFile) -> Result<(), StorageError<NodeId>> {
        let bytes = serde_json::to_vec(&file).map_err(sm_err)?;
        self.slot.save(&bytes).await.map_err(sm_err)
    }

    fn snapshot_of(file: &SnapshotFile) -> Result<Snapshot<ClusterTypes>, StorageError<NodeId>> {
        let data = serde_json::to_vec(&file.data).map_err(sm_err)?;
        Ok(Snapshot {
            meta: file.meta.clone(),
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RoutingStateMachine {
    /// Apply account changes to this node's store. The same log gives every node the same
    /// accounts; a store error is reported to the writer and logged, never skipped silently.
    fn apply_accounts(&self, changes: &[AccountChange]) -> Vec<AccountOutcome> {
        let Some(store) = &self.store else {
            return vec![AccountOutcome::Done; changes.len()];
        };
        let Ok(accounts) = store.accounts() else {
            return vec![AccountOutcome::Failed; changes.len()];
        };
        let out = changes
            .iter()
            .map(|c| {
                let r = match c {
                    AccountChange::Create { jid, record } => {
                        accounts.put_record(jid, record, true).map(|existed| {
                            if existed {
                                AccountOutcome::AlreadyExists
                            } else {
                                AccountOutcome::Done
                            }
                        })
                    }
                    AccountChange::SetCredentials { jid, record } => match accounts.exists(jid) {
                        Ok(true) => accounts
                            .put_record(jid, record, false)
                            .map(|_| AccountOutcome::Done),
                        Ok(false) => Ok(AccountOutcome::NotFound),
                        Err(e) => Err(e),
                    },
                    AccountChange::Delete { jid } => store
                        .delete_user_data(jid)
                        .and_then(|_| accounts.remove_record(jid))
                        .map(|existed| {
                            if existed {
                                AccountOutcome::Done
                            } else {
                                AccountOutcome::NotFound
                            }
                        }),
                };
                r.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "cluster: applying an account change failed");
                    AccountOutcome::Failed
                })
            })
            .collect();
        if let Err(e) = accounts.flush() {
            tracing::error!(error = %e, "cluster: flushing accounts failed");
        }
        out
    }
}

/// Builds a snapshot from a copy of the table taken when openraft asks for a builder.
pub struct RoutingSnapshotBuilder {
    table: RoutingTable,
    store: Option<storage::Store>,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    slot: SnapshotSlot,
}

impl RaftSnapshotBuilder<ClusterTypes> for RoutingSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<ClusterTypes>, StorageError<NodeId>> {
        let snapshot_id = match self.last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id, id.index, rand::random::<u32>()),
            None => format!("empty-{}", rand::random::<u32>()),
        };
        let file = SnapshotFile {
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.membership.clone(),
                snapshot_id,
            },
            data: SnapshotData {
                table: std::mem::take(&mut self.table),
                accounts: match &self.store {
                    Some(s) => s.accounts().and_then(|a| a.records()).map_err(sm_err)?,
                    None => Vec::new(),
                },
            },
        };
        let bytes = serde_json::to_vec(&file).map_err(sm_err)?;
        self.slot.save(&bytes).await.map_err(sm_err)?;
        RoutingStateMachine::snapshot_of(&file)
    }
}

impl RaftStateMachine<ClusterTypes> for RoutingStateMachine {
    type SnapshotBuilder = RoutingSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ClusterResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<ClusterTypes>> + Send,
        I::IntoIter: Send,
    {
        let mut responses = Vec::new();
        let mut events = Vec::new();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => responses.push(ClusterResponse::default()),
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    responses.push(ClusterResponse::default());
                }
                EntryPayload::Normal(ClusterCommand::Accounts(changes)) => {
                    responses.push(ClusterResponse {
                        binds: Vec::new(),
                        accounts: self.apply_accounts(&changes),
                    });
                }
                EntryPayload::Normal(cmd) => {
                    let (response, mut ev) = self.table.apply(&cmd);
                    events.append(&mut ev);
                    responses.push(response);
                }
            }
        }
        if !events.is_empty() {
            (self.sink)(TableUpdate::Applied(events));
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        RoutingSnapshotBuilder {
            table: self.table.clone(),
            store: self.store.clone(),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            slot: self.slot.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data: SnapshotData = serde_json::from_slice(snapshot.get_ref()).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::new(&e),
            ))
        })?;
        let table = data.table.clone();
        if let Some(store) = &self.store {
            store
                .accounts()
                .and_then(|a| a.replace_all(&data.accounts))
                .map_err(sm_err)?;
        }
        self.table = table.clone();
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.save(SnapshotFile {
            meta: meta.clone(),
            data,
        })
        .await?;
        (self.sink)(TableUpdate::Replaced(table));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<ClusterTypes>>, StorageError<NodeId>> {
        // The builder saves snapshots on its own, so the slot is the one truth.
        match self.slot.load().map_err(sm_err)? {
            Some(bytes) => {
                let file: SnapshotFile = serde_json::from_slice(&bytes).map_err(sm_err)?;
                Ok(Some(Self::snapshot_of(&file)?))
            }
            None => Ok(None),
        }
    }
}
