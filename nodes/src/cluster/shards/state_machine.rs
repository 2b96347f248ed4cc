//! The state machine of one IM data shard: the shard's sled trees ([`UserData`]).
//!
//! Applying writes to sled without a flush is what makes the shard fast, and it is safe
//! because the state machine is rebuilt on every start: the trees are emptied, the last
//! snapshot is restored, and openraft replays the (durable) log after it. A write that sled
//! had not flushed before a crash is simply applied again, once. Snapshots are the trees'
//! dump, taken while no entry applies, and kept in the shard's Raft state tree.

// openraft fixes the (large) error type of its storage traits.
#![allow(clippy::result_large_err)]

use std::io::Cursor;

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, BasicNode, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use storage::{RefusedWrite, SnapshotSlot, UserData};

use super::types::{ShardResponse, ShardTypes};
use crate::cluster::NodeId;

type Meta = SnapshotMeta<NodeId, BasicNode>;

fn sm_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

#[derive(Debug, thiserror::Error)]
#[error("malformed shard snapshot")]
struct Malformed;

/// The slot holds `u32 length ‖ meta (JSON) ‖ dump`.
fn encode(meta: &Meta, dump: &[u8]) -> Result<Vec<u8>, StorageError<NodeId>> {
    let meta = serde_json::to_vec(meta).map_err(sm_err)?;
    let mut out = Vec::with_capacity(4 + meta.len() + dump.len());
    out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(dump);
    Ok(out)
}

fn decode(bytes: &[u8]) -> Option<(Meta, &[u8])> {
    let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let meta = serde_json::from_slice(bytes.get(4..4 + len)?).ok()?;
    Some((meta, bytes.get(4 + len..)?))
}

pub struct ShardStateMachine {
    data: UserData,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    slot: SnapshotSlot,
}

impl ShardStateMachine {
    /// Rebuild the trees from the last snapshot (empty if there is none).
    pub fn open(data: UserData, slot: SnapshotSlot) -> Result<Self, storage::StorageError> {
        let mut sm = ShardStateMachine {
            data,
            last_applied: None,
            membership: StoredMembership::default(),
            slot,
        };
        match sm.slot.load()? {
            Some(bytes) => {
                let (meta, dump) = decode(&bytes)
                    .ok_or_else(|| storage::StorageError::Corrupt("shard snapshot".into()))?;
                sm.data.restore(dump)?;
                sm.last_applied = meta.last_log_id;
                sm.membership = meta.last_membership;
            }
            None => sm.data.clear()?,
        }
        Ok(sm)
    }
}

/// Holds the dump taken when openraft asked for a builder.
pub struct ShardSnapshotBuilder {
    meta: Meta,
    dump: Vec<u8>,
    slot: SnapshotSlot,
}

impl RaftSnapshotBuilder<ShardTypes> for ShardSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<ShardTypes>, StorageError<NodeId>> {
        crate::metrics::METRICS
            .shard_snapshots
            .with_label_values(&["built"])
            .inc();
        self.slot
            .save(&encode(&self.meta, &self.dump)?)
            .await
            .map_err(sm_err)?;
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(std::mem::take(&mut self.dump))),
        })
    }
}

impl RaftStateMachine<ShardTypes> for ShardStateMachine {
    type SnapshotBuilder = ShardSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ShardResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<ShardTypes>> + Send,
        I::IntoIter: Send,
    {
        let mut responses = Vec::new();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            responses.push(match entry.payload {
                EntryPayload::Blank => ShardResponse::default(),
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    ShardResponse::default()
                }
                EntryPayload::Normal(write) => {
                    ShardResponse(self.data.apply(&write).map_err(|e| RefusedWrite::from(&e)))
                }
            });
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let last = self.last_applied;
        ShardSnapshotBuilder {
            meta: Meta {
                last_log_id: last,
                last_membership: self.membership.clone(),
                snapshot_id: match last {
                    Some(id) => format!("{}-{}-{}", id.leader_id, id.index, rand::random::<u32>()),
                    None => format!("empty-{}", rand::random::<u32>()),
                },
            },
            // Taken here, between two applies, so the dump is exactly `last_applied`.
            dump: self.data.dump().unwrap_or_else(|e| {
                tracing::error!(error = %e, "shard: dumping for a snapshot failed");
                Vec::new()
            }),
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
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let dump = snapshot.into_inner();
        self.data.restore(&dump).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::new(&e),
            ))
        })?;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        crate::metrics::METRICS
            .shard_snapshots
            .with_label_values(&["installed"])
            .inc();
        self.slot
            .save(&encode(meta, &dump)?)
            .await
            .map_err(sm_err)?;
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<ShardTypes>>, StorageError<NodeId>> {
        let Some(bytes) = self.slot.load().map_err(sm_err)? else {
            return Ok(None);
        };
        let (meta, dump) = decode(&bytes).ok_or_else(|| sm_err(Malformed))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(dump.to_vec())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, Entry};
    use storage::UserDataWrite;

    fn entry(index: u64, write: UserDataWrite) -> Entry<ShardTypes> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(write),
        }
    }

    /// A module's payload (a write of a module the shard knows nothing of) is in the
    /// snapshot, and a restarted state machine, rebuilt from that snapshot alone, has it.
    #[test]
    fn module_payload_survives_a_snapshot_and_a_restart() {
        let dir = std::env::temp_dir().join(format!(
            "switchboard-shard-sm-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let store = storage::Store::open(&dir).expect("store");
            let open = || {
                let log = store.shard_raft_log::<ShardTypes>(7).expect("shard log");
                let data = store.shard_user_data(7).expect("shard trees");
                ShardStateMachine::open(data, log.snapshot_slot()).expect("state machine")
            };
            let mut sm = open();
            let write = UserDataWrite::Module {
                module: "anyxep".into(),
                user: "juliet@example.com".into(),
                key: "k".into(),
                payload: Some("<x xmlns='urn:any'/>".into()),
            };
            let out = sm.apply(vec![entry(1, write)]).await.expect("apply");
            assert_eq!(
                out,
                vec![ShardResponse(Ok(storage::WriteOutcome::Existed(false)))]
            );
            let mut builder = sm.get_snapshot_builder().await;
            builder.build_snapshot().await.expect("snapshot");
            drop(sm);

            let mut sm = open();
            let (applied, _) = sm.applied_state().await.expect("applied state");
            assert_eq!(applied.map(|l| l.index), Some(1));
            assert_eq!(
                sm.data
                    .modules
                    .get("anyxep", "juliet@example.com", "k")
                    .expect("read")
                    .as_deref(),
                Some("<x xmlns='urn:any'/>")
            );
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
