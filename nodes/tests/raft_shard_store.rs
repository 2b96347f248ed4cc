//! openraft's own storage test suite against an IM data shard: the sled Raft log of one
//! shard (`Store::shard_raft_log`) and the shard's state machine over its user-data trees
//! ([`ShardStateMachine`]). The routing table's store passes the same suite
//! (`raft_store.rs`); this is the contract openraft relies on for the shards' safety.

use std::path::PathBuf;

use nodes::cluster::shards::{ShardStateMachine, ShardTypes};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use storage::RaftLogStore;

/// Removes the store's directory when the test is done with it.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One shard of a fresh store; shard 3, not 0, so that the per-shard tree names are used.
struct ShardBuilder;

const SHARD: u16 = 3;

impl StoreBuilder<ShardTypes, RaftLogStore<ShardTypes>, ShardStateMachine, TempDir>
    for ShardBuilder
{
    async fn build(
        &self,
    ) -> Result<(TempDir, RaftLogStore<ShardTypes>, ShardStateMachine), StorageError<u64>> {
        let dir = std::env::temp_dir().join(format!(
            "switchboard-shard-suite-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let store = storage::Store::open(&dir).expect("open a fresh sled store");
        let log = store
            .shard_raft_log::<ShardTypes>(SHARD)
            .expect("open the shard's raft trees");
        let data = store
            .shard_user_data(SHARD)
            .expect("open the shard's data trees");
        let sm = ShardStateMachine::open(data, log.snapshot_slot())
            .expect("open the shard state machine");
        Ok((TempDir(dir), log, sm))
    }
}

#[test]
fn openraft_storage_suite_on_an_im_shard() {
    if let Err(e) = Suite::test_all(ShardBuilder) {
        panic!("openraft storage suite (IM shard): {e}");
    }
}
