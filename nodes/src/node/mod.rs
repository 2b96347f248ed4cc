//! `switchboard run`: open storage, build TLS and SASL, start the router, the c2s listeners
//! on one worker arbiter per core and the admin endpoint; stop cleanly on SIGTERM/SIGINT, or
//! when the caller's future completes ([`run_until`], used by the in-process tests). In a
//! cluster it also wires the NodeLinks to this node's actors (`link_service`) and refills
//! the soft state of shards this node comes to lead (`shard_handover`). The group chat
//! sweep (`muc_sweep`) takes occupants whose sessions are gone out of their rooms.

mod link_service;
mod muc_sweep;
mod shard_handover;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use anyhow::Context as _;
use proto::negotiation::C2sPolicy;
use proto::sasl::{Authenticator, CredentialLookup, DomainAuthenticators, StoredCredentials};
use storage::{AccountStore, Store, UserData};
use tokio::sync::{watch, Semaphore};

use crate::admin::{self, AdminServer};
use crate::c2s::{self, C2sContext};
use crate::cluster::{Cluster, ClusterConfig, ClusterService, UpdateSink};
use crate::config::{parse_member, ImLimits, Settings};
use crate::http::HttpEndpoint;
use crate::im::{AccountShard, AccountShards, AttachShards, DataWriter};
use crate::listener::Listener;
use crate::modules::Registry;
use crate::route::to_router::RouterHandle;
use crate::router::messages::{ClusterUpdate, LocalRoutes, Resynced};
use crate::router::Router;
use crate::tls::TlsContext;
use crate::users::UserAdmin;

/// The accounts of one served domain, as the SASL layer sees them.
struct Accounts {
    store: AccountStore,
    domain: String,
}

impl CredentialLookup for Accounts {
    fn credentials(&self, username: &str) -> Option<StoredCredentials> {
        self.store
            .get(&format!("{username}@{}", self.domain))
            .ok()
            .flatten()
    }
}

/// A secret the node's answers depend on: in a cluster derived from `cluster.secret`, so
/// every node has the same one (see `cluster::secrets`); alone, random and kept in the store.
fn node_secret(store: &Store, settings: &Settings, label: &str) -> anyhow::Result<[u8; 32]> {
    if settings.cluster.enabled() {
        return Ok(crate::cluster::secrets::derive(
            &settings.cluster.secret,
            label,
        ));
    }
    Ok(store.meta()?.secret(label, rand::random)?)
}

/// How long shutdown waits for connections to say goodbye.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Where a running node listens: with port 0 in the settings, the ports the OS chose.
#[derive(Debug, Clone)]
pub struct Bound {
    /// `c2s.listen` (STARTTLS).
    pub c2s: std::net::SocketAddr,
    /// `c2s.tls_listen` (direct TLS, XEP-0368), if configured.
    pub c2s_tls: Option<std::net::SocketAddr>,
    /// `http.listen`, if configured.
    pub http: Option<std::net::SocketAddr>,
}

/// `switchboard run`: serve until SIGTERM or SIGINT.
pub fn run(settings: Settings) -> anyhow::Result<()> {
    run_until(settings, wait_for_signal(), |_| {})
}

