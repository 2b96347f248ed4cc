//! Client-to-server: the accept loop (on `listener::Listener`s), the per-connection I/O task, and the SessionActor.

pub mod connection;
pub mod messages;
pub mod session;
pub mod stream_management;
mod transport;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

pub use connection::C2sContext;

use crate::admission::ConnectionRefusal;

/// Accept connections on `listener` on the current arbiter until shutdown. Each connection
/// holds a permit of `limit` for its lifetime.
pub async fn accept_loop(
    listener: std::net::TcpListener,
    direct_tls: bool,
    ctx: Arc<C2sContext>,
    limit: Arc<Semaphore>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register c2s listener");
            return;
        }
    };
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = shutdown.changed() => return,
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((tcp, peer)) => match ctx.admission.try_acquire(Some(peer.ip())) {
                Ok(unauthenticated) => {
                    actix_rt::spawn(connection::serve(
                        tcp,
                        ctx.clone(),
                        direct_tls,
                        permit,
                        unauthenticated,
                    ));
                }
                Err(refusal) => {
                    refused(peer.ip(), refusal, &ctx);
                    actix_rt::spawn(connection::refuse(tcp, ctx.clone(), direct_tls, refusal));
                }
            },
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Count and log a connection refused at accept by the unauthenticated-connection caps.
fn refused(peer: std::net::IpAddr, refusal: ConnectionRefusal, ctx: &C2sContext) {
    let (label, key, cap) = match refusal {
        ConnectionRefusal::Total => (
            "node",
            "c2s.max_unauthenticated_connections",
            ctx.settings.max_unauthenticated_connections,
        ),
        ConnectionRefusal::PerSource => (
            "address",
            "c2s.max_unauthenticated_per_address",
            ctx.settings.max_unauthenticated_per_address,
        ),
    };
    crate::metrics::METRICS
        .c2s_refused
        .with_label_values(&[label])
        .inc();
    if let Some(suppressed) = ctx.refused_log.tick() {
        tracing::warn!(
            %peer,
            cap,
            suppressed,
            "c2s connection refused: {key} reached"
        );
    }
}
