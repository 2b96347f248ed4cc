//! The local admin endpoint: a Unix socket in the data directory (owner-only permissions),
//! so the CLI can manage a running node (sled admits one process at a time).

pub mod client;
pub mod protocol;
pub mod roster_import;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix::Addr;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::cluster::Cluster;
use crate::im::messages::{ArchivePurge, DeleteAccountData};
use crate::router::messages::{KickAccount, ListRoutes, ListSessions};
use crate::router::Router;
use crate::users::UserAdmin;
use protocol::{AdminRequest, AdminResponse};

/// Largest request line accepted (a password change is a few hundred bytes).
const MAX_REQUEST: usize = 64 * 1024;

pub struct AdminServer {
    pub users: Arc<UserAdmin>,
    pub router: Addr<Router>,
    pub cluster: Option<Cluster>,
    /// The IM shards (account data is deleted through them in a cluster).
    pub im: crate::im::AccountShards,
    /// The group chat services' domains (`[modules.muc]`; empty when it is disabled).
    pub muc_domains: Vec<String>,
    pub started: std::time::Instant,
}

/// The private directories the socket is bound in start with this.
const BIND_DIR_PREFIX: &str = ".admin-bind-";

/// Bind the socket, replacing a stale one left by a crash. It appears at `path` with its
/// final mode (0600): it is bound inside a fresh 0700 directory next to `path`, narrowed
/// there, then renamed into place, so there is no moment in which another user could
/// connect, whatever the umask and the data directory's mode.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by a running node", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let parent = path.parent().unwrap_or(Path::new("."));
    // Leftovers of a node killed between bind and rename.
    if let Ok(entries) = std::fs::read_dir(parent) {
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(BIND_DIR_PREFIX)
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let private = parent.join(format!("{BIND_DIR_PREFIX}{}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(crate::data_dir::DIR_MODE)
        .create(&private)?;
    let staged = private.join("admin.sock");
    let bound = (|| {
        let listener = UnixListener::bind(&staged)?;
        std::fs::set_permissions(
            &staged,
            std::fs::Permissions::from_mode(crate::data_dir::FILE_MODE),
        )?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    bound
}

impl AdminServer {
    pub async fn serve(self: Arc<Self>, listener: UnixListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let me = self.clone();
                    actix_rt::spawn(async move { me.connection(stream).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn connection(&self, stream: UnixStream) {
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read.take(MAX_REQUEST as u64 * 16)).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let response = if line.len() > MAX_REQUEST {
                AdminResponse::err("request too large")
            } else {
                match serde_json::from_str::<AdminRequest>(&line) {
                    Ok(req) => self.handle(req).await,
                    Err(e) => AdminResponse::err(format!("bad request: {e}")),
                }
            };
            let mut out =
                serde_json::to_vec(&response).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
            out.push(b'\n');
            if write.write_all(&out).await.is_err() {
                return;
            }
        }
    }

    /// Answer one request (from the socket or the HTTP API).
    pub async fn handle(&self, req: AdminRequest) -> AdminResponse {
        let users = &self.users;
        if let Some(cluster) = &self.cluster {
            if let Some(r) = self.replicated(cluster, &req).await {
                return r;
            }
        }
        match req {
            AdminRequest::UserAdd { jid, password } => match users.add(&jid, &password) {
                Ok(j) => AdminResponse::ok(Some(j.to_string().into())),
                Err(e) => AdminResponse::err(e),
            },
            AdminRequest::UserPasswd { jid, password } => match users.passwd(&jid, &password) {
                Ok(j) => AdminResponse::ok(Some(j.to_string().into())),
                Err(e) => AdminResponse::err(e),
            },
            AdminRequest::UserDel { jid } => {
                // Disconnect first, so no session writes to the account while it goes.
                if let Ok(j) = users.account_jid(&jid) {
                    self.router.do_send(KickAccount {
                        bare: j.clone(),
                        reason: "account deleted".into(),
                    });
                    // Through the account's shard: what lives outside this node's trees
                    // (an archive in PostgreSQL) goes too.
                    match self.im.ask(&j, DeleteAccountData { user: j.clone() }).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return AdminResponse::err(e),
                        Err(e) => return AdminResponse::err(e),
                    }
                }
                match users.del(&jid) {
                    Ok(j) => AdminResponse::ok(Some(j.to_string().into())),
                    Err(e) => AdminResponse::err(e),
                }
            }
            AdminRequest::UserImport {
                users: list,
                shared_salt,
            } => {
                // Seconds of key derivation per batch: not on the thread the Router runs on.
                let users = users.clone();
                match tokio::task::spawn_blocking(move || users.import(&list, shared_salt)).await {
                    Ok(Ok(o)) => AdminResponse::ok(serde_json::to_value(o).ok()),
                    Ok(Err(e)) => AdminResponse::err(e),
                    Err(e) => AdminResponse::err(e),
                }
            }
            AdminRequest::RosterImport { items } => {
                let imported = match roster_import::prepare(users, &items) {
                    Ok(by_owner) => roster_import::import(&self.im, by_owner).await,
                    Err(e) => Err(e),
                };
                match imported {
                    Ok(o) => AdminResponse::ok(serde_json::to_value(o).ok()),
                    Err(e) => AdminResponse::err(e),
                }
            }
            AdminRequest::UserList => match users.list() {
                Ok(l) => AdminResponse::ok(Some(l.into())),
                Err(e) => AdminResponse::err(e),
            },
            AdminRequest::SessionList => match self.router.send(ListSessions).await {
                Ok(l) => AdminResponse::ok(serde_json::to_value(l).ok()),
                Err(e) => AdminResponse::err(e),
            },
            AdminRequest::MamPurge { jid } => match users.account_jid(&jid) {
                Ok(j) => match self.im.ask(&j, ArchivePurge { user: j.clone() }).await {
                    Ok(Ok(n)) => AdminResponse::ok(Some(n.into())),
                    Ok(Err(e)) => AdminResponse::err(e),
                    Err(e) => AdminResponse::err(e),
                },
                Err(e) => AdminResponse::err(e),
            },
            AdminRequest::MucList => {
                let mut out = Vec::new();
                for domain in &self.muc_domains {
                    let probes = crate::muc::probes(&self.im, domain);
                    for (jid, entry) in crate::muc::rooms(self.im.clone(), probes).await {
                        out.push(serde_json::json!({
                            "jid": jid,
                            "name": entry.name,
                            "public": entry.public,
                        }));
                    }
                }
                AdminResponse::ok(Some(out.into()))
            }
            AdminRequest::MucDestroy { room, reason } => {
                let room = match proto::jid::Jid::parse(&room) {
                    Ok(j)
                        if j.local().is_some()
                            && self.muc_domains.iter().any(|d| d == j.domain()) =>
                    {
                        j.to_bare()
                    }
                    _ => {
                        return AdminResponse::err(format!(
                            "{room}: not a room of this node's group chat services"
                        ))
                    }
                };
                let destroy = crate::im::muc::MucDestroy {
                    room: room.clone(),
                    reason,
                };
                match self.im.ask(&room, destroy).await {
                    Ok(Ok(true)) => AdminResponse::ok(Some(room.to_string().into())),
                    Ok(Ok(false)) => AdminResponse::err(format!("{room}: no such room")),
                    Ok(Err(e)) => AdminResponse::err(e),
                    Err(e) => AdminResponse::err(e),
                }
            }
            AdminRequest::SessionKick { jid } => match users.account_jid(&jid) {
                Ok(bare) => {
                    self.router.do_send(KickAccount {
                        bare: bare.clone(),
                        reason: "disconnected by an administrator".into(),
                    });
                    AdminResponse::ok(Some(bare.to_string().into()))
                }
                Err(e) => AdminResponse::err(e),
            },
            AdminRequest::Stats => {
                let sessions = self.router.send(ListSessions).await.map(|l| l.len());
                let routes = self.router.send(ListRoutes).await.map(|l| l.len());
                let m = &crate::metrics::METRICS;
                let connections: i64 = ["connected", "authenticated", "bound"]
                    .iter()
                    .flat_map(|s| {
                        ["none", "starttls", "direct"]
                            .iter()
                            .map(move |t| m.c2s_connections.with_label_values(&[s, t]).get())
                    })
                    .sum();
                AdminResponse::ok(Some(serde_json::json!({
                    "sessions": sessions.unwrap_or(0),
                    "connections": connections,
                    "routes": routes.unwrap_or(0),
                    "uptime_secs": self.started.elapsed().as_secs(),
                    "clustered": self.cluster.is_some(),
                })))
            }
            AdminRequest::ClusterStatus => match &self.cluster {
                Some(c) => AdminResponse::ok(Some(c.status())),
                None => AdminResponse::err("this node is not clustered (cluster.node_id = 0)"),
            },
            AdminRequest::ClusterRoutes => match self.router.send(ListRoutes).await {
                Ok(l) => AdminResponse::ok(serde_json::to_value(l).ok()),
                Err(e) => AdminResponse::err(e),
            },
            AdminRequest::ClusterJoin { seed } => match &self.cluster {
                Some(c) if crate::config::parse_member(&seed).is_some() => {
                    let (c, seed2) = (c.clone(), seed.clone());
                    // The links live on the cluster arbiter's runtime; the join loop only
                    // needs some tokio runtime, and this one is alive as long as the node.
                    actix_rt::spawn(async move { c.join(vec![seed2]) });
                    AdminResponse::ok(Some(format!("asking {seed} to admit this node").into()))
                }
                Some(_) => AdminResponse::err(format!("{seed:?} is not ID@HOST:PORT")),
                None => AdminResponse::err("this node is not clustered (cluster.node_id = 0)"),
            },
            AdminRequest::ClusterLeave { node } => match &self.cluster {
                Some(c) => match c.leave(node.unwrap_or(c.me)).await {
                    Ok(()) => AdminResponse::ok(None),
                    Err(e) => AdminResponse::err(e),
                },
                None => AdminResponse::err("this node is not clustered (cluster.node_id = 0)"),
            },
        }
    }
}

impl AdminServer {
    /// Account writes in a cluster go through the log; `None`: not such a request.
    async fn replicated(&self, cluster: &Cluster, req: &AdminRequest) -> Option<AdminResponse> {
        let users = &self.users;
        let jid_reply = |r: Result<proto::jid::Jid, crate::users::UserError>| match r {
            Ok(j) => AdminResponse::ok(Some(j.to_string().into())),
            Err(e) => AdminResponse::err(e),
        };
        Some(match req {
            AdminRequest::UserAdd { jid, password } => {
                jid_reply(users.add_replicated(cluster, jid, password).await)
            }
            AdminRequest::UserPasswd { jid, password } => {
                jid_reply(users.passwd_replicated(cluster, jid, password).await)
            }
            AdminRequest::UserDel { jid } => {
                if let Ok(j) = users.account_jid(jid) {
                    self.router.do_send(KickAccount {
                        bare: j,
                        reason: "account deleted".into(),
                    });
                }
                // The data goes first (through the account's shard): a failure in between
                // leaves an account that can be deleted again, not data nobody owns.
                if let Ok(j) = users.account_jid(jid) {
                    let wiped = self.im.ask(&j, DeleteAccountData { user: j.clone() }).await;
                    match wiped {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Some(AdminResponse::err(e)),
                        Err(e) => return Some(AdminResponse::err(e)),
                    }
                }
                jid_reply(users.del_replicated(cluster, jid).await)
            }
            AdminRequest::UserImport {
                users: list,
                shared_salt,
            } => match users.import_replicated(cluster, list, *shared_salt).await {
                Ok(o) => AdminResponse::ok(serde_json::to_value(o).ok()),
                Err(e) => AdminResponse::err(e),
            },
            _ => return None,
        })
    }
}

/// CLI side: send one request to a running node. `Ok(None)`: no node answers at `path`.
pub fn request(path: &PathBuf, req: &AdminRequest) -> anyhow::Result<Option<AdminResponse>> {
    use std::io::{BufRead, Write};
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(path) else {
        return Ok(None);
    };
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reply = String::new();
    std::io::BufReader::new(stream).read_line(&mut reply)?;
    Ok(Some(serde_json::from_str(&reply)?))
}
