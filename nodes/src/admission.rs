//! Admission of inbound connections by count and source address, shared by the c2s
//! listeners (unauthenticated connections: `c2s.max_unauthenticated_*`) and the s2s listener
//! (`s2s.max_inbound_connections*`): a permit per admitted connection, held as long as the
//! connection counts, and a bounded way to tell a refused peer why (RFC 6120 §4.9.1.1: our
//! stream header, the stream error, the close).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data is plain counters: a panic elsewhere cannot leave it inconsistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionRefusal {
    /// The limiter's total is reached (c2s: `c2s.max_unauthenticated_connections`; s2s:
    /// `s2s.max_inbound_connections`).
    Total,
    /// Its limit per source address is reached.
    PerSource,
}

impl ConnectionRefusal {
    /// The stream error that tells the peer (`kind`: "unauthenticated", "server-to-server"):
    /// RFC 6120 §4.9.3.17 `<resource-constraint/>` for the total (the node is full, try
    /// later), §4.9.3.14 `<policy-violation/>` for the per-address limit (local policy).
    pub fn stream_error(self, kind: &str) -> proto::error::StreamError {
        use proto::error::{StreamError, StreamErrorCondition};
        match self {
            ConnectionRefusal::Total => StreamError::with_text(
                StreamErrorCondition::ResourceConstraint,
                format!("too many {kind} connections; try again later"),
            ),
            ConnectionRefusal::PerSource => StreamError::with_text(
                StreamErrorCondition::PolicyViolation,
                format!("too many {kind} connections from your address"),
            ),
        }
    }
}

/// The key connections are counted under: an IPv4 address (an IPv4-mapped IPv6 address
/// counts as its IPv4 address), or the /64 prefix of an IPv6 address, since one host or
/// site usually holds a whole /64 and could otherwise use a fresh address per connection.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

#[derive(Default)]
struct ConnectionCounts {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// Counts open connections, in total and per source address.
pub struct ConnectionLimiter {
    max_total: usize,
    max_per_source: usize,
    counts: Mutex<ConnectionCounts>,
}

/// One admitted connection; dropping it gives its place back.
pub struct ConnectionPermit {
    limiter: Arc<ConnectionLimiter>,
    source: Option<IpAddr>,
}

impl ConnectionLimiter {
    pub fn new(max_total: usize, max_per_source: usize) -> ConnectionLimiter {
        ConnectionLimiter {
            max_total,
            max_per_source,
            counts: Mutex::new(ConnectionCounts::default()),
        }
    }

    /// Admit a connection from `peer` (`None`: the address is unknown, counted in the
    /// total only), or say which limit it would pass.
    pub fn try_acquire(
        self: &Arc<Self>,
        peer: Option<IpAddr>,
    ) -> Result<ConnectionPermit, ConnectionRefusal> {
        let source = peer.map(source_key);
        let mut counts = lock(&self.counts);
        if counts.total >= self.max_total {
            return Err(ConnectionRefusal::Total);
        }
        if let Some(s) = source {
            let n = counts.per_source.entry(s).or_insert(0);
            if *n >= self.max_per_source {
                return Err(ConnectionRefusal::PerSource);
            }
            *n += 1;
        }
        counts.total += 1;
        Ok(ConnectionPermit {
            limiter: self.clone(),
            source,
        })
    }

    /// Open connections: (total, from `peer`'s source).
    pub fn open(&self, peer: Option<IpAddr>) -> (usize, usize) {
        let counts = lock(&self.counts);
        let from = peer
            .map(source_key)
            .and_then(|s| counts.per_source.get(&s).copied())
            .unwrap_or(0);
        (counts.total, from)
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut counts = lock(&self.limiter.counts);
        counts.total = counts.total.saturating_sub(1);
        if let Some(s) = self.source {
            if let Some(n) = counts.per_source.get_mut(&s) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    // Keep the map as small as the set of sources connected right now.
                    counts.per_source.remove(&s);
                }
            }
        }
    }
}

/// How long a refused connection is given to read its stream error.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);
/// Refusals being written at once, c2s and s2s together; beyond, a refused connection is
/// closed without a word (in a flood, writing errors would cost more than the connections).
const MAX_REFUSING: usize = 64;
static REFUSING: AtomicUsize = AtomicUsize::new(0);

/// Tell a refused peer why: write `bytes` (our stream header, the stream error and the
/// close), then read and discard until the peer closes or `REFUSAL_LINGER` passes, so that
/// closing with unread input does not reset the connection before the error is read.
pub async fn refuse(mut tcp: TcpStream, bytes: Vec<u8>) {
    if REFUSING.fetch_add(1, Ordering::Relaxed) >= MAX_REFUSING {
        REFUSING.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    let _ = timeout(REFUSAL_LINGER, async {
        tcp.write_all(&bytes).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 4096];
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
    REFUSING.fetch_sub(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn connections_are_capped_in_total_and_per_source() {
        let limiter = Arc::new(ConnectionLimiter::new(3, 2));
        let a1 = limiter.try_acquire(Some(ip("192.0.2.1"))).unwrap();
        let a2 = limiter.try_acquire(Some(ip("192.0.2.1"))).unwrap();
        assert_eq!(
            limiter.try_acquire(Some(ip("192.0.2.1"))).err(),
            Some(ConnectionRefusal::PerSource)
        );
        // The same IPv4 address written as IPv4-mapped IPv6 is the same source.
        assert_eq!(
            limiter.try_acquire(Some(ip("::ffff:192.0.2.1"))).err(),
            Some(ConnectionRefusal::PerSource)
        );
        let b = limiter.try_acquire(Some(ip("192.0.2.2"))).unwrap();
        assert_eq!(
            limiter.try_acquire(Some(ip("192.0.2.3"))).err(),
            Some(ConnectionRefusal::Total)
        );
        assert_eq!(limiter.open(Some(ip("192.0.2.1"))), (3, 2));
        drop(a1);
        assert_eq!(limiter.open(Some(ip("192.0.2.1"))), (2, 1));
        let _a3 = limiter.try_acquire(Some(ip("192.0.2.1"))).unwrap();
        drop((a2, b));
        assert_eq!(limiter.open(Some(ip("192.0.2.2"))), (1, 0));
        // A source with no connection left is forgotten.
        assert_eq!(lock(&limiter.counts).per_source.len(), 1);
    }

    #[test]
    fn ipv6_sources_are_counted_per_64() {
        let limiter = Arc::new(ConnectionLimiter::new(10, 1));
        let _a = limiter.try_acquire(Some(ip("2001:db8:1:2::1"))).unwrap();
        assert_eq!(
            limiter.try_acquire(Some(ip("2001:db8:1:2:ffff::9"))).err(),
            Some(ConnectionRefusal::PerSource)
        );
        assert!(limiter.try_acquire(Some(ip("2001:db8:1:3::1"))).is_ok());
        assert_eq!(source_key(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
    }
}
