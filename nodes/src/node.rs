//! `switchboard run`: open storage, build TLS and SASL, start the router, the c2s listeners
//! on one worker arbiter per core and the admin endpoint; stop cleanly on SIGTERM/SIGINT.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use anyhow::Context as _;
use proto::negotiation::C2sPolicy;
use proto::sasl::{Authenticator, CredentialLookup, DomainAuthenticators, StoredCredentials};
use storage::{AccountStore, Store};
use tokio::sync::{watch, Semaphore};

use crate::admin::{self, AdminServer};
use crate::c2s::{self, C2sContext, C2sListener};
use crate::config::Settings;
use crate::ext::Extensions;
use crate::im::{AttachShards, ImLimits, ImStores, RosterActor, RosterShards};
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

/// How long shutdown waits for connections to say goodbye.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub fn run(settings: Settings) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating data dir {}", settings.data_dir.display()))?;
    let store = Store::open(&settings.data_dir)?;
    let accounts = store.accounts()?;
    let im_stores = ImStores::open(&store)?;
    let secret = store.meta()?.secret("scram-fake-secret", rand::random)?;
    let tls = TlsContext::load(&settings)?;
    let listeners = bind_listeners(&settings)?;
    let s2s_listeners = crate::s2s::bind_listeners(&settings.s2s)?;
    let dialback_secret = store.meta()?.secret("dialback-secret", rand::random)?;
    let admin_path = settings.admin_socket();
    let admin_listener_path = admin_path.clone();

    let system = actix_rt::System::new();
    let admin_store = store.clone();
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
        // The router and the roster shards need each other's addresses: take the router's
        // address before it runs.
        let router_ctx = Context::<Router>::new();
        let router_addr = router_ctx.address();
        let im_arbiter = Arbiter::new();
        let limits = ImLimits {
            max_roster_items: settings.im.max_roster_items,
            max_offline_messages: settings.im.max_offline_messages,
        };
        let mut shard_addrs = Vec::new();
        for _ in 0..settings.im.shards {
            let (router, stores, domains) =
                (router_addr.clone(), im_stores.clone(), domains.clone());
            shard_addrs.push(RosterActor::start_in_arbiter(&im_arbiter.handle(), move |_| {
                RosterActor::new(router, stores, limits, domains)
            }));
        }
        let shards = RosterShards::new(shard_addrs);
        for shard in shards.all() {
            shard.do_send(AttachShards(shards.clone()));
        }
        let router = router_ctx.run(Router::new(
            domains.clone(),
            accounts.clone(),
            settings.c2s.resource_conflict,
            shards.clone(),
        ));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let ext = Arc::new(Extensions::default());
        let s2s = crate::s2s::start(
            &settings,
            dialback_secret,
            router.clone(),
            ext.clone(),
            shutdown_rx.clone(),
            s2s_listeners,
        )?;
        router.do_send(crate::router::messages::AttachS2s(s2s.recipient()));
        let ctx = Arc::new(C2sContext {
            policy: Arc::new(C2sPolicy {
                domains: settings.domains.clone(),
                tls_available: true,
                tls_required: settings.c2s.require_tls,
                max_auth_failures: settings.c2s.max_auth_failures,
            }),
            settings: settings.c2s.clone(),
            auth,
            tls,
            router: router.clone(),
            ext,
            domains,
            im: shards,
            shutdown: shutdown_rx,
            next_session_id: AtomicU64::new(1),
        });

        let admin_listener = admin::bind(&admin_listener_path)
            .with_context(|| format!("admin socket {}", admin_listener_path.display()))?;
        let admin_server = Arc::new(AdminServer {
            users: Arc::new(UserAdmin::new(admin_store, settings.domains.clone())?),
            router,
        });
        actix_rt::spawn(admin_server.serve(admin_listener));

        let limit = Arc::new(Semaphore::new(settings.c2s.max_connections));
        let workers: Vec<Arbiter> = (0..worker_count()).map(|_| Arbiter::new()).collect();
        for worker in &workers {
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
        tracing::info!(domains = ?settings.domains, data_dir = %settings.data_dir.display(), "switchboard running");

        wait_for_signal().await?;
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
        im_arbiter.stop();
        Ok(())
    });
    let _ = std::fs::remove_file(&admin_path);
    store.flush()?;
    tracing::info!("storage flushed; bye");
    result
}

fn worker_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn bind_listeners(settings: &Settings) -> anyhow::Result<Vec<C2sListener>> {
    let mut out = vec![C2sListener::bind(&settings.c2s.listen, false)
        .with_context(|| format!("binding c2s.listen {}", settings.c2s.listen))?];
    if !settings.c2s.tls_listen.is_empty() {
        out.push(
            C2sListener::bind(&settings.c2s.tls_listen, true)
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
