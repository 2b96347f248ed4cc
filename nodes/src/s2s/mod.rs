//! Server-to-server federation: the manager of outbound links, the inbound listeners, peer
//! discovery and certificate identity checks. The protocol itself (negotiation, dialback
//! keys, `jabber:server` translation) is `proto::s2s`.
//!
//! A stanza for a remote domain goes Router → [`S2sManager`] (`SendRemote`) → the outbound
//! link task for (local domain, remote domain) → socket. Stanzas read on an inbound stream
//! are checked against the domains authenticated on it and enter the Router as `RouteStanza`.
//!
//! Our domains here are the served domains and the components' (`conference.<domain>`): a
//! room's stanza to a remote occupant leaves on a link whose local domain is the service's.

pub mod dns;
pub mod identity;
mod inbound;
mod io;
pub mod limits;
pub mod manager;
pub mod messages;
mod outbound;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use anyhow::Context as _;
use hickory_resolver::TokioResolver;
use proto::s2s::S2sPolicy;
use proto::stream::Limits;
use tokio::sync::watch;
use tokio_rustls::rustls::{self, ClientConfig, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{S2sSettings, Settings};
use crate::listener::Listener;
use crate::router::Router;
pub use manager::S2sManager;

/// ALPN protocol id for direct TLS s2s (XEP-0368).
const ALPN_S2S: &[u8] = b"xmpp-server";

/// What every s2s task shares.
pub struct S2sShared {
    pub settings: S2sSettings,
    pub policy: Arc<S2sPolicy>,
    pub identity: identity::Identity,
    /// Inbound STARTTLS.
    pub acceptor: TlsAcceptor,
    /// Inbound direct TLS (ALPN `xmpp-server`).
    pub direct_acceptor: TlsAcceptor,
    /// Outbound STARTTLS (we present our certificate, for SASL EXTERNAL).
    pub connector: TlsConnector,
    /// Outbound direct TLS (ALPN `xmpp-server`).
    pub direct_connector: TlsConnector,
    pub router: Addr<Router>,
    /// Answers IQs from remote entities to our domains (ping, disco, version).
    pub modules: Arc<crate::modules::Registry>,
    /// Component domains among `policy.domains` (the group chat services): what reaches
    /// them goes to the Router, which hands it to the component, IQs to their domain too.
    pub components: Vec<String>,
    pub resolver: Option<TokioResolver>,
    pub shutdown: watch::Receiver<bool>,
    /// Remote domains whose outbound link is full: their inbound streams are not read.
    pub backpressure: Arc<limits::Backpressure>,
    /// What all outbound link queues hold together.
    pub queue_budget: Arc<limits::QueueBudget>,
    /// Open inbound connections, in total and per source address.
    pub inbound_connections: Arc<crate::admission::ConnectionLimiter>,
    /// Refused inbound connections log at most once per interval and limit (total, per
    /// address).
    pub refused_log: [crate::log_throttle::LogThrottle; 2],
}

impl S2sShared {
    fn limits(&self) -> Limits {
        Limits {
            max_stanza_bytes: self.settings.max_stanza_bytes,
            ..Limits::default()
        }
    }
}

/// The bound s2s listeners: (socket, direct TLS).
pub fn bind_listeners(settings: &S2sSettings) -> anyhow::Result<Vec<Listener>> {
    let mut out = Vec::new();
    for (addr, direct_tls, key) in [
        (&settings.listen, false, "s2s.listen"),
        (&settings.tls_listen, true, "s2s.tls_listen"),
    ] {
        if !addr.is_empty() {
            out.push(
                Listener::bind(addr, direct_tls)
                    .with_context(|| format!("binding {key} {addr}"))?,
            );
        }
    }
    Ok(out)
}

/// Build the shared state, start the manager and the accept loops (on the current
/// arbiter). Call inside the actix system.
pub fn start(
    settings: &Settings,
    components: &[String],
    secret: [u8; 32],
    router: Addr<Router>,
    modules: Arc<crate::modules::Registry>,
    shutdown: watch::Receiver<bool>,
    listeners: Vec<Listener>,
) -> anyhow::Result<Addr<S2sManager>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (certs, key) = crate::tls::certificate(settings)?;
    let identity = identity::Identity::load(&settings.s2s.ca_file, provider.clone())?;

    let server = |alpn: bool| -> anyhow::Result<TlsAcceptor> {
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(Arc::new(identity::AnyClientCert(provider.clone())))
            .with_single_cert(certs.clone(), key.clone_key())?;
        if alpn {
            config.alpn_protocols = vec![ALPN_S2S.to_vec()];
        }
        Ok(TlsAcceptor::from(Arc::new(config)))
    };
    let client = |alpn: bool| -> anyhow::Result<TlsConnector> {
        let mut config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(identity::AnyServerCert(provider.clone())))
            .with_client_auth_cert(certs.clone(), key.clone_key())?;
        if alpn {
            config.alpn_protocols = vec![ALPN_S2S.to_vec()];
        }
        Ok(TlsConnector::from(Arc::new(config)))
    };
    // A configured certificate is meant to be verified by peers: say which of our s2s
    // domains it leaves out (a generated self-signed one verifies nowhere; dialback it is).
    let domains: Vec<String> = settings.domains.iter().chain(components).cloned().collect();
    if settings.tls.cert.is_some() && settings.s2s.sasl_external {
        let missing = identity::unnamed_domains(&certs, &domains);
        if !missing.is_empty() {
            tracing::warn!(
                ?missing,
                "the certificate in tls.cert does not name these s2s domains: their links \
                 cannot use SASL EXTERNAL (peers requiring verified certificates refuse \
                 them); add them to the certificate's subject alternative names"
            );
        }
    }
    let resolver = match dns::resolver(&settings.s2s.nameserver) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(error = %e, "no DNS resolver: s2s uses static routes and port 5269 only");
            None
        }
    };
    let shared = Arc::new(S2sShared {
        settings: settings.s2s.clone(),
        policy: Arc::new(S2sPolicy {
            // A component's domain (`conference.<domain>`) federates like a served one:
            // peers open streams to it and it is the `from` of the streams carrying its
            // stanzas, each authenticated on its own (dialback keys name it; SASL EXTERNAL
            // needs it in our certificate).
            domains,
            tls_required: settings.s2s.require_tls,
            dialback: settings.s2s.dialback,
            sasl_external: settings.s2s.sasl_external,
            secret,
            max_pending_dialback: settings.s2s.max_pending_dialback,
        }),
        identity,
        acceptor: server(false)?,
        direct_acceptor: server(true)?,
        connector: client(false)?,
        direct_connector: client(true)?,
        router,
        modules,
        components: components.to_vec(),
        resolver,
        shutdown,
        backpressure: Arc::new(limits::Backpressure::default()),
        queue_budget: Arc::new(limits::QueueBudget::new(settings.s2s.max_total_queue_bytes)),
        inbound_connections: Arc::new(crate::admission::ConnectionLimiter::new(
            settings.s2s.max_inbound_connections,
            settings.s2s.max_inbound_connections_per_address,
        )),
        refused_log: [
            crate::log_throttle::LogThrottle::new(Duration::from_secs(10)),
            crate::log_throttle::LogThrottle::new(Duration::from_secs(10)),
        ],
    });
    let manager = S2sManager::new(shared.clone()).start();
    for l in listeners {
        tracing::info!(
            addr = %l.socket.local_addr()?,
            direct_tls = l.direct_tls,
            "s2s listening"
        );
        actix_rt::spawn(accept_loop(l, shared.clone(), manager.clone()));
    }
    Ok(manager)
}

