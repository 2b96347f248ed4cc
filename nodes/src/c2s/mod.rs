//! Client-to-server: listeners, the per-connection I/O task, and the SessionActor.

pub mod connection;
pub mod messages;
pub mod session;
mod transport;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

pub use connection::C2sContext;

use crate::admission::ConnectionRefusal;

const LISTEN_BACKLOG: i32 = 4096;

/// A bound listening socket, shared by every worker's accept loop.
pub struct C2sListener {
    pub socket: std::net::TcpListener,
    /// Direct TLS (XEP-0368) rather than STARTTLS.
    pub direct_tls: bool,
}

impl C2sListener {
    pub fn bind(addr: &str, direct_tls: bool) -> std::io::Result<C2sListener> {
        use socket2::{Domain, Socket, Type};
        let addr: std::net::SocketAddr = addr.parse().map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr:?}: {e}"))
        })?;
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        // std's default backlog (128) overflows during login storms; the kernel caps this
        // at net.core.somaxconn.
        socket.listen(LISTEN_BACKLOG)?;
        socket.set_nonblocking(true)?;
        Ok(C2sListener {
            socket: socket.into(),
            direct_tls,
        })
    }
}

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
