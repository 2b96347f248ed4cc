//! Where to connect for a remote domain: a static route from the configuration first, then
//! DNS SRV `_xmpps-server._tcp` (direct TLS, XEP-0368) and `_xmpp-server._tcp` (RFC 6120
//! §3.2), then the domain itself on 5269 (its A/AAAA records, through the system resolver).
//!
//! Addresses learned from DNS that are not global (loopback, private, link-local, CGNAT,
//! multicast, ...) are refused unless `s2s.allow_private_targets` is set
//! ([`is_non_global`]): otherwise anyone able to publish a DNS record, and a user of ours
//! sending a stanza to that domain, could make the node connect into its own network.
//! Static routes are the operator's word and are exempt.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// Connect with TLS from the start (XEP-0368) rather than STARTTLS.
    pub direct_tls: bool,
    /// Named by a static route (`s2s.routes`): its addresses are not filtered.
    pub static_route: bool,
}

/// The resolver for SRV lookups: the system's, or `nameserver` (`ip:port`, validated when
/// the config loads) alone.
pub fn resolver(nameserver: &str) -> Result<TokioResolver, String> {
    if nameserver.is_empty() {
        return TokioResolver::builder_tokio()
            .and_then(|b| b.build())
            .map_err(|e| e.to_string());
    }
    let addr: std::net::SocketAddr = nameserver
        .parse()
        .map_err(|e| format!("s2s.nameserver {nameserver:?}: {e}"))?;
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    let config =
        ResolverConfig::from_name_servers(vec![NameServerConfig::new(addr.ip(), true, vec![udp])]);
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .build()
        .map_err(|e| e.to_string())
}

/// One SRV answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

/// A static route `host:port` or `tls://host:port` (validated when the config loads).
pub fn parse_route(route: &str) -> Option<Target> {
    let (direct_tls, hostport) = match route.strip_prefix("tls://") {
        Some(rest) => (true, rest),
        None => (false, route),
    };
    let (host, port) = hostport.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some(Target {
        host: host.to_string(),
        port: port.parse().ok()?,
        direct_tls,
        static_route: true,
    })
}

/// Targets from the SRV answers of both services, in the order to try them: by priority,
/// heavier weight first within a priority (a deterministic reading of RFC 2782), direct TLS
/// before STARTTLS at equal priority and weight. A single "." target means "no service".
pub fn order_srv(xmpps: Vec<SrvRecord>, xmpp: Vec<SrvRecord>) -> Vec<Target> {
    let mut all: Vec<(SrvRecord, bool)> = Vec::new();
    for (records, tls) in [(xmpps, true), (xmpp, false)] {
        if records.len() == 1 && records[0].target.trim_end_matches('.').is_empty() {
            continue;
        }
        all.extend(records.into_iter().map(|r| (r, tls)));
    }
    all.sort_by(|(a, at), (b, bt)| {
        a.priority
            .cmp(&b.priority)
            .then(b.weight.cmp(&a.weight))
            .then(bt.cmp(at))
    });
    all.into_iter()
        .map(|(r, direct_tls)| Target {
            host: r.target.trim_end_matches('.').to_string(),
            port: r.port,
            direct_tls,
            static_route: false,
        })
        .filter(|t| !t.host.is_empty())
        .collect()
}

async fn srv(resolver: &TokioResolver, name: String) -> Vec<SrvRecord> {
    match resolver.srv_lookup(name.as_str()).await {
        Ok(lookup) => lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some(SrvRecord {
                    priority: s.priority,
                    weight: s.weight,
                    port: s.port,
                    target: s.target.to_utf8(),
                }),
                _ => None,
            })
            .collect(),
        Err(e) => {
            tracing::debug!(%name, error = %e, "SRV lookup failed");
            Vec::new()
        }
    }
}

/// The addresses of a target host (A/AAAA through `resolver`); empty when it has none or
/// there is no resolver, and the caller falls back to the system's `getaddrinfo` (which
/// also reads /etc/hosts).
pub async fn addresses(
    host: &str,
    port: u16,
    resolver: Option<&TokioResolver>,
) -> Vec<std::net::SocketAddr> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return vec![std::net::SocketAddr::new(ip, port)];
    }
    let Some(resolver) = resolver else {
        return Vec::new();
    };
    match resolver.lookup_ip(host).await {
        Ok(ips) => ips
            .iter()
            .map(|ip| std::net::SocketAddr::new(ip, port))
            .collect(),
        Err(e) => {
            tracing::debug!(host, error = %e, "A/AAAA lookup failed");
            Vec::new()
        }
    }
}

