//! The operator's HTTP endpoint (`http.listen`): Prometheus `/metrics`, the Kubernetes probes
//! `/healthz` and `/readyz`, and the admin API under `/api/` (the same operations as the CLI's
//! admin socket, see docs/admin-api.yaml). The API needs `Authorization: Bearer <http.token>`
//! whenever a token is set, and a token is required to listen beyond loopback.
//!
//! The API is for operators' tools, never for browsers: a request that carries `Origin` (or
//! `Sec-Fetch-Site` other than `none`) is refused (403), so a web page cannot drive it with
//! the operator's network position; a `Host` that is not the listen address, a loopback name
//! or one of `http.allowed_hosts` is refused (421), so DNS rebinding cannot make the node the
//! page's own origin; and a write with a body must say `Content-Type: application/json`
//! (415), which no HTML form can send without a CORS preflight.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use storage::Store;
use tokio::net::TcpListener;

use crate::admin::protocol::{AdminRequest, AdminResponse};
use crate::admin::AdminServer;
use crate::cluster::Cluster;
use crate::metrics;

/// Largest request body (a bulk import of a few thousand accounts).
const MAX_BODY: usize = 4 * 1024 * 1024;

pub struct HttpEndpoint {
    pub admin: Arc<AdminServer>,
    pub cluster: Option<Cluster>,
    pub store: Store,
    pub token: Option<String>,
    /// Which `Host` headers the API accepts (see [`HostPolicy`]).
    pub hosts: HostPolicy,
    /// Set once the c2s listeners accept connections.
    pub listeners_up: Arc<AtomicBool>,
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Reply {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    reply(status, "application/json", body)
}

fn admin_reply(r: AdminResponse) -> Reply {
    let status = if r.ok {
        StatusCode::OK
    } else if r
        .error
        .as_deref()
        .is_some_and(|e| e.contains("does not exist"))
    {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::BAD_REQUEST
    };
    json(status, &r)
}

/// Compare without leaking how long a matching prefix was.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl HttpEndpoint {
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "http: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let me = self.clone();
            actix_rt::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let me = me.clone();
                    async move { Ok::<_, Infallible>(me.handle(req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "http: connection ended");
                }
            });
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Reply {
        let path = req.uri().path().to_string();
        match (req.method(), path.as_str()) {
            (&Method::GET, "/metrics") => {
                reply(StatusCode::OK, "text/plain; version=0.0.4", self.metrics())
            }
            (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n"),
            (&Method::GET, "/readyz") => self.readiness(),
            (_, p) if p == "/api" || p.starts_with("/api/") => {
                if let Some((status, why)) = browser_refusal(req.headers(), &self.hosts) {
                    tracing::warn!(
                        status = status.as_u16(),
                        reason = why,
                        path = %p,
                        "http: admin API request refused"
                    );
                    return json(status, &AdminResponse::err(why));
                }
                if let Some(denied) = self.check_token(&req) {
                    return denied;
                }
                self.api(req, path).await
            }
            _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        }
    }

    fn check_token(&self, req: &Request<Incoming>) -> Option<Reply> {
        let token = self.token.as_ref()?;
        let given = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(g) if same_secret(g.as_bytes(), token.as_bytes()) => None,
            _ => Some(json(
                StatusCode::UNAUTHORIZED,
                &AdminResponse::err("missing or wrong bearer token"),
            )),
        }
    }

    fn metrics(&self) -> String {
        metrics::render(|m| {
            if let Ok(size) = self.store.size_on_disk() {
                m.storage_bytes.set(size as i64);
            }
            if let Some(c) = &self.cluster {
                c.export_metrics(m);
            }
        })
    }

    fn readiness(&self) -> Reply {
        let mut problems = Vec::new();
        if !self.listeners_up.load(Ordering::Relaxed) {
            problems.push("c2s listeners are not up yet".to_string());
        }
        if let Err(e) = self.store.size_on_disk() {
            problems.push(format!("storage: {e}"));
        }
        if let Some(c) = &self.cluster {
            problems.extend(c.not_ready());
        }
        if problems.is_empty() {
            json(StatusCode::OK, &serde_json::json!({ "ready": true }))
        } else {
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({ "ready": false, "problems": problems }),
            )
        }
    }

    async fn api(&self, req: Request<Incoming>, path: String) -> Reply {
        let method = req.method().clone();
        let json_body = is_json(req.headers());
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return json(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &AdminResponse::err("request body too large"),
                )
            }
        };
        if !body.is_empty() && is_write(&method) && !json_body {
            tracing::warn!(%method, path = %path, "http: admin API write without a JSON body refused");
            return json(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &AdminResponse::err("a request body must be Content-Type: application/json"),
            );
        }
        let request = match route(&method, &path, &body) {
            Ok(r) => r,
            Err((status, msg)) => return json(status, &AdminResponse::err(msg)),
        };
        admin_reply(self.admin.handle(request).await)
    }
}

