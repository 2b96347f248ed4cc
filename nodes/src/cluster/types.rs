//! The openraft type configuration of the cluster's metadata group.

use std::io::Cursor;

pub use super::routing_table::{ClusterCommand, ClusterResponse, NodeId};

openraft::declare_raft_types!(
    /// Raft types of the metadata group: routing-table commands, node ids, NodeLink addresses.
    pub ClusterTypes:
        D = ClusterCommand,
        R = ClusterResponse,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<ClusterTypes>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<ClusterTypes>;
pub type LogStore = storage::RaftLogStore<ClusterTypes>;
