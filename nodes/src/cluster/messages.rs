//! What travels on a NodeLink: the handshake, requests with their replies (Raft RPCs,
//! forwarded writes, IM operations on the leader of a user's shard) and one-way pushes (stanzas for a
//! session on the peer, operations on a user's sessions there). Stanzas travel as XML text.

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use proto::jid::Jid;
use serde::{Deserialize, Serialize};

use super::routing_table::{ClusterCommand, ClusterResponse, NodeId};
use super::shards::{ShardId, ShardStatus, ShardTypes};
use super::types::ClusterTypes;

#[derive(Debug, Serialize, Deserialize)]
pub enum Frame {
    /// Dialer → acceptor: who I am and a fresh nonce.
    Hello {
        node: NodeId,
        nonce: String,
    },
    /// Acceptor → dialer: who I am and my nonce; no proof yet, so that a dialer without the
    /// secret learns nothing it could replay or test guesses against.
    Challenge {
        node: NodeId,
        nonce: String,
    },
    /// Dialer → acceptor: proof that the dialer holds the cluster secret.
    Proof {
        proof: String,
    },
    /// Acceptor → dialer, only once the dialer's proof checked out: the acceptor's proof.
    /// Every frame after this one is sealed (see `link.rs`).
    Accepted {
        proof: String,
    },
    Request {
        id: u64,
        body: Request,
    },
    Reply {
        id: u64,
        body: Reply,
    },
    Push(Push),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    AppendEntries(AppendEntriesRequest<ClusterTypes>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<ClusterTypes>),
    /// A routing-table write from a node that is not the leader.
    Write(ClusterCommand),
    /// Add `node` (NodeLink address `addr`) to the cluster as a voter.
    Join {
        node: NodeId,
        addr: String,
    },
    /// Remove `node` from the cluster.
    Leave {
        node: NodeId,
    },
    /// An IM operation for a user whose shard the peer leads.
    Im(ImRequest),
    /// A Raft RPC of one IM data shard.
    Shard {
        shard: ShardId,
        rpc: ShardRpc,
    },
    /// The shards the peer holds a replica of, as it sees them.
    ShardStatus,
    /// The peer's sessions of accounts in `shard` (of `count`), for a new shard leader.
    ShardSessions {
        shard: ShardId,
        count: u16,
    },
    Ping,
    /// XEP-0198 §5: a client resumes on the requester the session bound here as `jid`;
    /// the answer is the session's state (`None`: no such session, or the token is wrong).
    TakeOverSession {
        jid: Jid,
        token: [u8; 16],
        client_h: u32,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ShardRpc {
    AppendEntries(AppendEntriesRequest<ShardTypes>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<ShardTypes>),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ShardRpcReply {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Write(Result<ClusterResponse, String>),
    Done(Result<(), String>),
    Im(ImReply),
    Shard(ShardRpcReply),
    ShardStatus(Vec<ShardStatus>),
    /// (full JID, available) per session.
    ShardSessions(Vec<(Jid, bool)>),
    Pong,
    TakeOverSession(Option<crate::route::session::HandedOver>),
    /// The answer did not fit in a frame (`cluster.max_frame_bytes`); sent instead of it, so
    /// the requester gets an error at once and the link stays up.
    TooLarge {
        bytes: usize,
    },
}

/// One-way messages, delivered in order per link.
#[derive(Debug, Serialize, Deserialize)]
pub enum Push {
    /// Deliver to the session bound as `to` (a full JID) on the receiving node. The receiver
    /// remembers available presence from other nodes' resources, so that it can send
    /// `unavailable` for them if their node dies.
    Deliver { to: Jid, stanza: String },
    /// Act on a user's sessions on the receiving node.
    User(UserOp),
    /// A one-way IM operation for a user whose shard the receiver leads.
    Im(ImRequest),
    /// The same, passed on by a node that found it no longer leads the shard (passed on
    /// once, never again).
    ImForwarded(ImRequest),
}

/// Operations on the sessions of one account that the node holding them performs.
#[derive(Debug, Serialize, Deserialize)]
pub enum UserOp {
    /// A roster push to every bound resource of `user` except `except`.
    Push {
        user: Jid,
        stanza: String,
        except: Option<Jid>,
    },
    /// Each available resource of `contact` sends its presence to `to`.
    SendPresenceOf { contact: Jid, to: Jid },
    /// Each available resource of `contact` sends unavailable presence to `to`.
    SendUnavailableOf { contact: Jid, to: Jid },
    /// Deliver to every available resource of `user` on the receiving node (which alone
    /// knows at once which of its sessions are available).
    DeliverToAvailable { user: Jid, stanza: String },
    /// `user`'s blocklist or privacy lists changed: sessions fetch them again.
    FiltersChanged { user: Jid },
    /// Disconnect the account's sessions (deleted, or kicked by an operator).
    Kick { user: Jid, reason: String },
    /// Deliver to `user`'s resources on the receiving node that have the module flag `flag`
    /// set and are not in `except` (carbon copies, XEP-0280).
    ToFlagged {
        user: Jid,
        flag: u8,
        except: Vec<Jid>,
        stanza: String,
    },
}

/// An IM operation for the leader of a user's shard (see `im::remote`): the operation's
/// name and its serialised message. One generic form for every operation, so a new one needs
/// no wire variant; nodes before this form spoke one variant per operation, so a cluster
/// cannot mix the two (no rolling upgrade across it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImRequest {
    pub op: String,
    pub payload: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ImReply {
    /// The operation's result, serialised.
    Result(serde_json::Value),
    /// The operation could not run (malformed, unknown, or the shard actor is gone).
    Failed(String),
    /// The receiver does not lead the user's shard; the leader it knows of, if any.
    NotLeader(Option<NodeId>),
}
