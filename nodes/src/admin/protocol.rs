//! The admin endpoint's wire format: one JSON request per line, one JSON response per line.

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AdminRequest {
    UserAdd {
        jid: String,
        password: String,
    },
    UserDel {
        jid: String,
    },
    UserPasswd {
        jid: String,
        password: String,
    },
    UserList,
    /// Create many accounts at once: `(jid, password)` pairs. Existing accounts are left
    /// alone and counted.
    UserImport {
        users: Vec<(String, String)>,
        /// Load-test populations only: accounts with the same password share one salt, so
        /// their keys are derived once (and equal passwords are visible as equal records).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        shared_salt: bool,
    },
    /// Give accounts roster items without the subscription handshake.
    RosterImport {
        items: Vec<super::roster_import::RosterImportItem>,
    },
    SessionList,
    /// Disconnect every session of an account.
    SessionKick {
        jid: String,
    },
    /// Counts: sessions, connections, routes, uptime.
    Stats,
    /// Raft state, members and links of this node's cluster.
    ClusterStatus,
    /// Every route this node knows (local and remote), sorted: nodes compare these.
    ClusterRoutes,
    /// Ask a running member (`ID@HOST:PORT`) to admit this node.
    ClusterJoin {
        seed: String,
    },
    /// Take `node` (this node when absent) out of the cluster.
    ClusterLeave {
        node: Option<u64>,
    },
    /// Empty an account's message archive (XEP-0313); the result is how many went.
    MamPurge {
        jid: String,
    },
    /// Every group chat room (XEP-0045) of the node's services: JID, name, public.
    MucList,
    /// Destroy a room; its occupants are told (XEP-0045 §10.9), with the reason.
    MucDestroy {
        room: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AdminResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

impl AdminResponse {
    pub fn ok(result: Option<serde_json::Value>) -> Self {
        AdminResponse {
            ok: true,
            error: None,
            result,
        }
    }
    pub fn err(e: impl std::fmt::Display) -> Self {
        AdminResponse {
            ok: false,
            error: Some(e.to_string()),
            result: None,
        }
    }
}
