//! In-process test harness: a whole node ([`nodes::node::run_until`]) on port 0 in a temp
//! data dir, on a thread of its own, and a raw XMPP client that speaks RFC 6120 c2s by hand
//! (stream header, STARTTLS with the node's own certificate as the trust anchor, SASL PLAIN
//! or SCRAM-SHA-256, resource binding) and parses with `proto`'s stream reader. The shape
//! is mini-redis's: the server and the client of a test share one process, so a test needs
//! no binary, no free-port guessing and no Python.
//!
//! Every wait is bounded ([`TIMEOUT`]); a failure panics with what was last received.

#![allow(dead_code)] // each test file uses a different part of the harness

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use proto::element::Element;
use proto::stream::{Limits, StreamEvent, StreamReader};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

pub const DOMAIN: &str = "localhost";
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub const NS_CLIENT: &str = "jabber:client";
pub const NS_STREAM: &str = "http://etherx.jabber.org/streams";
pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

/// How a [`TestNode`] is configured beyond the harness's defaults.
#[derive(Default)]
pub struct NodeOptions {
    /// `c2s.require_tls` (the default configuration requires it; tests of plaintext SCRAM
    /// turn it off).
    pub plaintext_allowed: bool,
    /// Accounts (localpart, password) created before the node starts.
    pub accounts: Vec<(String, String)>,
    /// More TOML appended to the configuration (whole sections, such as `[modules.csi]`).
    pub extra_toml: String,
}

/// A node running in this process.
pub struct TestNode {
    pub bound: nodes::node::Bound,
    pub dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl TestNode {
    pub fn start(opts: NodeOptions) -> TestNode {
        let dir = std::env::temp_dir().join(format!(
            "switchboard-inproc-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("create the temp data dir");
        // Accounts go in before the node opens the store (sled holds a lock on it).
        {
            let store = storage::Store::open(&data).expect("open the store");
            let admin = nodes::users::UserAdmin::new(store.clone(), vec![DOMAIN.to_string()])
                .expect("user admin");
            for (local, password) in &opts.accounts {
                admin
                    .add(&format!("{local}@{DOMAIN}"), password)
                    .expect("create an account");
            }
            store.flush().expect("flush the store");
        }
        let config = format!(
            "domains = [\"{DOMAIN}\"]\ndata_dir = \"{data}\"\n\n\
             [c2s]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\nrequire_tls = {req}\n\n\
             [s2s]\nlisten = \"127.0.0.1:0\"\n\n[http]\nlisten = \"\"\n\n{extra}\n",
            data = data.display(),
            req = !opts.plaintext_allowed,
            extra = opts.extra_toml,
        );
        let path = dir.join("node.toml");
        std::fs::write(&path, config).expect("write the config");
        let settings = nodes::config::Settings::load(Some(&path)).expect("a valid config");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            nodes::node::run_until(
                settings,
                async move {
                    // A dropped sender (the test panicked) stops the node as well.
                    let _ = stop_rx.await;
                    Ok(())
                },
                move |bound| {
                    let _ = bound_tx.send(bound);
                },
            )
        });
        let bound = match bound_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(b) => b,
            Err(_) => match thread.join() {
                Ok(Err(e)) => panic!("the node did not start: {e:#}"),
                _ => panic!("the node did not bind its listeners within 30 s"),
            },
        };
        TestNode {
            bound,
            dir,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("data").join("tls").join("cert.pem")
    }

    /// Stop the node as SIGTERM would and check that it shut down cleanly.
    pub fn stop(mut self) {
        self.shutdown().expect("the node shut down with an error");
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("the node's thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = self.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A raw c2s client.
pub struct Client {
    io: Option<Box<dyn Io>>,
    reader: StreamReader,
    /// Elements received while waiting for something else (see [`Client::expect`]).
    pub skipped: Vec<Element>,
    /// The bound full JID.
    pub jid: String,
    last: Vec<u8>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        Client {
            io: Some(Box::new(tcp)),
            reader: StreamReader::new(Limits::default(), NS_CLIENT),
            skipped: Vec::new(),
            jid: String::new(),
            last: Vec::new(),
        }
    }

    fn io(&mut self) -> &mut Box<dyn Io> {
        self.io.as_mut().expect("the connection is open")
    }

    pub async fn send(&mut self, data: &str) {
        let io = self.io();
        tokio::time::timeout(TIMEOUT, io.write_all(data.as_bytes()))
            .await
            .expect("send timed out")
            .expect("send");
    }

    /// The next stream event, reading as needed.
    pub async fn event(&mut self, timeout: Duration) -> StreamEvent {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.reader.next_event() {
                Ok(Some(ev)) => return ev,
                Ok(None) => {}
                Err(e) => panic!("the node sent what does not parse ({e}): {}", self.recent()),
            }
            let mut buf = vec![0u8; 16 * 1024];
            let read = tokio::time::timeout_at(deadline, self.io().read(&mut buf)).await;
            let n = match read {
                Ok(Ok(0)) => return StreamEvent::Close,
                Ok(Ok(n)) => n,
                Ok(Err(e)) => panic!("read: {e}; {}", self.recent()),
                Err(_) => panic!("nothing arrived within {timeout:?}; {}", self.recent()),
            };
            self.last.extend_from_slice(&buf[..n]);
            let keep = self.last.len().saturating_sub(4000);
            self.last.drain(..keep);
            self.reader.feed(&buf[..n]);
        }
    }

    fn recent(&self) -> String {
        format!(
            "last bytes received: {}",
            String::from_utf8_lossy(&self.last)
        )
    }

    /// The next element.
    pub async fn recv(&mut self) -> Element {
        match self.event(TIMEOUT).await {
            StreamEvent::Element(el, _) => el,
            other => panic!("expected an element, got {other:?}; {}", self.recent()),
        }
    }

    /// The first element (among those skipped earlier, then arriving) that `pred` accepts.
    pub async fn expect(&mut self, pred: impl Fn(&Element) -> bool) -> Element {
        if let Some(i) = self.skipped.iter().position(&pred) {
            return self.skipped.remove(i);
        }
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.event(left).await {
                StreamEvent::Element(el, _) if pred(&el) => return el,
                StreamEvent::Element(el, _) => self.skipped.push(el),
                StreamEvent::Keepalive | StreamEvent::Header(_) => {}
                StreamEvent::Close => panic!("the stream closed; {}", self.recent()),
            }
        }
    }

    /// Whatever arrives within `wait` (for "must not receive" checks).
    pub async fn quiet(&mut self, wait: Duration) -> Vec<Element> {
        let mut got = std::mem::take(&mut self.skipped);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Ok(Some(StreamEvent::Element(el, _))) = self.reader.next_event() {
                got.push(el);
                continue;
            }
            let mut buf = vec![0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.io().read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => self.reader.feed(&buf[..n]),
                _ => return got,
            }
        }
    }