/// Run the node until `stop` completes, then shut down as on SIGTERM (every stream closed
/// with `<system-shutdown/>`, storage flushed). `on_bound` is called once every listener
/// accepts connections, with their addresses. The in-process tests (`nodes/tests/harness`)
/// run a node on port 0 this way, on a thread of their own: the node builds its own actix
/// system and blocks the calling thread until it has stopped.
pub fn run_until<F>(settings: Settings, stop: F, on_bound: impl FnOnce(Bound)) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    crate::data_dir::prepare(&settings.data_dir)?;
    let store = Store::open(&settings.data_dir)?;
    let accounts = store.accounts()?;
    let user_data = store.user_data()?;
    let secret = node_secret(&store, &settings, crate::cluster::secrets::SCRAM_FAKE)?;
    let tls = TlsContext::load(&settings)?;
    let listeners = bind_listeners(&settings)?;
    let http_listener = if settings.http.listen.is_empty() {
        None
    } else {
        let l = std::net::TcpListener::bind(&settings.http.listen)
            .with_context(|| format!("binding http.listen {}", settings.http.listen))?;
        l.set_nonblocking(true)?;
        Some(l)
    };
    let cluster_listener = if settings.cluster.enabled() {
        let l = std::net::TcpListener::bind(&settings.cluster.listen)
            .with_context(|| format!("binding cluster.listen {}", settings.cluster.listen))?;
        l.set_nonblocking(true)?;
        Some(l)
    } else {
        None
    };
    let s2s_listeners = crate::s2s::bind_listeners(&settings.s2s)?;
    let dialback_secret = node_secret(&store, &settings, crate::cluster::secrets::DIALBACK)?;
    let admin_path = settings.admin_socket();
    let admin_listener_path = admin_path.clone();

    let system = actix_rt::System::new();
    let admin_store = store.clone();
    let cluster_store = store.clone();
    let http_store = store.clone();
    let result: anyhow::Result<()> = system.block_on(async move {
        let domains = Arc::new(settings.domains.clone());
        // The SCRAM username is a localpart, so each served domain gets its own
        // authenticator looking accounts up under that domain.
        let mut auth = DomainAuthenticators::default();
        for domain in &settings.domains {
            let lookup = Arc::new(Accounts {
                store: accounts.clone(),
                domain: domain.clone(),
            });
            auth.insert(domain, Authenticator::new(lookup, secret)?);
        }
        // The router and the account shards need each other's addresses: take the router's
        // address before it runs.
        let router_ctx = Context::<Router>::new();
        let router_addr = router_ctx.address();
        let cluster_arbiter = Arbiter::new();
        let cluster = match &cluster_listener {
            Some(_) => Some(start_cluster(&settings, &cluster_store, &cluster_arbiter, &router_addr).await?),
            None => None,
        };
        let limits = ImLimits::from_settings(&settings.im);
        // One actor (and thread) per shard: the node's own shards without a cluster, one
        // per replicated shard in a cluster (acting while this node leads it).
        let placements: Vec<(UserData, DataWriter)> = match &cluster {
            None => (0..settings.im.shards)
                .map(|_| (user_data.clone(), DataWriter::Local(user_data.clone())))
                .collect(),
            Some(c) => (0..c.shards.count())
                .filter_map(|s| c.shards.data(s).cloned())
                .map(|data| (data, DataWriter::Replicated(c.shards.clone())))
                .collect(),
        };
        let modules = Arc::new(Registry::configure(&settings.modules).map_err(anyhow::Error::msg)?);
        // The archive's backend first: an unreachable PostgreSQL stops the start here.
        if let Some(mam) = crate::modules::mam::get(&modules) {
            let backend = mam.open().map_err(anyhow::Error::msg)?;
            tracing::info!(backend = backend.name(), "message archive open");
        }
        let mut shard_addrs = Vec::new();
        let node = cluster.as_ref().map_or(0, |c| c.me);
        for (data, writer) in placements {
            let router = RouterHandle::new(&router_addr);
            let (domains, modules) = (domains.clone(), modules.clone());
            shard_addrs.push(SyncArbiter::start(1, move || {
                AccountShard::new(
                    router.clone(),
                    data.clone(),
                    writer.clone(),
                    limits,
                    domains.clone(),
                    modules.clone(),
                )
                .with_node(node)
            }));
        }
        let shards = AccountShards::new(shard_addrs, cluster.clone())
            .with_max_iqs_in_flight(settings.im.max_iqs_in_flight);
        for shard in shards.all() {
            shard.do_send(AttachShards(shards.clone()));
        }
        let mut router = Router::new(
            domains.clone(),
            accounts.clone(),
            settings.c2s.resource_conflict,
            shards.clone(),
            cluster.clone(),
            crate::router::OfflineBatch::for_send_queue(settings.c2s.send_queue_max_bytes),
        );
        if let Some(multicast) = crate::modules::multicast::get(&modules) {
            router = router.with_multicast(multicast.settings().clone());
        }
        if let Some(mam) = crate::modules::mam::get(&modules) {
            router = router.with_archiver(crate::router::archiver::Archiver::new(
                node,
                mam.settings(),
            ));
            tokio::spawn(archive_retention(shards.clone()));
        }
        let router = router_ctx.run(router);
        if let (Some(cluster), Some(listener)) = (&cluster, cluster_listener) {
            serve_cluster(cluster, listener, &cluster_arbiter, &router, &shards)?;
        }
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        // XEP-0045: the group chat service of each served domain. Its domain is one of
        // ours for federation too: streams to it are accepted and its stanzas leave with
        // it as the `from` domain (RFC 6120 §13.7, XEP-0220 §2.1).
        let muc_domains: Vec<String> = match crate::modules::muc::get(&modules) {
            Some(muc) => domains
                .iter()
                .map(|served| muc.settings().service_domain(served))
                .collect(),
            None => Vec::new(),
        };
        let s2s = crate::s2s::start(
            &settings,
            &muc_domains,
            dialback_secret,
            router.clone(),
            modules.clone(),
            shutdown_rx.clone(),
            s2s_listeners,
        )?;
        router.do_send(crate::router::messages::AttachS2s(s2s.recipient()));
        // The services run on every node (each node's Router hands them what reaches their
        // domain; the rooms act on their shards' leaders).
        for domain in &muc_domains {
            let service = crate::muc::MucService::new(
                domain.clone(),
                domains.clone(),
                shards.clone(),
                router.clone().recipient(),
            )
            .start();
            router.do_send(crate::router::messages::RegisterComponent {
                domain: domain.clone(),
                handle: service.recipient(),
            });
        }
        if !muc_domains.is_empty() {
            // Occupants whose sessions went without a word (a node killed, a restart).
            muc_sweep::start(
                router.clone(),
                shards.clone(),
                cluster.clone(),
                muc_domains.clone(),
            )
            .await;
        }
        let ctx = Arc::new(C2sContext {
            policy: Arc::new(C2sPolicy {
                domains: settings.domains.clone(),
                tls_available: true,
                tls_required: settings.c2s.require_tls,
                max_auth_failures: settings.c2s.max_auth_failures,
                bound_features: modules.stream_features(),
                nonza_namespaces: modules
                    .nonza_namespaces()
                    .into_iter()
                    .map(String::from)
                    .collect(),
            }),
            settings: settings.c2s.clone(),
            auth,
            tls,
            router: router.clone(),
            modules,
            domains,
            im: shards.clone(),
            shutdown: shutdown_rx,
            next_session_id: AtomicU64::new(1),
            admission: Arc::new(crate::admission::ConnectionLimiter::new(
                settings.c2s.max_unauthenticated_connections,
                settings.c2s.max_unauthenticated_per_address,
            )),
            refused_log: crate::log_throttle::LogThrottle::new(Duration::from_secs(1)),
        });

        let admin_listener = admin::bind(&admin_listener_path)
            .with_context(|| format!("admin socket {}", admin_listener_path.display()))?;
        let admin_server = Arc::new(AdminServer {
            users: Arc::new(UserAdmin::new(admin_store, settings.domains.clone())?),
            router,
            cluster: cluster.clone(),
            im: shards.clone(),
            muc_domains,
            started: std::time::Instant::now(),
        });
        actix_rt::spawn(admin_server.clone().serve(admin_listener));
        let listeners_up = Arc::new(AtomicBool::new(false));
        let mut http_addr = None;
        if let Some(l) = http_listener {
            let addr = l.local_addr()?;
            http_addr = Some(addr);
            let endpoint = Arc::new(HttpEndpoint {
                admin: admin_server.clone(),
                cluster: cluster.clone(),
                store: http_store,
                token: Some(settings.http.token.clone()).filter(|t| !t.is_empty()),
                hosts: crate::http::HostPolicy::new(
                    &settings.http.listen,
                    &settings.http.allowed_hosts,
                ),
                listeners_up: listeners_up.clone(),
            });
            actix_rt::spawn(endpoint.serve(tokio::net::TcpListener::from_std(l)?));
            tracing::info!(%addr, "http: /metrics, /healthz, /readyz and /api listening");
        }

        let limit = Arc::new(Semaphore::new(settings.c2s.max_connections));
        // Sessions run on one worker arbiter per CPU. With a single CPU they share the
        // router's thread: a second thread there would only add a context switch to every
        // stanza (session → router → session).
        let workers: Vec<Arbiter> = match worker_count() {
            1 => Vec::new(),
            n => (0..n).map(|_| Arbiter::new()).collect(),
        };
        let handles: Vec<ArbiterHandle> = if workers.is_empty() {
            vec![Arbiter::current()]
        } else {
            workers.iter().map(|w| w.handle()).collect()
        };
        for worker in &handles {
            for l in &listeners {
                let socket = l.socket.try_clone()?;
                let started = worker.spawn(c2s::accept_loop(
                    socket,
                    l.direct_tls,
                    ctx.clone(),
                    limit.clone(),
                ));
                if !started {
                    anyhow::bail!("worker arbiter is not running");
                }
            }
        }
        for l in &listeners {
            tracing::info!(
                addr = %l.socket.local_addr()?,
                direct_tls = l.direct_tls,
                "c2s listening"
            );
        }
        listeners_up.store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(domains = ?settings.domains, data_dir = %settings.data_dir.display(), "switchboard running");
        let addr_of = |direct_tls: bool| {
            listeners
                .iter()
                .find(|l| l.direct_tls == direct_tls)
                .and_then(|l| l.socket.local_addr().ok())
        };
        on_bound(Bound {
            c2s: addr_of(false).context("the c2s listener has no local address")?,
            c2s_tls: addr_of(true),
            http: http_addr,
        });

        stop.await?;
        if let Some(c) = &cluster {
            // Leave the routing table first: from now on other nodes store messages for
            // our users offline instead of sending them to streams that are closing.
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, c.depart()).await;
        }
        tracing::info!("shutting down: closing every stream with <system-shutdown/>");
        let _ = shutdown_tx.send(true);
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while limit.available_permits() < settings.c2s.max_connections
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for w in &workers {
            w.stop();
        }
        cluster_arbiter.stop();
        Ok(())
    });
    let _ = std::fs::remove_file(&admin_path);
    store.flush()?;
    tracing::info!("storage flushed; bye");
    result
}

