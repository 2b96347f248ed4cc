//! The cluster: a Raft group (openraft) over every node that replicates the [`RoutingTable`]
//! (members and routes), NodeLinks between the nodes, the batching of route changes, and the
//! failure detector that purges a dead node's routes.
//!
//! Raft and the links run on their own thread (the cluster arbiter), so heartbeats never wait
//! behind c2s work. The Router never reads Raft: it keeps its own copy of the remote routes,
//! fed by the state machine as entries apply (`TableUpdate`).

pub mod link;
pub mod messages;
mod network;
pub mod routing_table;
pub mod secrets;
mod service;
pub mod shards;
pub mod state_machine;
pub mod types;
mod up_since;
mod wire;

use std::collections::{BTreeMap, BTreeSet};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ServerState};
use tokio::sync::{mpsc, oneshot};

use crate::config::parse_member;
use link::{LinkLimits, LinkSecret, NodeLinks, PeerLink};
use messages::{Reply, Request};
pub use routing_table::{
    AccountChange, AccountOutcome, BindOutcome, ClusterCommand, ClusterResponse, MemberState,
    NodeId, Route, RouteChange, RouteEvent, RoutingTable, SessionRoute,
};
pub use service::{ClusterService, LocalService};
pub use state_machine::{RoutingStateMachine, TableUpdate, UpdateSink};
pub use types::{ClusterTypes, Raft};
use up_since::UpSince;

/// Route changes are batched for at most this long (or `BATCH_MAX` changes).
const BATCH_WINDOW: Duration = Duration::from_millis(2);
const BATCH_MAX: usize = 1024;
/// How long a write waits for the leader before the client is told to retry.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const PING_INTERVAL: Duration = Duration::from_millis(300);
/// How often the leader of a shard compares its replicas with the placement.
const SHARD_PLACEMENT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a leaving node's shard replicas may take to move away.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("no cluster leader is known (no quorum?)")]
    NoLeader,
    #[error("the cluster did not commit in time")]
    Timeout,
    #[error("{0}")]
    Failed(String),
    #[error("a log entry of {bytes} bytes exceeds half of cluster.max_frame_bytes ({limit})")]
    TooLarge { bytes: usize, limit: usize },
}

/// The largest log entry a node proposes: half a frame, so an AppendEntries carrying it (and
/// its envelope) always fits. An entry no frame can carry could never be replicated, and
/// every entry after it would wait behind it forever.
pub fn max_entry_bytes(max_frame_bytes: usize) -> usize {
    max_frame_bytes / 2
}

/// Cluster settings the node needs at run time.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node_id: NodeId,
    /// The NodeLink address peers dial.
    pub advertise: String,
    /// Initial voters (id → NodeLink address). The lowest id initialises the cluster.
    pub members: BTreeMap<NodeId, String>,
    /// Running nodes to ask for admission when this node is new.
    pub seeds: Vec<String>,
    pub failure_timeout: Duration,
    pub heartbeat_ms: u64,
    /// IM data shards and replicas per shard.
    pub shards: u16,
    pub replicas: usize,
    /// A shard snapshots (and then compacts its log) after this many entries.
    pub shard_snapshot_entries: u64,
    /// The largest NodeLink frame sent or accepted (`cluster.max_frame_bytes`).
    pub max_frame_bytes: usize,
    /// Inbound NodeLink connections allowed in handshake at once
    /// (`cluster.max_pending_handshakes`).
    pub max_pending_handshakes: usize,
}

/// Snapshot chunk size for a frame limit: a chunk's bytes travel as a JSON array of numbers
/// (up to 4 bytes each), so a fifth of the frame leaves room for the rest of the request.
pub fn snapshot_chunk_bytes(max_frame_bytes: usize) -> u64 {
    (max_frame_bytes / 5) as u64
}

struct PendingChange {
    change: RouteChange,
    outcome: Option<oneshot::Sender<Result<BindOutcome, WriteError>>>,
}