    /// Send a stream header and read the node's header and features.
    pub async fn open_stream(&mut self) -> Element {
        self.reader = StreamReader::new(Limits::default(), NS_CLIENT);
        self.send(&format!(
            "<?xml version='1.0'?><stream:stream to='{DOMAIN}' version='1.0' xml:lang='en' \
             xmlns='{NS_CLIENT}' xmlns:stream='{NS_STREAM}'>"
        ))
        .await;
        match self.event(TIMEOUT).await {
            StreamEvent::Header(_) => {}
            other => panic!("expected the node's stream header, got {other:?}"),
        }
        let features = self.recv().await;
        assert!(
            features.is("features", NS_STREAM),
            "expected <stream:features/>, got {}",
            features.to_xml_string()
        );
        features
    }

    /// RFC 6120 §5: `<starttls/>`, `<proceed/>`, the TLS handshake against the node's own
    /// certificate (the trust anchor), and the stream restarted.
    pub async fn starttls(&mut self, cert: &std::path::Path) -> Element {
        self.send(&format!("<starttls xmlns='{NS_TLS}'/>")).await;
        let proceed = self.recv().await;
        assert!(proceed.is("proceed", NS_TLS), "{}", proceed.to_xml_string());
        let pem = std::fs::read(cert).expect("read the node's certificate");
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&pem) {
            roots
                .add(c.expect("a PEM certificate"))
                .expect("a trust anchor");
        }
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let io = self.io.take().expect("the connection is open");
        let name = ServerName::try_from(DOMAIN).expect("a server name");
        let tls = tokio::time::timeout(TIMEOUT, connector.connect(name, io))
            .await
            .expect("TLS handshake timed out")
            .expect("TLS handshake");
        self.io = Some(Box::new(tls));
        self.open_stream().await
    }

    /// RFC 6120 §6 with SASL PLAIN (RFC 4616); the stream restarted.
    pub async fn auth_plain(&mut self, local: &str, password: &str) -> Element {
        let creds =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{local}\0{password}"));
        self.send(&format!(
            "<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{creds}</auth>"
        ))
        .await;
        let answer = self.recv().await;
        assert!(answer.is("success", NS_SASL), "{}", answer.to_xml_string());
        self.open_stream().await
    }

    /// RFC 6120 §6 with SCRAM-SHA-256 (RFC 5802, RFC 7677), the server's signature checked;
    /// the stream restarted.
    pub async fn auth_scram(&mut self, local: &str, password: &str) -> Element {
        let b64 = base64::engine::general_purpose::STANDARD;
        let nonce = b64.encode(rand::random::<[u8; 18]>());
        let first_bare = format!("n={local},r={nonce}");
        self.send(&format!(
            "<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-256'>{}</auth>",
            b64.encode(format!("n,,{first_bare}"))
        ))
        .await;
        let challenge = self.recv().await;
        assert!(
            challenge.is("challenge", NS_SASL),
            "{}",
            challenge.to_xml_string()
        );
        let server_first =
            String::from_utf8(b64.decode(challenge.text().trim()).expect("base64")).expect("utf-8");
        let attr = |k: &str| {
            server_first
                .split(',')
                .find_map(|p| p.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("no {k}= in {server_first}"))
                .to_string()
        };
        let (server_nonce, salt, iterations) = (attr("r"), attr("s"), attr("i"));
        assert!(
            server_nonce.starts_with(&nonce),
            "the server nonce extends ours"
        );
        let salt = b64.decode(salt).expect("base64 salt");
        let iterations: NonZeroU32 = iterations.parse().expect("iteration count");
        let mut salted = [0u8; 32];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            &salt,
            password.as_bytes(),
            &mut salted,
        );
        let hmac = |key: &[u8], msg: &[u8]| {
            ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), msg)
        };
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = ring::digest::digest(&ring::digest::SHA256, client_key.as_ref());
        let without_proof = format!("c=biws,r={server_nonce}");
        let auth_message = format!("{first_bare},{server_first},{without_proof}");
        let signature = hmac(stored_key.as_ref(), auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .as_ref()
            .iter()
            .zip(signature.as_ref())
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac(&salted, b"Server Key");
        let server_signature = hmac(server_key.as_ref(), auth_message.as_bytes());
        self.send(&format!(
            "<response xmlns='{NS_SASL}'>{}</response>",
            b64.encode(format!("{without_proof},p={}", b64.encode(proof)))
        ))
        .await;
        let success = self.recv().await;
        assert!(
            success.is("success", NS_SASL),
            "{}",
            success.to_xml_string()
        );
        let server_final =
            String::from_utf8(b64.decode(success.text().trim()).expect("base64")).expect("utf-8");
        assert_eq!(
            server_final,
            format!("v={}", b64.encode(server_signature.as_ref())),
            "the server proved it knows the password"
        );
        self.open_stream().await
    }

    /// RFC 6120 §7: bind `resource`; returns the full JID.
    pub async fn bind(&mut self, resource: &str) -> String {
        let resp = self
            .iq(
                "set",
                None,
                &format!("<bind xmlns='{NS_BIND}'><resource>{resource}</resource></bind>"),
            )
            .await;
        let jid = resp
            .get_child("bind", NS_BIND)
            .and_then(|b| b.get_child("jid", NS_BIND))
            .map(|j| j.text())
            .unwrap_or_else(|| panic!("bind failed: {}", resp.to_xml_string()));
        self.jid = jid.clone();
        jid
    }

    /// Send an IQ and wait for the answer with its id.
    pub async fn iq(&mut self, kind: &str, to: Option<&str>, payload: &str) -> Element {
        let id = format!("iq{}", rand::random::<u32>());
        let to = to.map(|t| format!(" to='{t}'")).unwrap_or_default();
        self.send(&format!("<iq type='{kind}' id='{id}'{to}>{payload}</iq>"))
            .await;
        self.expect(|e| e.name == "iq" && e.attr("id") == Some(id.as_str()))
            .await
    }

    /// The usual login: STARTTLS, SASL PLAIN, bind.
    pub async fn login(node: &TestNode, local: &str, password: &str, resource: &str) -> Client {
        let mut c = Client::connect(node.bound.c2s).await;
        let features = c.open_stream().await;
        assert!(features.get_child("starttls", NS_TLS).is_some());
        c.starttls(&node.cert_path()).await;
        c.auth_plain(local, password).await;
        c.bind(resource).await;
        c
    }
}

/// The defined condition of a stanza error, if `el` is one.
pub fn error_condition(el: &Element) -> Option<String> {
    let err = el.get_child("error", NS_CLIENT)?;
    err.children()
        .find(|c| c.ns == NS_STANZAS && c.name != "text")
        .map(|c| c.name.clone())
}