/// Where to try to reach `domain`, in order.
pub async fn resolve(
    domain: &str,
    routes: &HashMap<String, String>,
    resolver: Option<&TokioResolver>,
) -> Vec<Target> {
    if let Some(route) = routes.get(domain) {
        return parse_route(route).into_iter().collect();
    }
    let mut targets = Vec::new();
    if let Some(resolver) = resolver {
        let (xmpps, xmpp) = tokio::join!(
            srv(resolver, format!("_xmpps-server._tcp.{domain}.")),
            srv(resolver, format!("_xmpp-server._tcp.{domain}.")),
        );
        targets = order_srv(xmpps, xmpp);
    }
    if targets.is_empty() {
        targets.push(Target {
            host: domain.to_string(),
            port: 5269,
            direct_tls: false,
            static_route: false,
        });
    }
    targets
}

/// Whether `ip` is not a global unicast address: this network, loopback, RFC 1918
/// private, CGNAT shared space (RFC 6598), link-local, IETF protocol assignments,
/// documentation and benchmarking ranges, multicast, reserved and broadcast; for IPv6 also
/// unspecified, ULA (fc00::/7), link- and site-local, multicast, documentation, discard-only,
/// local-use NAT64 (64:ff9b:1::/48), and the IPv4 inside IPv4-mapped, IPv4-compatible,
/// NAT64 (64:ff9b::/96) and 6to4 (2002::/16) addresses. (`IpAddr::is_global` is unstable.)
pub fn is_non_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_non_global_v4(v4),
        IpAddr::V6(v6) => is_non_global_v6(v6),
    }
}

fn is_non_global_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 0 // "this network" (RFC 791), including 0.0.0.0
        || a == 10 // RFC 1918
        || a == 127 // loopback
        || (a == 100 && (64..128).contains(&b)) // CGNAT, RFC 6598
        || (a == 169 && b == 254) // link-local, RFC 3927
        || (a == 172 && (16..32).contains(&b)) // RFC 1918
        || (a == 192 && b == 168) // RFC 1918
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments, RFC 6890
        || (a == 192 && b == 0 && c == 2) // TEST-NET-1, RFC 5737
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast, RFC 7526
        || (a == 198 && (b == 18 || b == 19)) // benchmarking, RFC 2544
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // TEST-NET-3
        || a >= 224 // multicast (224/4), reserved (240/4), broadcast
}

fn is_non_global_v6(ip: Ipv6Addr) -> bool {
    let bits = u128::from(ip);
    let seg = ip.segments();
    let embedded_v4 = || Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_non_global_v4(v4);
    }
    if ip.is_unspecified() || ip.is_loopback() {
        return true;
    }
    if bits >> 32 == 0 {
        // IPv4-compatible (deprecated, RFC 4291 §2.5.5.1).
        return is_non_global_v4(embedded_v4());
    }
    if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        // NAT64 well-known prefix (RFC 6052): the IPv4 it reaches decides.
        return is_non_global_v4(embedded_v4());
    }
    if seg[0] == 0x2002 {
        // 6to4 (RFC 3056): 2002:V4ADDR::/48.
        let v4 = Ipv4Addr::from((u32::from(seg[1]) << 16) | u32::from(seg[2]));
        return is_non_global_v4(v4);
    }
    (seg[0] & 0xfe00) == 0xfc00 // unique local, fc00::/7
        || (seg[0] & 0xffc0) == 0xfe80 // link-local, fe80::/10
        || (seg[0] & 0xffc0) == 0xfec0 // site-local (deprecated), fec0::/10
        || (seg[0] & 0xff00) == 0xff00 // multicast
        || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation, RFC 3849
        || (seg[0] == 0x0100 && seg[1] == 0 && seg[2] == 0 && seg[3] == 0) // discard, RFC 6666
        || (seg[0] == 0x0064 && seg[1] == 0xff9b && seg[2] == 1) // local-use NAT64, RFC 8215
}