/// What the node knows of the cluster outside Raft's own metrics: the members' states from
/// the applied table.
#[derive(Default)]
struct MemberView {
    members: BTreeMap<NodeId, routing_table::Member>,
    draining: BTreeSet<NodeId>,
}

/// The cluster, as the rest of the node uses it. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    pub me: NodeId,
    pub incarnation: u64,
    pub raft: Raft,
    pub links: Arc<NodeLinks>,
    /// The IM data shards (their Raft groups run on the same arbiter).
    pub shards: Arc<shards::ShardGroups>,
    changes: mpsc::Sender<PendingChange>,
    view: Arc<Mutex<MemberView>>,
    config: Arc<ClusterConfig>,
    /// Set when the node is stopping: it no longer resyncs itself up.
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

impl Cluster {
    /// Start Raft and the links; must run inside the cluster arbiter's runtime. `sink`
    /// receives every applied table change (it forwards them to the Router).
    pub async fn start(
        config: ClusterConfig,
        secret: &str,
        log: types::LogStore,
        store: storage::Store,
        sink: UpdateSink,
    ) -> anyhow::Result<Cluster> {
        let view: Arc<Mutex<MemberView>> = Arc::default();
        let view_in_sink = view.clone();
        let sink: UpdateSink = Arc::new(move |update: TableUpdate| {
            if let Ok(mut v) = view_in_sink.lock() {
                match &update {
                    TableUpdate::Replaced(t) => {
                        v.members = t.members.clone();
                        v.draining = t.draining.clone();
                    }
                    TableUpdate::Applied(events) => {
                        for e in events {
                            match e {
                                RouteEvent::Member { node, member } => {
                                    v.members.insert(*node, *member);
                                }
                                RouteEvent::Draining {
                                    node,
                                    draining: true,
                                } => {
                                    v.draining.insert(*node);
                                }
                                RouteEvent::Draining {
                                    node,
                                    draining: false,
                                } => {
                                    v.draining.remove(node);
                                }
                                _ => {}
                            }
                        }
                    }
                }
            }
            sink(update);
        });
        let sm = RoutingStateMachine::open(log.snapshot_slot(), sink, Some(store.clone()))?;
        let links = NodeLinks::new(
            config.node_id,
            &config.advertise,
            LinkSecret::new(secret),
            LinkLimits {
                max_frame_bytes: config.max_frame_bytes,
                max_pending_handshakes: config.max_pending_handshakes,
            },
        );
        let raft_config = openraft::Config {
            cluster_name: "switchboard".into(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.heartbeat_ms * 4,
            election_timeout_max: config.heartbeat_ms * 8,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(5000),
            max_in_snapshot_log_to_keep: 1000,
            snapshot_max_chunk_size: snapshot_chunk_bytes(config.max_frame_bytes),
            ..Default::default()
        }
        .validate()?;
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            network::LinkNetwork::<ClusterTypes> {
                links: links.clone(),
                group: (),
            },
            log,
            sm,
        )
        .await?;
        let shards = Arc::new(
            shards::ShardGroups::start(
                config.node_id,
                &store,
                config.shards,
                config.replicas,
                links.clone(),
                config.heartbeat_ms,
                config.shard_snapshot_entries,
            )
            .await?,
        );
        let (tx, rx) = mpsc::channel(65_536);
        let cluster = Cluster {
            me: config.node_id,
            incarnation: rand::random::<u64>() >> 1,
            raft,
            links,
            shards,
            changes: tx,
            view,
            config: Arc::new(config),
            stopping: Arc::default(),
        };
        tokio::spawn(cluster.clone().batch_loop(rx));
        tokio::spawn(cluster.clone().place_shards());
        Ok(cluster)
    }

