//! Logging one simulated user in: stream header, STARTTLS or direct TLS, SASL, stream restart,
//! resource binding, initial presence.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::rustls::ClientConfig;

use crate::conn::{stream_error, Connection, Failure};
use crate::scram::{self, ClientFinal, ClientFirst, ServerFirst};
use crate::xml::{self, Event};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsMode {
    /// Plain TCP throughout (the server needs `require_tls = false`).
    None,
    /// `<starttls/>` on the plain port.
    Starttls,
    /// TLS from the first byte (XEP-0368, the `tls_listen` port).
    Direct,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mech {
    /// SASL PLAIN (Switchboard offers it over TLS only).
    Plain,
    /// SCRAM-SHA-256 without channel binding.
    #[value(name = "scram-sha-256")]
    ScramSha256,
}

impl Mech {
    pub fn sasl_name(self) -> &'static str {
        match self {
            Mech::Plain => "PLAIN",
            Mech::ScramSha256 => "SCRAM-SHA-256",
        }
    }
}

/// The resource every simulated client binds.
pub const RESOURCE: &str = "lg";

/// Where and how to log in; shared by all connections of a run.
pub struct Target {
    /// The nodes' c2s addresses; user `i` connects to `servers[i % servers.len()]`.
    pub servers: Vec<SocketAddr>,
    /// Local addresses to bind before connecting, used round-robin; empty: the kernel picks.
    pub sources: Vec<IpAddr>,
    pub domain: String,
    pub user_prefix: String,
    pub password: String,
    pub tls: TlsMode,
    /// Present unless `tls` is `None`.
    pub tls_config: Option<Arc<ClientConfig>>,
    pub mech: Mech,
    /// SCRAM salted passwords by salt, so a login with a salt seen before skips PBKDF2.
    pub salted: SaltedPasswords,
    /// The initial presence every login sends: `<presence/>`, or (`pep`) one with the
    /// client's entity capabilities (XEP-0115 §4).
    pub initial_presence: String,
}

/// Results of PBKDF2 by (salt, iterations). Every user of a [`Target`] has the same password,
/// so the salt alone decides the key: a population provisioned with one shared salt costs one
/// derivation per process (a million logins would otherwise spend ~70 CPU-minutes here), and
/// per-user salts cost one per user, as before.
#[derive(Default)]
pub struct SaltedPasswords(Mutex<HashMap<SaltAndIterations, [u8; 32]>>);

type SaltAndIterations = (Vec<u8>, u32);

impl SaltedPasswords {
    fn get(&self, server: &ServerFirst) -> Option<[u8; 32]> {
        let cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(&(server.salt.clone(), server.iterations))
            .copied()
    }

    fn insert(&self, server: &ServerFirst, key: [u8; 32]) {
        let mut cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        cache.insert((server.salt.clone(), server.iterations), key);
    }
}

impl Target {
    /// Which of [`Target::servers`] user `index` connects to.
    pub fn server_of(&self, index: u32) -> usize {
        index as usize % self.servers.len()
    }

    pub fn username(&self, index: u32) -> String {
        format!("{}{index}", self.user_prefix)
    }

    pub fn full_jid(&self, index: u32) -> String {
        format!("{}@{}/{RESOURCE}", self.username(index), self.domain)
    }

    fn tls_config(&self) -> Result<Arc<ClientConfig>, Failure> {
        self.tls_config
            .clone()
            .ok_or_else(|| Failure::Tls("no TLS configuration".into()))
    }

    async fn salted_password(&self, server: &ServerFirst) -> Result<[u8; 32], Failure> {
        if let Some(key) = self.salted.get(server) {
            return Ok(key);
        }
        let (password, salt, iterations) = (
            self.password.clone(),
            server.salt.clone(),
            server.iterations,
        );
        // PBKDF2 takes milliseconds: keep it off the threads that drive the sockets.
        let key = tokio::task::spawn_blocking(move || {
            scram::salted_password(&password, &salt, iterations)
        })
        .await
        .map_err(|_| Failure::Protocol("PBKDF2 task failed".into()))?;
        self.salted.insert(server, key);
        Ok(key)
    }
}

/// Log user `index` in binding `resource` (several resources let one user have several
/// sessions at once); on success the stream is bound and initial presence is sent.
pub async fn login_as(target: &Target, index: u32, resource: &str) -> Result<Connection, Failure> {
    let (mut conn, features) = authenticated(target, index, target.server_of(index)).await?;
    if xml::child(&features, "bind").is_none() {
        return Err(Failure::Protocol("resource binding not offered".into()));
    }
    bind(&mut conn, resource).await?;
    conn.send(&target.initial_presence).await?;
    Ok(conn)
}