#[derive(serde::Deserialize)]
struct NewUser {
    jid: String,
    password: String,
}

#[derive(serde::Deserialize)]
struct Password {
    password: String,
}

#[derive(serde::Deserialize)]
struct Import {
    users: Vec<(String, String)>,
    #[serde(default)]
    shared_salt: bool,
}

#[derive(serde::Deserialize)]
struct RosterImport {
    items: Vec<crate::admin::roster_import::RosterImportItem>,
}

#[derive(serde::Deserialize, Default)]
struct Leave {
    node: Option<u64>,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, (StatusCode, String)> {
    serde_json::from_slice(body).map_err(|e| (StatusCode::BAD_REQUEST, format!("bad body: {e}")))
}

/// The admin request a REST call stands for.
fn route(method: &Method, path: &str, body: &[u8]) -> Result<AdminRequest, (StatusCode, String)> {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(2).collect();
    let decoded = |s: &str| percent_decode(s);
    Ok(match (method, parts.as_slice()) {
        (&Method::POST, []) => parse(body)?,
        (&Method::GET, ["users"]) => AdminRequest::UserList,
        (&Method::POST, ["users"]) => {
            let u: NewUser = parse(body)?;
            AdminRequest::UserAdd {
                jid: u.jid,
                password: u.password,
            }
        }
        (&Method::POST, ["users", "import"]) => {
            let i: Import = parse(body)?;
            AdminRequest::UserImport {
                users: i.users,
                shared_salt: i.shared_salt,
            }
        }
        (&Method::POST, ["rosters", "import"]) => AdminRequest::RosterImport {
            items: parse::<RosterImport>(body)?.items,
        },
        (&Method::DELETE, ["users", jid]) => AdminRequest::UserDel { jid: decoded(jid) },
        (&Method::PUT, ["users", jid, "password"]) => AdminRequest::UserPasswd {
            jid: decoded(jid),
            password: parse::<Password>(body)?.password,
        },
        (&Method::GET, ["sessions"]) => AdminRequest::SessionList,
        (&Method::DELETE, ["sessions", jid]) => AdminRequest::SessionKick { jid: decoded(jid) },
        (&Method::GET, ["stats"]) => AdminRequest::Stats,
        (&Method::GET, ["cluster"]) => AdminRequest::ClusterStatus,
        (&Method::GET, ["cluster", "routes"]) => AdminRequest::ClusterRoutes,
        (&Method::GET, ["muc", "rooms"]) => AdminRequest::MucList,
        (&Method::DELETE, ["muc", "rooms", room]) => AdminRequest::MucDestroy {
            room: decoded(room),
            reason: None,
        },
        (&Method::POST, ["cluster", "leave"]) => {
            let l: Leave = if body.is_empty() {
                Leave::default()
            } else {
                parse(body)?
            };
            AdminRequest::ClusterLeave { node: l.node }
        }
        _ => {
            return Err((
                StatusCode::NOT_FOUND,
                format!("no such API call: {method} {path}"),
            ))
        }
    })
}

/// `%40` → `@` and friends, for JIDs in paths.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Which `Host` header values the admin API answers: the listen address itself, loopback
/// names and addresses, and the names an operator configured (`http.allowed_hosts`).
#[derive(Debug, Clone, Default)]
pub struct HostPolicy {
    /// The listen IP, unless it is unspecified (`0.0.0.0`, `::`).
    listen_ip: Option<std::net::IpAddr>,
    /// Lower-case names from `http.allowed_hosts`.
    names: Vec<String>,
}

impl HostPolicy {
    pub fn new(listen: &str, allowed: &[String]) -> HostPolicy {
        let listen_ip = listen
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified());
        HostPolicy {
            listen_ip,
            names: allowed.iter().map(|n| n.to_ascii_lowercase()).collect(),
        }
    }