    /// Form the cluster (first start of the lowest configured member) or ask the seeds for
    /// admission (a new node). A node that was a member before just restarts its Raft.
    pub async fn bootstrap(&self) -> anyhow::Result<()> {
        if self.raft.is_initialized().await? {
            return Ok(());
        }
        let members = &self.config.members;
        if members.keys().next() == Some(&self.me) {
            let nodes: BTreeMap<NodeId, BasicNode> = members
                .iter()
                .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
                .collect();
            tracing::info!(?members, "cluster: initialising");
            self.raft.initialize(nodes).await?;
            self.shards.initialize(members).await?;
            return Ok(());
        }
        if members.contains_key(&self.me) {
            // Another configured member initialises the metadata group; its leader will
            // replicate to us. Shards this node is the lowest placed member of are ours.
            self.shards.initialize(members).await?;
            return Ok(());
        }
        self.join(self.config.seeds.clone());
        Ok(())
    }

    /// Ask `seeds` (`ID@HOST:PORT`, tried in turn until one admits us) to add this node as
    /// a voter; retries in the background until it is admitted.
    pub fn join(&self, seeds: Vec<String>) {
        let me = self.me;
        let advertise = self.config.advertise.clone();
        let links = self.links.clone();
        tokio::spawn(async move {
            loop {
                for (i, seed) in seeds.iter().enumerate() {
                    // Seeds are dialled as pseudo-peers: their node id is unknown, so the
                    // handshake must not insist on one. Use the seed's own id from config.
                    let Some((seed_id, addr)) = parse_member(seed) else {
                        tracing::error!(seed, "cluster: seed must be ID@HOST:PORT");
                        continue;
                    };
                    let link = links.peer(seed_id, &addr);
                    let reply = link
                        .request(
                            Request::Join {
                                node: me,
                                addr: advertise.clone(),
                            },
                            Duration::from_secs(30),
                        )
                        .await;
                    match reply {
                        Ok(Reply::Done(Ok(()))) => {
                            tracing::info!(seed, "cluster: joined");
                            return;
                        }
                        other => tracing::info!(seed, i, ?other, "cluster: join not yet accepted"),
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// The current leader and its NodeLink address.
    fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let leader = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&leader)?
            .addr
            .clone();
        Some((leader, addr))
    }

    /// Commit `cmd`, on the leader wherever it is.
    pub async fn write(&self, cmd: ClusterCommand) -> Result<ClusterResponse, WriteError> {
        let limit = max_entry_bytes(self.links.max_frame());
        let bytes = serde_json::to_vec(&cmd).map_or(0, |b| b.len());
        if bytes > limit {
            tracing::warn!(
                bytes,
                limit,
                "cluster: write refused: entry too large for a frame"
            );
            return Err(WriteError::TooLarge { bytes, limit });
        }
        match tokio::time::timeout(WRITE_TIMEOUT, self.write_inner(cmd)).await {
            Ok(r) => r,
            Err(_) => Err(WriteError::Timeout),
        }
    }

    async fn write_inner(&self, cmd: ClusterCommand) -> Result<ClusterResponse, WriteError> {
        let mut cmd = Some(cmd);
        loop {
            let Some((leader, addr)) = self.leader() else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let Some(c) = cmd.take() else {
                return Err(WriteError::NoLeader);
            };
            if leader == self.me {
                match self.raft.client_write(c.clone()).await {
                    Ok(r) => {
                        announce_commit(&self.raft).await;
                        return Ok(r.data);
                    }
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                        cmd = Some(c);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    Err(e) => return Err(WriteError::Failed(e.to_string())),
                }
            }
            let link = self.links.peer(leader, &addr);
            match link.request(Request::Write(c.clone()), WRITE_TIMEOUT).await {
                Ok(Reply::Write(Ok(r))) => return Ok(r),
                Ok(Reply::Write(Err(e))) if e.contains("forward") => {}
                Ok(Reply::Write(Err(e))) => return Err(WriteError::Failed(e)),
                Ok(_) => return Err(WriteError::Failed("unexpected reply".into())),
                Err(_) => {}
            }
            // The leader moved or is unreachable: wait for Raft to settle and retry.
            cmd = Some(c);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Queue a route change; the returned receiver gets a bind's outcome once committed.
    pub fn change(
        &self,
        change: RouteChange,
    ) -> oneshot::Receiver<Result<BindOutcome, WriteError>> {
        let (tx, rx) = oneshot::channel();
        let pending = PendingChange {
            change,
            outcome: Some(tx),
        };
        if let Err(mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p)) =
            self.changes.try_send(pending)
        {
            if let Some(tx) = p.outcome {
                let _ = tx.send(Err(WriteError::Failed("route queue full".into())));
            }
        }
        rx
    }

    async fn batch_loop(self, mut rx: mpsc::Receiver<PendingChange>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
            while batch.len() < BATCH_MAX {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(p)) => batch.push(p),
                    _ => break,
                }
            }
            let changes: Vec<RouteChange> = batch.iter().map(|p| p.change.clone()).collect();
            let result = self
                .write(ClusterCommand::Routes {
                    node: self.me,
                    incarnation: self.incarnation,
                    changes,
                })
                .await;
            match result {
                Ok(response) => {
                    let mut outcomes = response.binds.into_iter();
                    for p in batch {
                        let outcome = match p.change {
                            RouteChange::Bind { .. } | RouteChange::Move { .. } => {
                                outcomes.next().unwrap_or(BindOutcome::NodeNotUp)
                            }
                            _ => BindOutcome::Bound,
                        };
                        if let Some(tx) = p.outcome {
                            let _ = tx.send(Ok(outcome));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: route changes not committed");
                    for p in batch {
                        if let Some(tx) = p.outcome {
                            let _ = tx.send(Err(WriteError::Failed(e.to_string())));
                        }
                    }
                }
            }
        }
    }

    /// Whether the applied table has this node up with this process's incarnation (a
    /// restarted node is "up" in the table as its previous life until it resyncs).
    pub fn is_up(&self) -> bool {
        self.view
            .lock()
            .ok()
            .and_then(|v| v.members.get(&self.me).copied())
            .is_some_and(|m| m.state == MemberState::Up && m.incarnation == self.incarnation)
    }

    /// The members as this node's applied table has them.
    fn members(&self) -> BTreeMap<NodeId, routing_table::Member> {
        self.view
            .lock()
            .map(|v| v.members.clone())
            .unwrap_or_default()
    }

    pub fn member_states(&self) -> BTreeMap<NodeId, MemberState> {
        self.members()
            .into_iter()
            .map(|(id, m)| (id, m.state))
            .collect()
    }

    /// Voters of the current membership with their NodeLink addresses.
    pub fn voters(&self) -> BTreeMap<NodeId, String> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .filter(|(id, _)| voters.contains(id))
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    }

    /// The link to a member, if it is one.
    pub fn link(&self, node: NodeId) -> Option<Arc<PeerLink>> {
        if let Some(l) = self.links.existing(node) {
            return Some(l);
        }
        let m = self.raft.metrics();
        let addr = m
            .borrow()
            .membership_config
            .membership()
            .get_node(&node)?
            .addr
            .clone();
        Some(self.links.peer(node, &addr))
    }

    /// Voters that IM data shards may be placed on (not draining), with their addresses.
    pub fn placeable(&self) -> BTreeMap<NodeId, String> {
        let draining = self
            .view
            .lock()
            .map(|v| v.draining.clone())
            .unwrap_or_default();
        let mut voters = self.voters();
        voters.retain(|id, _| !draining.contains(id));
        voters
    }

    /// Keep the shards this node leads placed on the placeable voters.
    async fn place_shards(self) {
        let mut tick = tokio::time::interval(SHARD_PLACEMENT_INTERVAL);
        loop {
            tick.tick().await;
            if self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            let placeable = self.placeable();
            self.shards.reconcile(&placeable).await;
            if self.shards.has_unplaced(&placeable) {
                let reports = self.shard_reports().await;
                self.shards.retire_stale(&placeable, &reports).await;
            }
        }
    }

    /// Every other voter's view of the shards it holds.
    async fn shard_reports(&self) -> Vec<(NodeId, Vec<shards::ShardStatus>)> {
        let mut reports = Vec::new();
        for (id, addr) in self.voters() {
            if id == self.me {
                continue;
            }
            if let Ok(Reply::ShardStatus(s)) = self
                .links
                .peer(id, &addr)
                .request(Request::ShardStatus, Duration::from_secs(2))
                .await
            {
                reports.push((id, s));
            }
        }
        reports
    }

    /// Remove `node` from the cluster; must run on the metadata leader. Its shard replicas
    /// move away first (it is marked draining and the shards' leaders re-place them), then it
    /// stops being a voter and its routes are purged.
    pub(crate) async fn remove_member(&self, node: NodeId) -> Result<(), WriteError> {
        self.write(ClusterCommand::SetDraining {
            node,
            draining: true,
        })
        .await?;
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while !self.drained(node).await? {
            if tokio::time::Instant::now() >= deadline {
                return Err(WriteError::Failed(format!(
                    "the shards of node {node} did not move away within {}s",
                    DRAIN_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        tracing::info!(
            node,
            "cluster: no shard replica left on the node; removing it"
        );
        self.raft
            .change_membership(
                openraft::ChangeMembers::RemoveVoters(BTreeSet::from([node])),
                false,
            )
            .await
            .map_err(|e| WriteError::Failed(e.to_string()))?;
        self.write(ClusterCommand::NodeDown { node }).await?;
        Ok(())
    }

    /// Whether no shard keeps a replica on `node`, as the shards' leaders report it.
    async fn drained(&self, node: NodeId) -> Result<bool, WriteError> {
        let mut reports = vec![(self.me, self.shards.status())];
        reports.extend(self.shard_reports().await);
        let mut settled = BTreeSet::new();
        for (reporter, shards) in &reports {
            for s in shards {
                if s.leader == Some(*reporter) {
                    if s.voters.contains(&node) {
                        return Ok(false);
                    }
                    settled.insert(s.shard);
                }
            }
        }
        Ok(settled.len() == self.shards.count() as usize)
    }

    /// Ping every member (keeps `last_seen` fresh) and, on the leader, mark members that
    /// stayed silent for `failure_timeout` down, which purges their routes. `resync` is
    /// called when this node finds itself marked down (a partition healed) or not yet up.
    ///
    /// `resynced` gets the sessions the resync bound again: while the node was down, the
    /// others told their users' contacts that they went offline, so their presence must go
    /// out again.
    pub async fn watch<F, Fut, G>(self, resync: F, resynced: G)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Vec<SessionRoute>> + Send,
        G: Fn(Vec<SessionRoute>) + Send + 'static,
    {
        let mut tick = tokio::time::interval(PING_INTERVAL);
        let mut leader_since: Option<tokio::time::Instant> = None;
        let mut up_since = UpSince::default();
        loop {
            tick.tick().await;
            for (id, addr) in self.voters() {
                if id == self.me {
                    continue;
                }
                let link = self.links.peer(id, &addr);
                tokio::spawn(async move {
                    let start = std::time::Instant::now();
                    if let Ok(Reply::Pong) = link.request(Request::Ping, PING_INTERVAL * 3).await {
                        crate::metrics::METRICS
                            .nodelink_rtt
                            .with_label_values(&[&id.to_string()])
                            .observe(start.elapsed().as_secs_f64());
                    }
                });
            }
            // One look at the table per tick, for the grace and the detector alike.
            let members = self.members();
            up_since.observe(&members);
            let state = self.raft.metrics().borrow().state;
            if state == ServerState::Leader {
                let since = *leader_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= self.config.failure_timeout {
                    self.detect_failures(members, &up_since).await;
                }
            } else {
                leader_since = None;
            }
            let has_leader = self.raft.metrics().borrow().current_leader.is_some();
            let stopping = self.stopping.load(std::sync::atomic::Ordering::Relaxed);
            if has_leader && !stopping && !self.is_up() {
                let sessions = resync().await;
                let count = sessions.len();
                match self
                    .write(ClusterCommand::Resync {
                        node: self.me,
                        incarnation: self.incarnation,
                        sessions: sessions.clone(),
                    })
                    .await
                {
                    Ok(r) => {
                        tracing::info!(
                            sessions = count,
                            refused = r.binds.iter().filter(|b| **b != BindOutcome::Bound).count(),
                            "cluster: this node is up"
                        );
                        let bound: Vec<SessionRoute> = sessions
                            .into_iter()
                            .zip(r.binds)
                            .filter(|(_, b)| *b == BindOutcome::Bound)
                            .map(|(s, _)| s)
                            .collect();
                        if !bound.is_empty() {
                            resynced(bound);
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "cluster: resync not committed yet"),
                }
            }
        }
    }

    async fn detect_failures(
        &self,
        members: BTreeMap<NodeId, routing_table::Member>,
        up_since: &UpSince,
    ) {
        for (id, member) in members {
            if id == self.me || member.state != MemberState::Up {
                continue;
            }
            let link_silent = self
                .links
                .existing(id)
                .map(|l| l.silent_for().unwrap_or(Duration::MAX))
                .unwrap_or(Duration::MAX);
            // A node that just came back is up in the table (its resync reached us over its
            // own link) before our link to it has redialled out of its backoff; its silence
            // counts from when we saw this incarnation up, or it would be marked down again
            // at once and its first sessions purged.
            let silent = link_silent.min(up_since.up_for(id));
            if silent >= self.config.failure_timeout {
                tracing::warn!(
                    node = id,
                    silent_ms = silent.as_millis() as u64,
                    "cluster: node stopped answering; purging its routes"
                );
                match self.write(ClusterCommand::NodeDown { node: id }).await {
                    Ok(_) => crate::metrics::METRICS
                        .cluster_members_marked_down
                        .with_label_values(&[&id.to_string()])
                        .inc(),
                    Err(e) => {
                        tracing::warn!(node = id, error = %e, "cluster: could not mark node down")
                    }
                }
            }
        }
    }
}

impl Cluster {
    /// What `switchboard cluster status` shows.
    pub fn status(&self) -> serde_json::Value {
        // Read everything else before borrowing the metrics: a second borrow of the same
        // watch channel while openraft waits to publish would deadlock this thread.
        let voters = self.voters();
        let members = self.member_states();
        let shards = self.shards.status();
        let links: BTreeMap<String, serde_json::Value> = self
            .links
            .all()
            .into_iter()
            .map(|(id, l)| {
                (
                    id.to_string(),
                    serde_json::json!({
                        "connected": l.is_connected(),
                        "silent_ms": l.silent_for().map(|d| d.as_millis() as u64),
                        "dropped": l.dropped(),
                    }),
                )
            })
            .collect();
        let m = self.raft.metrics().borrow().clone();
        serde_json::json!({
            "node_id": self.me,
            "incarnation": self.incarnation,
            "state": format!("{:?}", m.state),
            "leader": m.current_leader,
            "term": m.current_term,
            "last_log_index": m.last_log_index,
            "last_applied": m.last_applied.map(|l| l.index),
            "voters": voters,
            "members": members
                .iter()
                .map(|(id, s)| (id.to_string(), format!("{s:?}").to_lowercase()))
                .collect::<BTreeMap<_, _>>(),
            "links": links,
            "shard_count": self.shards.count(),
            "shards": shards,
        })
    }

    /// The node is stopping (SIGTERM): mark it down in one committed entry, so the others
    /// purge its routes now instead of after the failure timeout, and tell its users'
    /// contacts at once. It stays a voter: a restart marks it up again.
    pub async fn depart(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        match self.write(ClusterCommand::NodeDown { node: self.me }).await {
            Ok(_) => tracing::info!("cluster: marked this node down before stopping"),
            Err(e) => {
                tracing::warn!(error = %e, "cluster: could not mark this node down; the others will after the failure timeout")
            }
        }
    }

    /// Copy Raft's and the links' state into the metrics (at scrape time).
    pub fn export_metrics(&self, m: &crate::metrics::Metrics) {
        static LAST_TERM: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let metrics = self.raft.metrics();
        let r = metrics.borrow();
        let last = LAST_TERM.swap(r.current_term, std::sync::atomic::Ordering::Relaxed);
        if r.current_term > last {
            m.raft_elections.inc_by(r.current_term - last);
        }
        m.raft_term.set(r.current_term as i64);
        m.raft_leader.set(r.current_leader.unwrap_or(0) as i64);
        m.raft_is_leader
            .set(i64::from(r.current_leader == Some(self.me)));
        let last_log = r.last_log_index.unwrap_or(0) as i64;
        let applied = r.last_applied.map(|l| l.index).unwrap_or(0) as i64;
        m.raft_last_log_index.set(last_log);
        m.raft_applied_index.set(applied);
        m.raft_apply_lag.set((last_log - applied).max(0));
        m.raft_voters
            .set(r.membership_config.membership().voter_ids().count() as i64);
        drop(r);
        let shards = self.shards.status();
        let led = shards.iter().filter(|s| s.leader == Some(self.me)).count() as i64;
        m.shard_replicas.with_label_values(&["leader"]).set(led);
        m.shard_replicas
            .with_label_values(&["follower"])
            .set(shards.len() as i64 - led);
        let states = self.member_states();
        for (label, state) in [("up", MemberState::Up), ("down", MemberState::Down)] {
            m.cluster_members
                .with_label_values(&[label])
                .set(states.values().filter(|s| **s == state).count() as i64);
        }
        for (id, link) in self.links.all() {
            let peer = id.to_string();
            m.nodelink_connected
                .with_label_values(&[&peer])
                .set(i64::from(link.is_connected()));
            m.nodelink_dropped
                .with_label_values(&[&peer])
                .set(link.dropped() as i64);
            m.nodelink_queue
                .with_label_values(&[&peer])
                .set(link.queued() as i64);
        }
    }

    /// Why this node should not get traffic yet (empty: ready).
    pub fn not_ready(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.raft.metrics().borrow().current_leader.is_none() {
            problems.push("no cluster leader known".to_string());
        }
        if !self.is_up() {
            problems.push("this node is not marked up in the cluster yet".to_string());
        }
        problems
    }

    /// Take `node` out of the voters and purge its routes (through the leader).
    pub async fn leave(&self, node: NodeId) -> Result<(), WriteError> {
        let Some((leader, addr)) = self.leader() else {
            return Err(WriteError::NoLeader);
        };
        if leader == self.me {
            return self.remove_member(node).await;
        }
        match self
            .links
            .peer(leader, &addr)
            .request(Request::Leave { node }, DRAIN_TIMEOUT + WRITE_TIMEOUT * 2)
            .await
        {
            Ok(Reply::Done(r)) => r.map_err(WriteError::Failed),
            Ok(_) => Err(WriteError::Failed("unexpected reply".into())),
            Err(e) => Err(WriteError::Failed(e.to_string())),
        }
    }
}

/// Followers learn the commit index with the next AppendEntries; send it now, so the other
/// nodes apply a bind (and route to it) within a round trip rather than a heartbeat.
pub(crate) async fn announce_commit(raft: &Raft) {
    let _ = raft.trigger().heartbeat().await;
}