/// The addresses of a target we may connect to: all of them for a static route or when
/// `allow_private` is set, otherwise only the global ones. `Err` holds the refused
/// addresses when nothing is left.
pub fn permitted(
    target: &Target,
    addrs: Vec<SocketAddr>,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, Vec<SocketAddr>> {
    if target.static_route || allow_private {
        return Ok(addrs);
    }
    let (ok, refused): (Vec<SocketAddr>, Vec<SocketAddr>) =
        addrs.into_iter().partition(|a| !is_non_global(a.ip()));
    if ok.is_empty() && !refused.is_empty() {
        return Err(refused);
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(priority: u16, weight: u16, port: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port,
            target: target.into(),
        }
    }

    #[test]
    fn srv_answers_are_tried_by_priority_then_weight() {
        let t = order_srv(
            vec![rec(10, 0, 5270, "tls.example.")],
            vec![
                rec(20, 0, 5269, "backup.example."),
                rec(10, 5, 5269, "light.example."),
                rec(10, 50, 5269, "heavy.example."),
            ],
        );
        let got: Vec<(&str, u16, bool)> = t
            .iter()
            .map(|t| (t.host.as_str(), t.port, t.direct_tls))
            .collect();
        assert_eq!(
            got,
            vec![
                ("heavy.example", 5269, false),
                ("light.example", 5269, false),
                ("tls.example", 5270, true),
                ("backup.example", 5269, false),
            ]
        );
    }

    #[test]
    fn a_dot_target_means_no_service() {
        let t = order_srv(vec![rec(0, 0, 0, ".")], vec![rec(0, 0, 5269, "x.example.")]);
        assert_eq!(t.len(), 1);
        assert!(!t[0].direct_tls);
    }

    #[test]
    fn static_routes() {
        assert_eq!(
            parse_route("127.0.0.2:5269"),
            Some(Target {
                host: "127.0.0.2".into(),
                port: 5269,
                direct_tls: false,
                static_route: true,
            })
        );
        assert_eq!(
            parse_route("tls://[::1]:5270").map(|t| (t.host, t.direct_tls)),
            Some(("::1".into(), true))
        );
        assert_eq!(parse_route("nowhere"), None);
    }

    #[tokio::test]
    async fn a_static_route_wins_and_no_resolver_falls_back_to_5269() {
        let mut routes = HashMap::new();
        routes.insert("a.example".to_string(), "10.0.0.1:1234".to_string());
        let t = resolve("a.example", &routes, None).await;
        assert_eq!(t[0].port, 1234);
        let t = resolve("b.example", &routes, None).await;
        assert_eq!(
            t,
            vec![Target {
                host: "b.example".into(),
                port: 5269,
                direct_tls: false,
                static_route: false,
            }]
        );
        assert!(resolve("a.example", &routes, None).await[0].static_route);
    }

    #[test]
    fn non_global_addresses_are_recognised() {
        for a in [
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "127.0.0.1",
            "127.0.0.2",
            "100.64.0.1",
            "100.127.255.254",
            "169.254.10.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::10.0.0.1",
            "64:ff9b::c0a8:0101",
            "64:ff9b:1::1",
            "2002:c0a8:0101::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "100::1",
        ] {
            let ip: IpAddr = a.parse().unwrap();
            assert!(is_non_global(ip), "{a} should be refused");
        }
        for a in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.169.0.1",
            "223.255.255.254",
            "2a01:4f8::1",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:0808:0808::1",
        ] {
            let ip: IpAddr = a.parse().unwrap();
            assert!(!is_non_global(ip), "{a} should be allowed");
        }
    }

    #[test]
    fn dns_learned_private_addresses_are_refused_unless_allowed_or_static() {
        let learned = Target {
            host: "xmpp.example".into(),
            port: 5269,
            direct_tls: false,
            static_route: false,
        };
        let sa = |s: &str| -> SocketAddr { s.parse().unwrap() };
        // Only private addresses: refused, and the refused ones are named for the log.
        assert_eq!(
            permitted(
                &learned,
                vec![sa("127.0.0.1:5269"), sa("[fd00::1]:5269")],
                false
            ),
            Err(vec![sa("127.0.0.1:5269"), sa("[fd00::1]:5269")])
        );
        // A mix: only the global ones are tried.
        assert_eq!(
            permitted(
                &learned,
                vec![sa("10.0.0.1:5269"), sa("192.0.32.10:5269")],
                false
            ),
            Ok(vec![sa("192.0.32.10:5269")])
        );
        // Allowed by the operator.
        assert_eq!(
            permitted(&learned, vec![sa("10.0.0.1:5269")], true),
            Ok(vec![sa("10.0.0.1:5269")])
        );
        // A static route to a loopback address (what the federation tests use) is kept.
        let route = parse_route("127.0.0.2:5269").unwrap();
        assert_eq!(
            permitted(&route, vec![sa("127.0.0.2:5269")], false),
            Ok(vec![sa("127.0.0.2:5269")])
        );
        // No address at all is not a refusal: the caller reports that itself.
        assert_eq!(permitted(&learned, Vec::new(), false), Ok(Vec::new()));
    }
}
