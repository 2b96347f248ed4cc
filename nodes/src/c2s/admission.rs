//! Admission of unauthenticated c2s connections: at most `c2s.max_unauthenticated_connections`
//! on the node and `c2s.max_unauthenticated_per_address` from one source address (IPv6 by
//! /64, the block one subscriber usually gets) are negotiating at once. Each is a stream
//! that has cost us a socket, a reader and perhaps a TLS session before anyone has proven
//! who they are; without a cap a few hosts could hold them all (issue 16). An authenticated
//! connection leaves the count, so the caps never limit logged-in users.
//!
//! A connection over a cap is refused with a stream error (RFC 6120 §4.9.3.17
//! `<resource-constraint/>` for the node's cap, §4.9.3.14 `<policy-violation/>` for the
//! per-address one) on plain listeners, and closed before the handshake on direct-TLS ones.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use proto::error::{StreamError, StreamErrorCondition};

/// Counts unauthenticated connections, shared by every accept loop of the node.
pub struct Admission {
    max_total: usize,
    max_per_address: usize,
    counts: Mutex<Counts>,
    /// Unix second of the last refusal logged (one warning a second, not one per socket).
    last_warning: AtomicU64,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The node's cap (`c2s.max_unauthenticated_connections`).
    NodeFull,
    /// The source address's cap (`c2s.max_unauthenticated_per_address`).
    AddressFull,
}

impl Refusal {
    pub fn stream_error(self) -> StreamError {
        match self {
            Refusal::NodeFull => StreamError::with_text(
                StreamErrorCondition::ResourceConstraint,
                "too many unauthenticated connections; try again later",
            ),
            Refusal::AddressFull => StreamError::with_text(
                StreamErrorCondition::PolicyViolation,
                "too many unauthenticated connections from your address",
            ),
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Refusal::NodeFull => "node",
            Refusal::AddressFull => "address",
        }
    }
}

/// Held while a connection is unauthenticated; leaves the count when dropped.
pub struct Unauthenticated {
    admission: Arc<Admission>,
    address: IpAddr,
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        let mut counts = self.admission.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                counts.per_address.remove(&self.address);
            }
        }
    }
}

impl Admission {
    pub fn new(max_total: usize, max_per_address: usize) -> Arc<Admission> {
        Arc::new(Admission {
            max_total,
            max_per_address,
            counts: Mutex::new(Counts::default()),
            last_warning: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // A panic while holding this lock cannot leave the counts half-updated (each update
        // is one statement), so a poisoned lock is still consistent.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Count a new connection from `peer`, or say why it must be refused.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Unauthenticated, Refusal> {
        let address = address_key(peer);
        let refusal = {
            let mut counts = self.lock();
            let from_address = counts.per_address.get(&address).copied().unwrap_or(0);
            if counts.total >= self.max_total {
                Some(Refusal::NodeFull)
            } else if from_address >= self.max_per_address {
                Some(Refusal::AddressFull)
            } else {
                counts.total += 1;
                *counts.per_address.entry(address).or_insert(0) += 1;
                None
            }
        };
        match refusal {
            None => Ok(Unauthenticated {
                admission: self.clone(),
                address,
            }),
            Some(r) => {
                crate::metrics::METRICS
                    .c2s_refused
                    .with_label_values(&[r.label()])
                    .inc();
                self.warn(peer, r);
                Err(r)
            }
        }
    }

    /// Connections counted now (node-wide).
    pub fn unauthenticated(&self) -> usize {
        self.lock().total
    }

    fn warn(&self, peer: IpAddr, refusal: Refusal) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.last_warning.swap(now, Ordering::Relaxed) != now {
            match refusal {
                Refusal::NodeFull => tracing::warn!(
                    %peer,
                    cap = self.max_total,
                    "c2s connection refused: c2s.max_unauthenticated_connections reached (further refusals this second not logged)"
                ),
                Refusal::AddressFull => tracing::warn!(
                    %peer,
                    cap = self.max_per_address,
                    "c2s connection refused: c2s.max_unauthenticated_per_address reached for this address (further refusals this second not logged)"
                ),
            }
        }
    }
}

/// The key a source address is counted under: IPv4 as is, IPv6 by its /64 (an IPv4-mapped
/// IPv6 address as the IPv4 address).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse()
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn per_address_cap_then_release() {
        let a = Admission::new(10, 2);
        let one = a.admit(ip("192.0.2.1")).ok();
        let two = a.admit(ip("192.0.2.1")).ok();
        assert!(one.is_some() && two.is_some());
        assert_eq!(a.admit(ip("192.0.2.1")).err(), Some(Refusal::AddressFull));
        assert!(a.admit(ip("192.0.2.2")).is_ok());
        drop(one);
        assert!(a.admit(ip("192.0.2.1")).is_ok());
        // Only `two` is still held: the others were dropped at the end of their statements.
        assert_eq!(a.unauthenticated(), 1);
    }

    #[test]
    fn node_cap() {
        let a = Admission::new(2, 5);
        let _x = a.admit(ip("192.0.2.1"));
        let _y = a.admit(ip("192.0.2.2"));
        assert_eq!(a.admit(ip("192.0.2.3")).err(), Some(Refusal::NodeFull));
    }

    #[test]
    fn ipv6_counted_by_64() {
        let a = Admission::new(10, 1);
        let _x = a.admit(ip("2001:db8:1:2::1"));
        assert_eq!(
            a.admit(ip("2001:db8:1:2:ffff::9")).err(),
            Some(Refusal::AddressFull)
        );
        assert!(a.admit(ip("2001:db8:1:3::1")).is_ok());
        assert_eq!(address_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
    }
}
