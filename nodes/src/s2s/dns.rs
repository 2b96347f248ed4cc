//! Where to connect for a remote domain: a static route from the configuration first, then
//! DNS SRV `_xmpps-server._tcp` (direct TLS, XEP-0368) and `_xmpp-server._tcp` (RFC 6120
//! §3.2), then the domain itself on 5269 (its A/AAAA records, through the system resolver).

use std::collections::HashMap;

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
        });
    }
    targets
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
                direct_tls: false
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
                direct_tls: false
            }]
        );
    }
}