/// Resume user `index`'s stream-managed session `previd` (XEP-0198 §5) on server `server`
/// (an index of `target.servers`: in a cluster, any node), telling it we handled `h`
/// stanzas. Returns the connection and the server's `h` (stanzas of ours it handled); the
/// server then retransmits what we had not acknowledged. `<failed/>` is a
/// [`Failure::Protocol`] naming its condition.
pub async fn resume_as(
    target: &Target,
    index: u32,
    server: usize,
    previd: &str,
    h: u32,
) -> Result<(Connection, u32), Failure> {
    let (mut conn, features) = authenticated(target, index, server).await?;
    if xml::child(&features, "sm").is_none() {
        return Err(Failure::Protocol("stream management not offered".into()));
    }
    conn.send(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{}' h='{h}'/>",
        xml::escape(previd)
    ))
    .await?;
    let answer = conn.next_element().await?;
    match xml::name(&answer) {
        "resumed" => {
            let h = xml::attr(&answer, "h")
                .and_then(|h| h.parse().ok())
                .ok_or_else(|| Failure::Protocol("<resumed/> without a valid h".into()))?;
            Ok((conn, h))
        }
        other => Err(Failure::Protocol(format!(
            "resume answered with <{other}>{}",
            xml::children(&answer)
                .first()
                .map(|c| format!(" ({})", xml::name(c)))
                .unwrap_or_default()
        ))),
    }
}

/// Connect to `target.servers[server]`, secure the stream as `target.tls` says and
/// authenticate user `index`; returns the connection and the features of the restarted
/// stream (bind or resume come next).
async fn authenticated(
    target: &Target,
    index: u32,
    server: usize,
) -> Result<(Connection, String), Failure> {
    let tcp = connect(target, index, server).await?;
    let mut conn = match target.tls {
        TlsMode::Direct => {
            Connection::direct_tls(tcp, target.tls_config()?, &target.domain).await?
        }
        TlsMode::None | TlsMode::Starttls => Connection::plain(tcp),
    };
    let mut features = open_stream(&mut conn, &target.domain).await?;
    if target.tls == TlsMode::Starttls {
        if xml::child(&features, "starttls").is_none() {
            return Err(Failure::Protocol("STARTTLS not offered".into()));
        }
        conn.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await?;
        let reply = conn.next_element().await?;
        if xml::name(&reply) != "proceed" {
            return Err(Failure::Tls(format!(
                "STARTTLS answered with <{}>",
                xml::name(&reply)
            )));
        }
        conn = conn.start_tls(target.tls_config()?, &target.domain).await?;
        features = open_stream(&mut conn, &target.domain).await?;
    }
    authenticate(&mut conn, target, index, &features).await?;
    let features = open_stream(&mut conn, &target.domain).await?;
    Ok((conn, features))
}

async fn connect(target: &Target, index: u32, server: usize) -> Result<TcpStream, Failure> {
    let connect_err = |e: std::io::Error| Failure::Connect(e.kind());
    let server = target.servers[server % target.servers.len().max(1)];
    let socket = match server {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(connect_err)?;
    if !target.sources.is_empty() {
        let ip = target.sources[index as usize % target.sources.len()];
        socket.bind(SocketAddr::new(ip, 0)).map_err(connect_err)?;
    }
    let tcp = socket.connect(server).await.map_err(connect_err)?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Send our stream header; returns the server's `<stream:features/>`.
async fn open_stream(conn: &mut Connection, domain: &str) -> Result<String, Failure> {
    conn.send(&format!(
        "<?xml version='1.0'?><stream:stream to='{}' xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>",
        xml::escape(domain)
    ))
    .await?;
    match conn.next_event().await? {
        Event::Header(_) => {}
        Event::Element(el) if xml::name(&el) == "stream:error" => return Err(stream_error(&el)),
        Event::Element(el) => {
            return Err(Failure::Protocol(format!(
                "<{}> instead of a stream header",
                xml::name(&el)
            )))
        }
        Event::End => return Err(Failure::StreamClosed),
    }
    let features = conn.next_element().await?;
    if xml::name(&features) != "stream:features" {
        return Err(Failure::Protocol(format!(
            "<{}> instead of stream features",
            xml::name(&features)
        )));
    }
    Ok(features)
}

async fn authenticate(
    conn: &mut Connection,
    target: &Target,
    index: u32,
    features: &str,
) -> Result<(), Failure> {
    let mech = target.mech.sasl_name();
    let offered = xml::child(features, "mechanisms")
        .map(xml::children)
        .unwrap_or_default()
        .into_iter()
        .any(|m| xml::text(m) == mech);
    if !offered {
        return Err(Failure::Protocol(format!("{mech} not offered")));
    }
    let user = target.username(index);
    match target.mech {
        Mech::Plain => {
            let payload = B64.encode(format!("\0{user}\0{}", target.password));
            conn.send(&format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"
            ))
            .await?;
            expect_sasl(conn.next_element().await?, "success").map(drop)
        }
        Mech::ScramSha256 => scram(conn, target, &user).await,
    }
}

async fn scram(conn: &mut Connection, target: &Target, user: &str) -> Result<(), Failure> {
    let scram_err = |e: scram::ScramError| Failure::Protocol(format!("SCRAM: {e}"));
    let nonce = B64.encode(rand::random::<[u8; 18]>());
    let first = ClientFirst::new(user, &nonce);
    conn.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{}</auth>",
        B64.encode(first.message())
    ))
    .await?;
    let challenge = expect_sasl(conn.next_element().await?, "challenge")?;
    let server = ServerFirst::parse(&first, &sasl_payload(&challenge)?).map_err(scram_err)?;
    let salted = target.salted_password(&server).await?;
    let client_final = ClientFinal::new(&first, &server, &salted);
    conn.send(&format!(
        "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
        B64.encode(&client_final.message)
    ))
    .await?;
    let reply = conn.next_element().await?;
    if xml::name(&reply) == "challenge" {
        // RFC 6120 §6.3.10 allows the server-final data in a challenge, then an empty success.
        client_final
            .verify(&sasl_payload(&reply)?)
            .map_err(scram_err)?;
        conn.send("<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
            .await?;
        expect_sasl(conn.next_element().await?, "success")?;
        return Ok(());
    }
    let success = expect_sasl(reply, "success")?;
    client_final
        .verify(&sasl_payload(&success)?)
        .map_err(scram_err)
}

