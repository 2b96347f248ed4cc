//! IM data shards: every account's IM data (roster, subscriptions, pending requests,
//! privacy and block lists, offline messages, vCard, private XML, last activity) belongs to
//! one of a fixed number of shards (`cluster.shards`, FNV-1a of the bare JID), and each shard
//! is its own Raft group with `cluster.replicas` replicas, multiplexed over the NodeLinks.
//!
//! Placement is rendezvous hashing of (shard, node) over the metadata group's voters that are
//! not draining, so the shard map is a function of the replicated membership. The leader of
//! each shard reconciles its group's voters with that placement (add a learner, let it catch
//! up, then replace the voters), so a joining node receives replicas and a leaving node's
//! replicas move away before it is removed.
//!
//! The AccountShard of a shard runs on the shard's leader; every write it makes is committed
//! to the shard's log before the client hears about it.

mod state_machine;
mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use storage::{StorageError, UserData, UserDataWrite, WriteOutcome};

use super::link::NodeLinks;
use super::messages::{ShardRpc, ShardRpcReply};
use super::network::LinkNetwork;
use super::NodeId;
pub use state_machine::ShardStateMachine;
pub use types::{ShardRaft, ShardResponse, ShardTypes};

pub type ShardId = u16;

/// How long a write waits for its shard to commit before the client is told to retry.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a new replica may take to catch up before a move is retried.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// The shard of an account: FNV-1a (64 bit) of its bare JID, modulo the shard count. Fixed
/// so that every node, of every version, agrees.
pub fn shard_of(bare: &str, count: u16) -> ShardId {
    shard_of_parts([bare.as_bytes()], count)
}

/// [`shard_of`] of `bare` as its text (`local@domain`), hashed from its parts without
/// writing the text out: the Router asks for the shard of both ends of every archived
/// message, and formatting the JID for it cost 1 % of a node's CPU (issue 19).
pub fn shard_of_jid(bare: &proto::jid::Jid, count: u16) -> ShardId {
    let local = bare.local().map(str::as_bytes);
    let resource = bare.resource().map(str::as_bytes);
    // The parts in `Jid`'s Display order: local "@" domain "/" resource.
    let parts = [
        local.unwrap_or_default(),
        if local.is_some() { b"@" } else { b"" },
        bare.domain().as_bytes(),
        if resource.is_some() { b"/" } else { b"" },
        resource.unwrap_or_default(),
    ];
    shard_of_parts(parts, count)
}

fn shard_of_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>, count: u16) -> ShardId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parts.into_iter().flatten() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(count.max(1))) as ShardId
}

/// The nodes that should hold `shard`: the `replicas` best of `nodes` by rendezvous hash.
/// Adding a node moves only the replicas it wins; removing one only those it held.
pub fn placement(
    shard: ShardId,
    nodes: impl IntoIterator<Item = NodeId>,
    replicas: usize,
) -> BTreeSet<NodeId> {
    ranked(shard, nodes, replicas).into_iter().collect()
}

/// [`placement`], best first: the first one initialises the shard's group and so leads it
/// at first, which spreads the first leaders over the nodes.
fn ranked(shard: ShardId, nodes: impl IntoIterator<Item = NodeId>, replicas: usize) -> Vec<NodeId> {
    let mut scored: Vec<(u64, NodeId)> = nodes
        .into_iter()
        .map(|n| {
            // splitmix64 of (shard, node): well spread and stable across versions.
            let mut z = (u64::from(shard) << 48) ^ n ^ 0x9e37_79b9_7f4a_7c15;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31), n)
        })
        .collect();
    scored.sort_unstable_by(|a, b| b.cmp(a));
    scored.into_iter().take(replicas).map(|(_, n)| n).collect()
}

/// One shard as this node sees it (`switchboard cluster status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStatus {
    pub shard: ShardId,
    pub leader: Option<NodeId>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub applied: Option<u64>,
    pub term: u64,
}

struct Group {
    /// Replaced by a fresh, uninitialised instance when this node's replica is retired.
    raft: RwLock<ShardRaft>,
    data: UserData,
}

