//! openraft's own storage test suite against our sled log store and routing-table state
//! machine (storage v2): the contract openraft relies on for safety.

use std::path::PathBuf;
use std::sync::Arc;

use nodes::cluster::types::{ClusterTypes, LogStore};
use nodes::cluster::RoutingStateMachine;
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

/// Removes the store's directory when the test is done with it.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct SledBuilder;

impl StoreBuilder<ClusterTypes, LogStore, RoutingStateMachine, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, RoutingStateMachine), StorageError<u64>> {
        let dir = std::env::temp_dir().join(format!(
            "switchboard-raft-suite-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let store = storage::Store::open(&dir).expect("open a fresh sled store");
        let log: LogStore = store.raft_log().expect("open the raft trees");
        let sm = RoutingStateMachine::open(log.snapshot_slot(), Arc::new(|_| {}), None)
            .expect("open the state machine");
        Ok((TempDir(dir), log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(SledBuilder) {
        panic!("openraft storage suite: {e}");
    }
}