    /// Whether a request with this `Host` header value (`name[:port]`) is answered. An IP
    /// literal cannot be a rebinding (the page's origin is that address, so nothing was
    /// rebound): any address this node listens on is accepted; a DNS name only if it is
    /// `localhost` (RFC 6761 §6.3: always loopback) or configured.
    pub fn allows(&self, host: &str) -> bool {
        let name = strip_port(host).to_ascii_lowercase();
        if let Ok(ip) = name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
        {
            return ip.is_loopback() || self.listen_ip.is_none_or(|l| l == ip);
        }
        let name = name.trim_end_matches('.');
        name == "localhost" || name.ends_with(".localhost") || self.names.iter().any(|n| n == name)
    }
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`; a bare IPv6 literal stays whole.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Why a request to the admin API looks like it came from a browser page, if it does:
/// `Origin` is sent by browsers on every cross-origin and every non-GET request (Fetch
/// standard), `Sec-Fetch-Site` other than `none` on any request a page made, and a `Host`
/// we do not answer to is what a DNS-rebinding page sends.
fn browser_refusal(
    headers: &hyper::HeaderMap,
    hosts: &HostPolicy,
) -> Option<(StatusCode, &'static str)> {
    if headers.contains_key(hyper::header::ORIGIN) {
        return Some((
            StatusCode::FORBIDDEN,
            "requests from browsers (Origin) are refused",
        ));
    }
    let fetch_site = headers.get("sec-fetch-site").map(|v| v.as_bytes());
    if fetch_site.is_some_and(|v| v != b"none") {
        return Some((
            StatusCode::FORBIDDEN,
            "requests made by web pages (Sec-Fetch-Site) are refused",
        ));
    }
    match headers.get(hyper::header::HOST).map(|v| v.to_str()) {
        // HTTP/1.0 clients may send none; a browser always does.
        None => None,
        Some(Ok(h)) if hosts.allows(h) => None,
        Some(_) => Some((
            StatusCode::MISDIRECTED_REQUEST,
            "Host is not this node's address, a loopback name or one of http.allowed_hosts",
        )),
    }
}

fn is_write(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// `Content-Type: application/json`, parameters (`; charset=utf-8`) allowed.
fn is_json(headers: &hyper::HeaderMap) -> bool {
    headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_calls_map_to_admin_requests() {
        let r = route(&Method::DELETE, "/api/users/alice%40localhost", b"").unwrap();
        assert!(matches!(r, AdminRequest::UserDel { jid } if jid == "alice@localhost"));
        let r = route(
            &Method::PUT,
            "/api/users/a@x/password",
            br#"{"password":"p"}"#,
        )
        .unwrap();
        assert!(matches!(r, AdminRequest::UserPasswd { password, .. } if password == "p"));
        assert!(route(&Method::GET, "/api/nope", b"").is_err());
        assert!(route(&Method::POST, "/api/users", b"{").is_err());
        assert!(matches!(
            route(&Method::POST, "/api", br#"{"op":"user_list"}"#).unwrap(),
            AdminRequest::UserList
        ));
        assert!(matches!(
            route(&Method::GET, "/api/muc/rooms", b"").unwrap(),
            AdminRequest::MucList
        ));
        let r = route(&Method::DELETE, "/api/muc/rooms/r%40conference.x", b"").unwrap();
        assert!(matches!(r, AdminRequest::MucDestroy { room, .. } if room == "r@conference.x"));
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> hyper::HeaderMap {
        let mut h = hyper::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, hyper::header::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn browsers_and_rebound_hosts_are_refused() {
        let hosts = HostPolicy::new("127.0.0.1:9090", &["admin.example.net".into()]);
        let status = |pairs: &[(&'static str, &'static str)]| {
            browser_refusal(&headers(pairs), &hosts).map(|(s, _)| s.as_u16())
        };
        assert_eq!(status(&[("host", "127.0.0.1:9090")]), None);
        assert_eq!(status(&[]), None, "no Host: not a browser");
        assert_eq!(status(&[("host", "localhost:9090")]), None);
        assert_eq!(status(&[("host", "LOCALHOST.")]), None);
        assert_eq!(status(&[("host", "[::1]:9090")]), None);
        assert_eq!(status(&[("host", "Admin.Example.NET:9090")]), None);
        assert_eq!(status(&[("host", "evil.example:9090")]), Some(421));
        assert_eq!(
            status(&[("host", "10.0.0.1:9090")]),
            Some(421),
            "not our address"
        );
        assert_eq!(
            status(&[
                ("host", "127.0.0.1:9090"),
                ("origin", "http://127.0.0.1:9090")
            ]),
            Some(403)
        );
        assert_eq!(
            status(&[("host", "127.0.0.1"), ("origin", "null")]),
            Some(403)
        );
        assert_eq!(
            status(&[("host", "127.0.0.1"), ("sec-fetch-site", "cross-site")]),
            Some(403)
        );
        assert_eq!(
            status(&[("host", "127.0.0.1"), ("sec-fetch-site", "none")]),
            None
        );
        // Listening on every address: any address literal is one of ours, names are not.
        let any = HostPolicy::new("0.0.0.0:9090", &[]);
        assert!(any.allows("10.1.2.3:9090") && any.allows("[fe80::1]:9090"));
        assert!(!any.allows("rebind.attacker.example"));
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("::1"), "::1");
        assert_eq!(strip_port("a.b:80"), "a.b");
    }

    #[test]
    fn json_content_type_is_recognised() {
        assert!(is_json(&headers(&[("content-type", "application/json")])));
        assert!(is_json(&headers(&[(
            "content-type",
            "Application/JSON; charset=utf-8"
        )])));
        assert!(!is_json(&headers(&[("content-type", "text/plain")])));
        assert!(!is_json(&headers(&[(
            "content-type",
            "application/x-www-form-urlencoded"
        )])));
        assert!(!is_json(&headers(&[])));
        assert!(is_write(&Method::DELETE) && !is_write(&Method::GET));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"ab"));
        assert_eq!(percent_decode("a%2Fb%"), "a/b%");
    }
}