/// The shards, as this node runs them: one Raft instance per shard (a node that holds no
/// replica of a shard still runs an idle, uninitialised instance, so it can be given one).
pub struct ShardGroups {
    me: NodeId,
    groups: Vec<Group>,
    replicas: usize,
    /// The leader last heard of for each shard this node holds no replica of.
    hints: Mutex<Vec<Option<NodeId>>>,
    /// Per shard, 1 + the term whose handover completed on this node (0: none).
    handed_over: Vec<AtomicU64>,
    /// The runtime the Raft instances run on (writes from actor threads are spawned there).
    runtime: actix::ArbiterHandle,
    /// What a retired replica's fresh instance is made from.
    store: storage::Store,
    config: Arc<openraft::Config>,
    links: Arc<NodeLinks>,
}

impl ShardGroups {
    /// Start every shard's Raft instance; must run on the arbiter that will own them.
    pub async fn start(
        me: NodeId,
        store: &storage::Store,
        count: u16,
        replicas: usize,
        links: Arc<NodeLinks>,
        heartbeat_ms: u64,
        snapshot_entries: u64,
    ) -> anyhow::Result<ShardGroups> {
        let config = Arc::new(
            openraft::Config {
                cluster_name: "switchboard-shard".into(),
                heartbeat_interval: heartbeat_ms,
                election_timeout_min: heartbeat_ms * 4,
                election_timeout_max: heartbeat_ms * 8,
                // Bounds the log (and the replay after a restart); a replica that fell
                // further behind gets the snapshot.
                snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_entries),
                max_in_snapshot_log_to_keep: snapshot_entries / 4,
                purge_batch_size: (snapshot_entries / 4).max(1),
                snapshot_max_chunk_size: super::snapshot_chunk_bytes(links.max_frame()),
                ..Default::default()
            }
            .validate()?,
        );
        let mut groups = Vec::with_capacity(count as usize);
        for shard in 0..count {
            let (raft, data) = Self::open(me, store, &config, &links, shard).await?;
            groups.push(Group {
                raft: RwLock::new(raft),
                data,
            });
        }
        Ok(ShardGroups {
            me,
            store: store.clone(),
            config,
            links,
            groups,
            replicas,
            hints: Mutex::new(vec![None; count as usize]),
            handed_over: (0..count).map(|_| AtomicU64::new(0)).collect(),
            runtime: actix::Arbiter::current(),
        })
    }

    async fn open(
        me: NodeId,
        store: &storage::Store,
        config: &Arc<openraft::Config>,
        links: &Arc<NodeLinks>,
        shard: ShardId,
    ) -> anyhow::Result<(ShardRaft, UserData)> {
        let log = store.shard_raft_log::<ShardTypes>(shard)?;
        let data = store.shard_user_data(shard)?;
        let sm = ShardStateMachine::open(data.clone(), log.snapshot_slot())?;
        let raft = ShardRaft::new(
            me,
            config.clone(),
            LinkNetwork::<ShardTypes> {
                links: links.clone(),
                group: shard,
            },
            log,
            sm,
        )
        .await?;
        Ok((raft, data))
    }

    /// This node's replica of `shard` was moved away: stop it, drop its log and data, and
    /// put an idle, uninitialised instance in its place (it neither campaigns with a stale
    /// membership nor keeps stale data, and it can be given the shard again).
    async fn retire(&self, shard: ShardId) -> anyhow::Result<()> {
        let Some(group) = self.groups.get(shard as usize) else {
            return Ok(());
        };
        let old = self
            .raft(shard)
            .ok_or_else(|| anyhow::anyhow!("no shard {shard}"))?;
        old.shutdown().await?;
        self.store.shard_raft_log::<ShardTypes>(shard)?.clear()?;
        group.data.clear()?;
        let (fresh, _) = Self::open(self.me, &self.store, &self.config, &self.links, shard).await?;
        if let Ok(mut r) = group.raft.write() {
            *r = fresh;
        }
        if let Some(t) = self.handed_over.get(shard as usize) {
            t.store(0, Ordering::Release);
        }
        tracing::info!(
            shard,
            "shard: replica moved away; its log and data are dropped"
        );
        Ok(())
    }

    /// Retire the replicas this node still runs that the shards' leaders no longer count:
    /// `reports` are the shard statuses of the other nodes.
    pub async fn retire_stale(
        &self,
        placeable: &BTreeMap<NodeId, String>,
        reports: &[(NodeId, Vec<ShardStatus>)],
    ) {
        let held: BTreeSet<ShardId> = self.status().iter().map(|s| s.shard).collect();
        for shard in held {
            if placement(shard, placeable.keys().copied(), self.replicas).contains(&self.me)
                || self.leads(shard).is_some()
            {
                continue;
            }
            let dropped = reports.iter().any(|(reporter, shards)| {
                shards.iter().any(|s| {
                    s.shard == shard
                        && s.leader == Some(*reporter)
                        && !s.voters.contains(&self.me)
                        && !s.learners.contains(&self.me)
                })
            });
            if dropped {
                if let Err(e) = self.retire(shard).await {
                    tracing::warn!(shard, error = %e, "shard: retiring a moved replica failed");
                }
            }
        }
    }

    /// Whether this node runs a replica that no placement wants (see `retire_stale`).
    pub fn has_unplaced(&self, placeable: &BTreeMap<NodeId, String>) -> bool {
        self.status().iter().any(|s| {
            !placement(s.shard, placeable.keys().copied(), self.replicas).contains(&self.me)
        })
    }

    pub fn count(&self) -> u16 {
        self.groups.len() as u16
    }

    pub fn shard_of(&self, bare: &str) -> ShardId {
        shard_of(bare, self.count())
    }

    /// The shard's trees on this node (read by its AccountShard while this node leads).
    pub fn data(&self, shard: ShardId) -> Option<&UserData> {
        self.groups.get(shard as usize).map(|g| &g.data)
    }

    fn raft(&self, shard: ShardId) -> Option<ShardRaft> {
        self.groups
            .get(shard as usize)
            .and_then(|g| g.raft.read().ok().map(|r| r.clone()))
    }

    /// The term in which this node leads `shard`, once it has applied everything earlier
    /// leaders committed (an entry of its own term is applied), so its reads are current.
    pub fn leads(&self, shard: ShardId) -> Option<u64> {
        let raft = self.raft(shard)?;
        let m = raft.metrics();
        let m = m.borrow();
        (m.state == ServerState::Leader
            && m.current_leader == Some(self.me)
            && m.last_applied.map(|l| l.leader_id.term) == Some(m.current_term))
        .then_some(m.current_term)
    }

    /// Whether this node leads `shard` and its actor has been handed the shard's sessions
    /// for this term (`im::handover`): only then does it take operations.
    pub fn serves(&self, shard: ShardId) -> bool {
        let Some(term) = self.leads(shard) else {
            return false;
        };
        self.handed_over
            .get(shard as usize)
            .is_some_and(|t| t.load(Ordering::Acquire) == term + 1)
    }

    /// The shard's actor has what it needs to lead in `term`.
    pub fn mark_handed_over(&self, shard: ShardId, term: u64) {
        if let Some(t) = self.handed_over.get(shard as usize) {
            t.store(term + 1, Ordering::Release);
        }
    }

    /// Where to send an operation on `shard`: its leader as far as this node knows, or
    /// else one of the nodes that should hold it.
    /// `voters` is only called when neither is known.
    pub fn leader(&self, shard: ShardId, voters: impl FnOnce() -> Vec<NodeId>) -> Option<NodeId> {
        let raft = self.raft(shard)?;
        let known = {
            let m = raft.metrics();
            let m = m.borrow();
            let holds = m
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v == self.me);
            m.current_leader.filter(|_| holds)
        };
        known
            .or_else(|| {
                self.hints
                    .lock()
                    .ok()
                    .and_then(|h| h.get(shard as usize).copied().flatten())
            })
            .or_else(|| placement(shard, voters(), self.replicas).into_iter().next())
    }

    /// Remember who leads `shard` (from a peer's answer); `None` forgets.
    pub fn note_leader(&self, shard: ShardId, leader: Option<NodeId>) {
        if let Ok(mut h) = self.hints.lock() {
            if let Some(slot) = h.get_mut(shard as usize) {
                *slot = leader;
            }
        }
    }

    /// Commit `write` to its shard (this node must lead it) and give what applying it gave.
    pub async fn write(&self, write: UserDataWrite) -> Result<WriteOutcome, StorageError> {
        let shard = self.shard_of(write.user());
        let raft = self
            .raft(shard)
            .ok_or_else(|| StorageError::Unavailable(format!("no shard {shard}")))?;
        let result = match tokio::time::timeout(WRITE_TIMEOUT, raft.client_write(write)).await {
            Ok(Ok(r)) => r.data.0.map_err(StorageError::from),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => Err(
                StorageError::Unavailable(format!("shard {shard} moved to node {:?}", f.leader_id)),
            ),
            Ok(Err(e)) => Err(StorageError::Unavailable(format!("shard {shard}: {e}"))),
            Err(_) => Err(StorageError::Unavailable(format!(
                "shard {shard} did not commit in time"
            ))),
        };
        let label = match &result {
            Ok(_) => "committed",
            Err(StorageError::Unavailable(_)) => "unavailable",
            Err(_) => "refused",
        };
        crate::metrics::METRICS
            .shard_writes
            .with_label_values(&[label])
            .inc();
        result
    }

    /// [`ShardGroups::write`] from a thread that may block (a AccountShard's).
    pub fn write_blocking(
        self: &Arc<Self>,
        write: UserDataWrite,
    ) -> Result<WriteOutcome, StorageError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let groups = self.clone();
        self.runtime.spawn(async move {
            let _ = tx.send(groups.write(write).await);
        });
        rx.recv_timeout(WRITE_TIMEOUT + Duration::from_secs(1))
            .unwrap_or_else(|_| Err(StorageError::Unavailable("shard write abandoned".into())))
    }

    /// First start of a configured cluster: each shard's group is initialised by the best
    /// placed of the configured members that should hold it, with those members as voters.
    pub async fn initialize(&self, members: &BTreeMap<NodeId, String>) -> anyhow::Result<()> {
        for shard in 0..self.count() {
            let Some(raft) = self.raft(shard) else {
                continue;
            };
            let voters = ranked(shard, members.keys().copied(), self.replicas);
            if voters.first() != Some(&self.me) || raft.is_initialized().await? {
                continue;
            }
            let nodes: BTreeMap<NodeId, BasicNode> = voters
                .iter()
                .filter_map(|id| {
                    members
                        .get(id)
                        .map(|addr| (*id, BasicNode { addr: addr.clone() }))
                })
                .collect();
            raft.initialize(nodes).await?;
        }
        Ok(())
    }

    /// A peer's Raft RPC for one of the shards.
    pub async fn rpc(&self, shard: ShardId, rpc: ShardRpc) -> Option<ShardRpcReply> {
        let raft = self.raft(shard)?;
        Some(match rpc {
            ShardRpc::AppendEntries(r) => {
                ShardRpcReply::AppendEntries(raft.append_entries(r).await)
            }
            ShardRpc::Vote(r) => ShardRpcReply::Vote(raft.vote(r).await),
            ShardRpc::InstallSnapshot(r) => {
                ShardRpcReply::InstallSnapshot(raft.install_snapshot(r).await)
            }
        })
    }

    /// The shards this node holds a replica of.
    pub fn status(&self) -> Vec<ShardStatus> {
        (0..self.count())
            .filter_map(|shard| {
                let m = self.raft(shard)?.metrics().borrow().clone();
                let membership = m.membership_config.membership();
                let voters: Vec<NodeId> = membership.voter_ids().collect();
                if !voters.contains(&self.me) {
                    return None;
                }
                Some(ShardStatus {
                    shard,
                    leader: m.current_leader,
                    voters,
                    learners: membership.learner_ids().collect(),
                    applied: m.last_applied.map(|l| l.index),
                    term: m.current_term,
                })
            })
            .collect()
    }

    /// On each shard this node leads, move the voters towards the placement over `nodes`
    /// (the metadata voters with their addresses, minus the draining ones).
    pub async fn reconcile(&self, nodes: &BTreeMap<NodeId, String>) {
        if nodes.is_empty() {
            return;
        }
        for shard in 0..self.count() {
            let Some(raft) = self.raft(shard).filter(|_| self.leads(shard).is_some()) else {
                continue;
            };
            let want = placement(shard, nodes.keys().copied(), self.replicas);
            let (voters, known): (BTreeSet<NodeId>, BTreeSet<NodeId>) = {
                let m = raft.metrics();
                let m = m.borrow();
                let membership = m.membership_config.membership();
                (
                    membership.voter_ids().collect(),
                    membership.nodes().map(|(id, _)| *id).collect(),
                )
            };
            if voters == want {
                continue;
            }
            tracing::info!(shard, ?voters, ?want, "shard: moving replicas");
            let mut ready = true;
            for node in want.difference(&known) {
                let Some(addr) = nodes.get(node) else {
                    ready = false;
                    continue;
                };
                let add = raft.add_learner(*node, BasicNode { addr: addr.clone() }, true);
                match tokio::time::timeout(CATCH_UP_TIMEOUT, add).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(shard, node, error = %e, "shard: adding a replica failed");
                        ready = false;
                    }
                    Err(_) => {
                        tracing::warn!(shard, node, "shard: new replica did not catch up in time");
                        ready = false;
                    }
                }
            }
            if !ready {
                continue;
            }
            let change =
                raft.change_membership(ChangeMembers::ReplaceAllVoters(want.clone()), false);
            match tokio::time::timeout(CATCH_UP_TIMEOUT, change).await {
                Ok(Ok(_)) => tracing::info!(shard, voters = ?want, "shard: replicas moved"),
                Ok(Err(e)) => tracing::warn!(shard, error = %e, "shard: changing voters failed"),
                Err(_) => tracing::warn!(shard, "shard: changing voters timed out"),
            }
        }
    }

    /// Run `fut` on the shards' runtime (from any thread).
    pub fn spawn(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        self.runtime.spawn(fut);
    }

    /// Stop every shard's Raft (node shutdown).
    pub async fn shutdown(&self) {
        for shard in 0..self.count() {
            if let Some(raft) = self.raft(shard) {
                let _ = raft.shutdown().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_of_is_fnv1a() {
        // FNV-1a 64 of "" is the offset basis; of "a" a published test vector.
        assert_eq!(
            shard_of("", u16::MAX),
            (0xcbf2_9ce4_8422_2325u64 % 65535) as u16
        );
        assert_eq!(
            shard_of("a", u16::MAX),
            (0xaf63_dc4c_8601_ec8cu64 % 65535) as u16
        );
        assert!((0..100).all(|i| shard_of(&format!("u{i}@x"), 16) < 16));
    }

    #[test]
    fn shard_of_jid_is_shard_of_its_text() {
        for text in [
            "a@b",
            "b",
            "user17@localhost",
            "x@y/res",
            "d.example/r",
            "ü@ß.example",
        ] {
            let jid = proto::jid::Jid::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            for count in [1, 16, 64, u16::MAX] {
                assert_eq!(
                    shard_of_jid(&jid, count),
                    shard_of(&jid.to_string(), count),
                    "{text} in {count}"
                );
            }
        }
    }

    #[test]
    fn placement_moves_only_what_a_new_node_wins() {
        let three: Vec<NodeId> = vec![1, 2, 3];
        let four: Vec<NodeId> = vec![1, 2, 3, 4];
        let mut moved = 0;
        for shard in 0..64 {
            let before = placement(shard, three.clone(), 3);
            assert_eq!(before, BTreeSet::from([1, 2, 3]));
            let after = placement(shard, four.clone(), 3);
            assert_eq!(after.len(), 3);
            if after.contains(&4) {
                moved += 1;
                assert_eq!(before.difference(&after).count(), 1);
            } else {
                assert_eq!(before, after);
            }
            // Removing node 2 keeps the shard on the others.
            let without = placement(shard, [1, 3, 4], 3);
            assert_eq!(without, BTreeSet::from([1, 3, 4]));
        }
        // Node 4 should win about three quarters of the shards.
        assert!(
            (32..=60).contains(&moved),
            "node 4 got {moved} of 64 shards"
        );
    }
}