/// Start Raft and the NodeLinks on their own arbiter; table changes go to the Router.
async fn start_cluster(
    settings: &Settings,
    store: &Store,
    arbiter: &Arbiter,
    router: &Addr<Router>,
) -> anyhow::Result<Cluster> {
    let c = &settings.cluster;
    let mut members = BTreeMap::new();
    for m in &c.members {
        if let Some((id, addr)) = parse_member(m) {
            members.insert(id, addr);
        }
    }
    let config = ClusterConfig {
        node_id: c.node_id,
        advertise: c.advertise.clone(),
        members,
        seeds: c.seeds.clone(),
        failure_timeout: Duration::from_millis(c.failure_timeout_ms),
        heartbeat_ms: c.heartbeat_ms,
        shards: c.shards,
        replicas: c.replicas,
        shard_snapshot_entries: c.shard_snapshot_entries,
        max_frame_bytes: c.max_frame_bytes,
        max_pending_handshakes: c.max_pending_handshakes,
    };
    let log = store.raft_log()?;
    let store = store.clone();
    let secret = c.secret.clone();
    let router = router.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let started = arbiter.spawn(async move {
        let sink: UpdateSink = Arc::new(move |u| router.do_send(ClusterUpdate(u)));
        let _ = tx.send(Cluster::start(config, &secret, log, store, sink).await);
    });
    if !started {
        anyhow::bail!("cluster arbiter is not running");
    }
    let cluster = rx.await.context("cluster start was abandoned")??;
    tracing::info!(
        node_id = cluster.me,
        incarnation = cluster.incarnation,
        "cluster: raft started"
    );
    Ok(cluster)
}

