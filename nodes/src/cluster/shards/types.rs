//! The openraft type configuration of the IM data shards: each entry is one write to one
//! account's data, each response what applying it gave.

use std::io::Cursor;

use serde::{Deserialize, Serialize};
use storage::{RefusedWrite, UserDataWrite, WriteOutcome};

use crate::cluster::NodeId;

/// What a shard's state machine answers for one write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardResponse(pub Result<WriteOutcome, RefusedWrite>);

impl Default for ShardResponse {
    fn default() -> Self {
        ShardResponse(Ok(WriteOutcome::Done))
    }
}

openraft::declare_raft_types!(
    /// Raft types of one IM data shard.
    pub ShardTypes:
        D = UserDataWrite,
        R = ShardResponse,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<ShardTypes>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type ShardRaft = openraft::Raft<ShardTypes>;