/// `el` if it is the SASL element `name`; a SASL `<failure>` becomes [`Failure::Sasl`].
fn expect_sasl(el: String, name: &str) -> Result<String, Failure> {
    match xml::name(&el) {
        n if n == name => Ok(el),
        "failure" => Err(Failure::Sasl(
            xml::children(&el)
                .first()
                .map(|c| xml::name(c).to_string())
                .unwrap_or_else(|| "unspecified".into()),
        )),
        other => Err(Failure::Protocol(format!("<{other}> instead of <{name}>"))),
    }
}

fn sasl_payload(el: &str) -> Result<String, Failure> {
    let text = xml::text(el);
    let text = text.trim();
    if text == "=" {
        return Ok(String::new());
    }
    B64.decode(text)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| Failure::Protocol("SASL payload is not base64 of UTF-8".into()))
}

async fn bind(conn: &mut Connection, resource: &str) -> Result<(), Failure> {
    conn.send(&format!(
        "<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
         <resource>{}</resource></bind></iq>",
        xml::escape(resource)
    ))
    .await?;
    // Anything the server sends before the result is kept for the session: once the
    // session is registered, a message to it may be written before the bind result. The
    // login timeout bounds this loop.
    let mut early = Vec::new();
    loop {
        let el = conn.next_element().await?;
        if xml::name(&el) != "iq" || xml::attr(&el, "id").as_deref() != Some("b") {
            early.push(el);
            continue;
        }
        conn.defer(early);
        return match xml::attr(&el, "type").as_deref() {
            Some("result") => Ok(()),
            _ => Err(Failure::Bind(
                xml::child(&el, "error")
                    .and_then(|e| xml::children(e).first().map(|c| xml::name(c).to_string()))
                    .unwrap_or_else(|| "no condition".into()),
            )),
        };
    }
}

/// A target for unit tests: plain TCP, SCRAM, domain `localhost`.
#[cfg(test)]
pub fn test_target(servers: &[&str], user_prefix: &str) -> Target {
    Target {
        servers: servers.iter().filter_map(|s| s.parse().ok()).collect(),
        sources: Vec::new(),
        domain: "localhost".into(),
        user_prefix: user_prefix.into(),
        password: "secret".into(),
        tls: TlsMode::None,
        tls_config: None,
        mech: Mech::ScramSha256,
        salted: SaltedPasswords::default(),
        initial_presence: "<presence/>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salted_passwords_are_reused_only_for_the_same_salt_and_iterations() {
        let first = ClientFirst::new("user1", "abc");
        let server = ServerFirst::parse(&first, "r=abc1,s=AAAA,i=4096").unwrap();
        let resalted = ServerFirst::parse(&first, "r=abc1,s=BBBB,i=4096").unwrap();
        let more_rounds = ServerFirst::parse(&first, "r=abc1,s=AAAA,i=8192").unwrap();
        let other_user =
            ServerFirst::parse(&ClientFirst::new("user2", "xyz"), "r=xyz1,s=AAAA,i=4096").unwrap();
        let cache = SaltedPasswords::default();
        assert_eq!(cache.get(&server), None);
        cache.insert(&server, [7; 32]);
        assert_eq!(cache.get(&server), Some([7; 32]));
        assert_eq!(
            cache.get(&other_user),
            Some([7; 32]),
            "a shared salt is derived once"
        );
        assert_eq!(cache.get(&resalted), None);
        assert_eq!(cache.get(&more_rounds), None);
    }

    #[test]
    fn names() {
        let target = test_target(&["127.0.0.1:5222", "127.0.0.1:5322"], "lg");
        assert_eq!(target.username(42), "lg42");
        assert_eq!(target.full_jid(42), "lg42@localhost/lg");
        assert_eq!(target.server_of(42), 0);
        assert_eq!(target.server_of(43), 1);
    }
}