async fn accept_loop(listener: Listener, shared: Arc<S2sShared>, manager: Addr<S2sManager>) {
    let direct_tls = listener.direct_tls;
    let listener = match tokio::net::TcpListener::from_std(listener.socket) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register s2s listener");
            return;
        }
    };
    let mut shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((tcp, peer)) => match shared.inbound_connections.try_acquire(Some(peer.ip())) {
                Ok(permit) => {
                    actix_rt::spawn(inbound::serve(
                        tcp,
                        shared.clone(),
                        manager.clone(),
                        direct_tls,
                        permit,
                    ));
                }
                Err(refusal) => {
                    limits::count(match refusal {
                        crate::admission::ConnectionRefusal::Total => "inbound_connections",
                        crate::admission::ConnectionRefusal::PerSource => {
                            "inbound_connections_per_address"
                        }
                    });
                    let (open, from_peer) = shared.inbound_connections.open(Some(peer.ip()));
                    let throttle = &shared.refused_log[refusal as usize];
                    if let Some(suppressed) = throttle.tick() {
                        tracing::warn!(
                            %peer,
                            open,
                            from_peer,
                            max = shared.settings.max_inbound_connections,
                            max_per_address = shared.settings.max_inbound_connections_per_address,
                            suppressed,
                            "s2s inbound connection refused: {}",
                            match refusal {
                                crate::admission::ConnectionRefusal::Total =>
                                    "s2s.max_inbound_connections reached",
                                crate::admission::ConnectionRefusal::PerSource =>
                                    "s2s.max_inbound_connections_per_address reached for this address",
                            }
                        );
                    }
                    actix_rt::spawn(inbound::refuse(tcp, shared.clone(), direct_tls, refusal));
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "s2s accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