/// Accept peers' NodeLinks, form or join the cluster, and keep this node's routes and
/// liveness current.
fn serve_cluster(
    cluster: &Cluster,
    listener: std::net::TcpListener,
    arbiter: &Arbiter,
    router: &Addr<Router>,
    shards: &AccountShards,
) -> anyhow::Result<()> {
    let service = Arc::new(ClusterService {
        cluster: cluster.clone(),
        local: link_service::NodeActors {
            router: router.clone(),
            im: shards.clone(),
        },
    });
    let (cluster, router, shards) = (cluster.clone(), router.clone(), shards.clone());
    let addr = listener.local_addr()?;
    let started = arbiter.spawn(async move {
        match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => {
                tokio::spawn(cluster.links.clone().serve(l, service));
                tokio::spawn(shard_handover::refill_new_leaders(
                    cluster.clone(),
                    shards,
                    router.clone(),
                ));
            }
            Err(e) => {
                tracing::error!(error = %e, "cluster: cannot listen");
                return;
            }
        }
        if let Err(e) = cluster.bootstrap().await {
            tracing::error!(error = %e, "cluster: bootstrap failed");
        }
        cluster
            .watch(
                {
                    let router = router.clone();
                    move || {
                        let router = router.clone();
                        async move { router.send(LocalRoutes).await.unwrap_or_default() }
                    }
                },
                move |sessions| router.do_send(Resynced(sessions)),
            )
            .await;
    });
    if !started {
        anyhow::bail!("cluster arbiter is not running");
    }
    tracing::info!(%addr, "cluster: NodeLink listening");
    Ok(())
}

fn worker_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn bind_listeners(settings: &Settings) -> anyhow::Result<Vec<Listener>> {
    let mut out = vec![Listener::bind(&settings.c2s.listen, false)
        .with_context(|| format!("binding c2s.listen {}", settings.c2s.listen))?];
    if !settings.c2s.tls_listen.is_empty() {
        out.push(
            Listener::bind(&settings.c2s.tls_listen, true)
                .with_context(|| format!("binding c2s.tls_listen {}", settings.c2s.tls_listen))?,
        );
    }
    Ok(out)
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// The message archive's retention (`modules.mam.retention_days`,
/// `max_messages_per_account`): every few seconds, one bounded step on each shard this node
/// serves.
async fn archive_retention(shards: AccountShards) {
    const TICK: std::time::Duration = std::time::Duration::from_secs(5);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let clustered = shards.clustered();
        for (i, shard) in shards.serving_actors() {
            // Without a cluster every local shard shares one store: one walks it by age.
            let by_age = clustered || i == 0;
            shard.do_send(crate::im::messages::ArchiveRetention { by_age });
        }
    }
}
