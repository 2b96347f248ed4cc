//! Server-to-server stream negotiation (RFC 6120 §4–§6, XEP-0178, XEP-0220, XEP-0288-free):
//! the receiving side ([`S2sInbound`]) and the initiating side ([`S2sOutbound`]) as state
//! machines with no I/O, plus the namespace translation between `jabber:server` on the wire
//! and `jabber:client` inside the server.
//!
//! Certificates are checked by the caller (it has the TLS stack); the machines only ask
//! "does the peer's certificate verify for this domain?" through [`CertCheck`].

use base64::Engine;

use crate::element::{Element, Namespace, Node};
use crate::error::{StanzaErrorCondition, StreamError, StreamErrorCondition as Cond};
use crate::jid::{prepare_domain, Jid};
use crate::ns;
use crate::stream::{self, StreamHeader};

/// What this server accepts and does on its s2s streams.
#[derive(Clone)]
pub struct S2sPolicy {
    /// Served domains.
    pub domains: Vec<String>,
    /// Refuse to authenticate or exchange stanzas before TLS (both directions).
    pub tls_required: bool,
    /// Offer and use Server Dialback (XEP-0220).
    pub dialback: bool,
    /// Offer and use SASL EXTERNAL with certificates (XEP-0178).
    pub sasl_external: bool,
    /// The dialback secret (XEP-0185).
    pub secret: [u8; 32],
    /// Dialback verifications one inbound stream may have outstanding at once. Each one
    /// costs the node a `<db:verify/>` over an outbound link (often a new connection and a
    /// DNS lookup), so a peer sending thousands of `<db:result/>` for different domains
    /// would otherwise make us dial thousands of servers; beyond it a request is answered
    /// at once with a `resource-constraint` dialback error (XEP-0220 §2.4), which the peer
    /// may retry once earlier verifications are done.
    pub max_pending_dialback: usize,
}

impl std::fmt::Debug for S2sPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S2sPolicy")
            .field("domains", &self.domains)
            .field("tls_required", &self.tls_required)
            .field("dialback", &self.dialback)
            .field("sasl_external", &self.sasl_external)
            .field("max_pending_dialback", &self.max_pending_dialback)
            .finish_non_exhaustive()
    }
}

impl S2sPolicy {
    fn serves(&self, domain: &str) -> bool {
        self.domains.iter().any(|d| d == domain)
    }
}

/// "Does the peer's certificate chain verify, and name this domain (RFC 6125)?"
pub type CertCheck = Box<dyn Fn(&str) -> bool>;

/// How a peer domain was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    SaslExternal,
    Dialback,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::SaslExternal => "SASL EXTERNAL",
            AuthMethod::Dialback => "dialback",
        }
    }
}

/// What the caller must do, in order.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Write these bytes.
    Send(Vec<u8>),
    /// Perform the TLS handshake (inbound: as server; outbound: as client), start a fresh
    /// reader, then call `tls_established`.
    StartTls,
    /// The stream restarts (after SASL): start a fresh reader.
    Restart,
    /// Inbound: ask the authoritative server of `originating` whether `key` is right for the
    /// stream `stream_id` (XEP-0220 §2.3), then call [`S2sInbound::dialback_verified`].
    VerifyDialback {
        originating: String,
        receiving: String,
        stream_id: String,
        key: String,
    },
    /// A peer domain is now authenticated (inbound), or our domain is authenticated to the
    /// peer (outbound).
    Authenticated { domain: String, method: AuthMethod },
    /// Outbound: stanzas may flow now.
    Ready,
    /// Outbound: the answer to a `<db:verify/>` we sent with [`S2sOutbound::verify`].
    VerifyResult { id: String, valid: bool },
    /// Inbound: a stanza from an authenticated domain, translated to `jabber:client`.
    Stanza { from: Jid, to: Jid, stanza: Element },
    /// Inbound: a `<db:result/>` for `originating` → `receiving` was refused because the
    /// stream already has `S2sPolicy::max_pending_dialback` verifications outstanding (the
    /// error reply is in a preceding `Send`); for the log and the metrics.
    DialbackRefused {
        originating: String,
        receiving: String,
    },
    /// The stream is over (an error, if any, was in a preceding `Send`). `error` says why,
    /// for the log and for bouncing.
    Close { error: Option<StreamError> },
}

/// The opening tag of an s2s stream.
pub fn header_bytes(from: &str, to: Option<&str>, id: Option<&str>) -> Vec<u8> {
    use crate::element::escape_attr;
    let mut out = Vec::with_capacity(220);
    out.extend_from_slice(
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='",
    );
    out.extend_from_slice(ns::STREAM.as_bytes());
    out.extend_from_slice(b"' xmlns:db='jabber:server:dialback' from='");
    escape_attr(&mut out, from);
    if let Some(to) = to {
        out.extend_from_slice(b"' to='");
        escape_attr(&mut out, to);
    }
    if let Some(id) = id {
        out.extend_from_slice(b"' id='");
        escape_attr(&mut out, id);
    }
    out.extend_from_slice(b"' version='1.0'>");
    out
}

/// Translate a stanza read from an s2s stream to the server's internal `jabber:client`.
pub fn to_client_ns(el: &mut Element) {
    retag(el, ns::SERVER, ns::CLIENT)
}

/// Serialise an internal (`jabber:client`) stanza for an s2s stream.
pub fn stanza_bytes(stanza: &Element) -> Vec<u8> {
    let mut el = stanza.clone();
    retag(&mut el, ns::CLIENT, ns::SERVER);
    let mut out = Vec::with_capacity(256);
    el.write_to(&mut out, ns::SERVER);
    out
}

fn retag(el: &mut Element, from: &str, to: &str) {
    retag_shared(el, from, &Namespace::from(to))
}

/// One shared copy of the new namespace for the whole tree.
fn retag_shared(el: &mut Element, from: &str, to: &Namespace) {
    if el.ns == from {
        el.ns = to.clone();
    }
    for c in &mut el.children {
        if let Node::Element(e) = c {
            retag_shared(e, from, to);
        }
    }
}

fn is_stanza(el: &Element, content_ns: &str) -> bool {
    el.ns == content_ns && matches!(el.name.as_str(), "message" | "presence" | "iq")
}

fn write(el: &Element) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    el.write_to(&mut out, ns::SERVER);
    out
}

fn db(name: &str, from: &str, to: &str) -> Element {
    Element::new(name, ns::DIALBACK)
        .with_attr("from", from)
        .with_attr("to", to)
}

fn dialback_error(name: &str, from: &str, to: &str, cond: StanzaErrorCondition) -> Element {
    db(name, from, to).with_attr("type", "error").with_child(
        // XEP-0220 §2.4: the error child is in the stream's content namespace.
        Element::new("error", ns::SERVER)
            .with_attr("type", cond.default_type().as_str())
            .with_child(Element::new(cond.as_str(), ns::STANZAS_ERRORS)),
    )
}

fn sasl(name: &str) -> Element {
    Element::new(name, ns::SASL)
}

/// The result of checking a dialback key with the authoritative server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialbackOutcome {
    Valid,
    Invalid,
    /// The authoritative server could not be asked (XEP-0220 §2.4 errors).
    Error(StanzaErrorCondition),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InPhase {
    AwaitHeader,
    Open,
    Closed,
}

/// The receiving side of one inbound s2s connection.
pub struct S2sInbound {
    policy: std::sync::Arc<S2sPolicy>,
    phase: InPhase,
    secured: bool,
    cert: Option<CertCheck>,
    stream_id: String,
    header_sent: bool,
    /// Our domain the peer addressed in its header.
    local: Option<String>,
    /// The peer's `from` in its header.
    peer: Option<String>,
    /// Domain authenticated with SASL EXTERNAL: valid towards every served domain.
    sasl_domain: Option<String>,
    /// (originating, receiving) pairs authenticated with dialback (several: piggybacking).
    dialback: Vec<(String, String)>,
    /// Pairs whose key is being verified.
    pending: Vec<(String, String)>,
}

impl S2sInbound {
    /// `direct_tls`: the connection came in on the XEP-0368 port, already encrypted, with
    /// this certificate check.
    pub fn new(policy: std::sync::Arc<S2sPolicy>, direct_tls: Option<CertCheck>) -> S2sInbound {
        S2sInbound {
            policy,
            phase: InPhase::AwaitHeader,
            secured: direct_tls.is_some(),
            cert: direct_tls,
            stream_id: String::new(),
            header_sent: false,
            local: None,
            peer: None,
            sasl_domain: None,
            dialback: Vec::new(),
            pending: Vec::new(),
        }
    }

    pub fn is_secured(&self) -> bool {
        self.secured
    }

    /// Our domain the peer addressed in its stream header (`to`), once it has sent one: the
    /// name our certificate had to carry for the peer, e.g. a group chat service's domain.
    pub fn local(&self) -> Option<&str> {
        self.local.as_deref()
    }

    /// Whether some domain is authenticated on this stream.
    pub fn is_authenticated(&self) -> bool {
        self.sasl_domain.is_some() || !self.dialback.is_empty()
    }

    /// The peer domains this stream speaks for: the one its header named, the one
    /// authenticated with SASL EXTERNAL and those authenticated with dialback (the node
    /// pauses reading from the stream while its outbound link to one of them is congested).
    pub fn peer_domains(&self) -> impl Iterator<Item = &str> {
        self.peer
            .iter()
            .chain(self.sasl_domain.iter())
            .map(String::as_str)
            .chain(self.dialback.iter().map(|(o, _)| o.as_str()))
    }

    /// Verifications requested and not yet answered.
    pub fn pending_dialback(&self) -> usize {
        self.pending.len()
    }

    /// Whether stanzas from `from` to `to` are allowed on this stream.
    pub fn authorised(&self, from: &str, to: &str) -> bool {
        self.sasl_domain.as_deref() == Some(from)
            || self.dialback.iter().any(|(o, r)| o == from && r == to)
    }

    fn cert_ok(&self, domain: &str) -> bool {
        self.secured && self.cert.as_ref().is_some_and(|c| c(domain))
    }

    /// The peer's stream header. `stream_id` must be fresh and unpredictable.
    pub fn on_header(&mut self, header: &StreamHeader, stream_id: &str) -> Vec<Action> {
        if self.phase != InPhase::AwaitHeader {
            return self.fail(StreamError::with_text(
                Cond::InvalidXml,
                "unexpected stream header",
            ));
        }
        let to = header.to.as_deref().and_then(|t| prepare_domain(t).ok());
        let Some(local) = to.filter(|t| self.policy.serves(t)) else {
            return self.fail(StreamError::new(Cond::HostUnknown));
        };
        self.peer = header.from.as_deref().and_then(|f| prepare_domain(f).ok());
        self.local = Some(local.clone());
        self.stream_id = stream_id.to_string();
        let mut out = header_bytes(&local, self.peer.as_deref(), Some(stream_id));
        self.header_sent = true;
        self.phase = InPhase::Open;
        let major = header
            .version
            .as_deref()
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse::<u32>().ok());
        if major == Some(1) {
            out.extend(self.features());
        }
        vec![Action::Send(out)]
    }

    fn features(&self) -> Vec<u8> {
        let mut features = Element::new("features", ns::STREAM);
        if !self.secured {
            let mut starttls = Element::new("starttls", ns::TLS);
            if self.policy.tls_required {
                starttls = starttls.with_child(Element::new("required", ns::TLS));
            }
            features = features.with_child(starttls);
        }
        let peer_cert_ok = self.peer.as_deref().is_some_and(|p| self.cert_ok(p));
        if self.policy.sasl_external && self.sasl_domain.is_none() && peer_cert_ok {
            features = features.with_child(
                Element::new("mechanisms", ns::SASL)
                    .with_child(Element::new("mechanism", ns::SASL).with_text("EXTERNAL")),
            );
        }
        if self.policy.dialback && (self.secured || !self.policy.tls_required) {
            features = features.with_child(
                Element::new("dialback", ns::DIALBACK_FEATURE)
                    .with_child(Element::new("errors", ns::DIALBACK_FEATURE)),
            );
        }
        write(&features)
    }

    /// The TLS handshake finished; `cert` checks the peer's client certificate (if any).
    pub fn tls_established(&mut self, cert: CertCheck) {
        self.secured = true;
        self.cert = Some(cert);
        self.header_sent = false;
        self.phase = InPhase::AwaitHeader;
    }

    /// A complete top-level element.
    pub fn on_element(&mut self, el: Element) -> Vec<Action> {
        match self.phase {
            InPhase::Closed => return Vec::new(),
            InPhase::AwaitHeader => {
                return self.fail(StreamError::with_text(
                    Cond::InvalidXml,
                    "element before stream restart",
                ))
            }
            InPhase::Open => {}
        }
        if el.is("starttls", ns::TLS) {
            return self.starttls();
        }
        if el.ns == ns::SASL {
            return self.sasl(el);
        }
        if el.ns == ns::DIALBACK {
            if !self.policy.dialback {
                return self.fail(StreamError::with_text(
                    Cond::PolicyViolation,
                    "server dialback is disabled here",
                ));
            }
            if self.policy.tls_required && !self.secured {
                return self.fail(StreamError::with_text(
                    Cond::PolicyViolation,
                    "STARTTLS is required before authentication",
                ));
            }
            return match el.name.as_str() {
                "result" => self.db_result(&el),
                "verify" => self.db_verify(&el),
                _ => self.fail(StreamError::new(Cond::UnsupportedStanzaType)),
            };
        }
        if is_stanza(&el, ns::SERVER) {
            return self.stanza(el);
        }
        self.fail(StreamError::new(Cond::UnsupportedStanzaType))
    }

    fn starttls(&mut self) -> Vec<Action> {
        if self.secured {
            let mut out = write(&Element::new("failure", ns::TLS));
            out.extend_from_slice(stream::CLOSE);
            self.phase = InPhase::Closed;
            return vec![
                Action::Send(out),
                Action::Close {
                    error: Some(StreamError::with_text(
                        Cond::PolicyViolation,
                        "STARTTLS on an encrypted stream",
                    )),
                },
            ];
        }
        self.phase = InPhase::AwaitHeader;
        vec![
            Action::Send(write(&Element::new("proceed", ns::TLS))),
            Action::StartTls,
        ]
    }

    fn sasl(&mut self, el: Element) -> Vec<Action> {
        let failure = |cond: &str| {
            Action::Send(write(
                &sasl("failure").with_child(Element::new(cond, ns::SASL)),
            ))
        };
        if el.name == "abort" {
            return vec![failure("aborted")];
        }
        if el.name != "auth" {
            return vec![failure("malformed-request")];
        }
        if !self.secured {
            return vec![failure("encryption-required")];
        }
        if !self.policy.sasl_external || el.attr("mechanism") != Some("EXTERNAL") {
            return vec![failure("invalid-mechanism")];
        }
        let text = el.text();
        let authzid = match text.trim() {
            "" | "=" => None,
            t => match base64::engine::general_purpose::STANDARD.decode(t) {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(s) => Some(s),
                    Err(_) => return vec![failure("incorrect-encoding")],
                },
                Err(_) => return vec![failure("incorrect-encoding")],
            },
        };
        // XEP-0178 §3: the authorisation identity, if any, is the peer's domain.
        let domain = match (authzid, &self.peer) {
            (Some(a), peer) => match prepare_domain(&a) {
                Ok(d) if peer.as_ref().is_none_or(|p| *p == d) => d,
                _ => return vec![failure("invalid-authzid")],
            },
            (None, Some(p)) => p.clone(),
            (None, None) => return vec![failure("invalid-authzid")],
        };
        if !self.cert_ok(&domain) {
            return vec![failure("not-authorized")];
        }
        self.sasl_domain = Some(domain.clone());
        self.phase = InPhase::AwaitHeader;
        self.header_sent = false;
        vec![
            Action::Send(write(&sasl("success"))),
            Action::Restart,
            Action::Authenticated {
                domain,
                method: AuthMethod::SaslExternal,
            },
        ]
    }

    /// XEP-0220 §2.1.2: the peer asks to be accepted as `from` towards our `to`.
    fn db_result(&mut self, el: &Element) -> Vec<Action> {
        if el.attr("type").is_some() {
            // Answers belong on streams we initiated.
            return Vec::new();
        }
        let (Some(from), Some(to)) = (el.attr("from"), el.attr("to")) else {
            return self.fail(StreamError::with_text(
                Cond::ImproperAddressing,
                "db:result without from and to",
            ));
        };
        let (Ok(from), Ok(to)) = (prepare_domain(from), prepare_domain(to)) else {
            return self.fail(StreamError::with_text(
                Cond::ImproperAddressing,
                "db:result with a malformed domain",
            ));
        };
        if !self.policy.serves(&to) {
            let reply = dialback_error("result", &to, &from, StanzaErrorCondition::ItemNotFound);
            return vec![Action::Send(write(&reply))];
        }
        if self.authorised(&from, &to) {
            let reply = db("result", &to, &from).with_attr("type", "valid");
            return vec![Action::Send(write(&reply))];
        }
        let pair = (from.clone(), to.clone());
        if self.pending.contains(&pair) {
            return Vec::new();
        }
        if self.pending.len() >= self.policy.max_pending_dialback {
            let reply = dialback_error(
                "result",
                &to,
                &from,
                StanzaErrorCondition::ResourceConstraint,
            );
            return vec![
                Action::Send(write(&reply)),
                Action::DialbackRefused {
                    originating: from,
                    receiving: to,
                },
            ];
        }
        self.pending.push(pair);
        vec![Action::VerifyDialback {
            originating: from,
            receiving: to,
            stream_id: self.stream_id.clone(),
            key: el.text().trim().to_string(),
        }]
    }

    /// The authoritative server answered about `originating` → `receiving`.
    pub fn dialback_verified(
        &mut self,
        originating: &str,
        receiving: &str,
        outcome: DialbackOutcome,
    ) -> Vec<Action> {
        if self.phase == InPhase::Closed {
            return Vec::new();
        }
        self.pending
            .retain(|(o, r)| !(o == originating && r == receiving));
        match outcome {
            DialbackOutcome::Valid => {
                let pair = (originating.to_string(), receiving.to_string());
                if !self.dialback.contains(&pair) {
                    self.dialback.push(pair);
                }
                let reply = db("result", receiving, originating).with_attr("type", "valid");
                vec![
                    Action::Send(write(&reply)),
                    Action::Authenticated {
                        domain: originating.to_string(),
                        method: AuthMethod::Dialback,
                    },
                ]
            }
            DialbackOutcome::Invalid => {
                let reply = db("result", receiving, originating).with_attr("type", "invalid");
                vec![Action::Send(write(&reply))]
            }
            DialbackOutcome::Error(cond) => {
                let reply = dialback_error("result", receiving, originating, cond);
                vec![Action::Send(write(&reply))]
            }
        }
    }

    /// XEP-0220 §2.2.2: we are the authoritative server for `to` and check a key we issued.
    fn db_verify(&mut self, el: &Element) -> Vec<Action> {
        if el.attr("type").is_some() {
            return Vec::new();
        }
        let (Some(from), Some(to), Some(id)) = (el.attr("from"), el.attr("to"), el.attr("id"))
        else {
            return self.fail(StreamError::with_text(
                Cond::ImproperAddressing,
                "db:verify without from, to and id",
            ));
        };
        let mut reply = db("verify", to, from).with_attr("id", id);
        let (Ok(receiving), Ok(originating)) = (prepare_domain(from), prepare_domain(to)) else {
            reply.set_attr("type", "invalid");
            return vec![Action::Send(write(&reply))];
        };
        if !self.policy.serves(&originating) {
            let reply = dialback_error("verify", to, from, StanzaErrorCondition::ItemNotFound)
                .with_attr("id", id);
            return vec![Action::Send(write(&reply))];
        }
        let valid = crate::dialback::verify(
            &self.policy.secret,
            &receiving,
            &originating,
            id,
            &el.text(),
        );
        reply.set_attr("type", if valid { "valid" } else { "invalid" });
        vec![Action::Send(write(&reply))]
    }

    fn stanza(&mut self, mut el: Element) -> Vec<Action> {
        if self.policy.tls_required && !self.secured {
            return self.fail(StreamError::with_text(
                Cond::PolicyViolation,
                "STARTTLS is required",
            ));
        }
        let from = el.attr("from").and_then(|f| Jid::parse(f).ok());
        let Some(from) = from else {
            return self.fail(StreamError::with_text(
                Cond::InvalidFrom,
                "missing or malformed from",
            ));
        };
        let to = el.attr("to").and_then(|t| Jid::parse(t).ok());
        let Some(to) = to else {
            return self.fail(StreamError::with_text(
                Cond::ImproperAddressing,
                "missing or malformed to",
            ));
        };
        if !self.policy.serves(to.domain()) {
            return self.fail(StreamError::new(Cond::HostUnknown));
        }
        if !self.authorised(from.domain(), to.domain()) {
            let text = format!("{} is not authenticated on this stream", from.domain());
            return self.fail(StreamError::with_text(Cond::InvalidFrom, text));
        }
        to_client_ns(&mut el);
        vec![Action::Stanza {
            from,
            to,
            stanza: el,
        }]
    }

    /// Close with `error`, sending our header first if it has not gone out.
    pub fn fail(&mut self, error: StreamError) -> Vec<Action> {
        if self.phase == InPhase::Closed {
            return Vec::new();
        }
        self.phase = InPhase::Closed;
        let mut out = Vec::new();
        if !self.header_sent {
            let from = self
                .local
                .clone()
                .or_else(|| self.policy.domains.first().cloned())
                .unwrap_or_default();
            out.extend(header_bytes(&from, None, Some("error")));
            self.header_sent = true;
        }
        out.extend(error.to_bytes());
        out.extend_from_slice(stream::CLOSE);
        vec![Action::Send(out), Action::Close { error: Some(error) }]
    }

    /// The peer closed its stream.
    pub fn on_close(&mut self) -> Vec<Action> {
        if self.phase == InPhase::Closed {
            return vec![Action::Close { error: None }];
        }
        self.phase = InPhase::Closed;
        vec![
            Action::Send(stream::CLOSE.to_vec()),
            Action::Close { error: None },
        ]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutPhase {
    AwaitHeader,
    AwaitFeatures,
    AwaitProceed,
    AwaitTls,
    AwaitSasl,
    AwaitDialback,
    Ready,
    Closed,
}

/// The initiating side of one outbound s2s link, from `local` to `remote`.
pub struct S2sOutbound {
    policy: std::sync::Arc<S2sPolicy>,
    local: String,
    remote: String,
    phase: OutPhase,
    secured: bool,
    cert_ok: bool,
    stream_id: Option<String>,
    tried_sasl: bool,
    dialback_offered: bool,
    /// `<db:verify/>` requests waiting until the stream can carry them: (id, key).
    verifies: Vec<(String, String)>,
    /// Verifications may be sent (TLS is done, or not to be had).
    can_verify: bool,
}

impl S2sOutbound {
    pub fn new(
        policy: std::sync::Arc<S2sPolicy>,
        local: &str,
        remote: &str,
        direct_tls: Option<bool>,
    ) -> S2sOutbound {
        S2sOutbound {
            policy,
            local: local.to_string(),
            remote: remote.to_string(),
            phase: OutPhase::AwaitHeader,
            secured: direct_tls.is_some(),
            cert_ok: direct_tls.unwrap_or(false),
            stream_id: None,
            tried_sasl: false,
            dialback_offered: false,
            verifies: Vec::new(),
            can_verify: false,
        }
    }

    pub fn is_secured(&self) -> bool {
        self.secured
    }

    /// Open the stream.
    pub fn start(&mut self) -> Vec<Action> {
        self.phase = OutPhase::AwaitHeader;
        vec![Action::Send(header_bytes(
            &self.local,
            Some(&self.remote),
            None,
        ))]
    }

    /// The TLS handshake finished; `cert_ok`: the peer's certificate verifies for `remote`.
    /// The stream restarts (start a fresh reader).
    pub fn tls_established(&mut self, cert_ok: bool) -> Vec<Action> {
        self.secured = true;
        self.cert_ok = cert_ok;
        self.start()
    }

    pub fn on_header(&mut self, header: &StreamHeader) -> Vec<Action> {
        if self.phase != OutPhase::AwaitHeader {
            return self.fail(StreamError::with_text(
                Cond::InvalidXml,
                "unexpected stream header",
            ));
        }
        self.stream_id = header.id.clone();
        self.phase = OutPhase::AwaitFeatures;
        let major = header
            .version
            .as_deref()
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse::<u32>().ok());
        if major != Some(1) {
            // A pre-1.0 peer sends no features: dialback is all it has.
            return self.features(&Element::new("features", ns::STREAM), true);
        }
        Vec::new()
    }

    pub fn on_element(&mut self, el: Element) -> Vec<Action> {
        match self.phase {
            OutPhase::Closed => return Vec::new(),
            OutPhase::AwaitHeader | OutPhase::AwaitTls => {
                return self.fail(StreamError::with_text(
                    Cond::InvalidXml,
                    "element before stream header",
                ))
            }
            _ => {}
        }
        if el.is("error", ns::STREAM) {
            let cond = el
                .children()
                .find(|c| c.ns == ns::STREAMS_ERRORS && c.name != "text")
                .map(|c| c.name.clone())
                .unwrap_or_else(|| "undefined-condition".into());
            let text = el
                .get_child("text", ns::STREAMS_ERRORS)
                .map(|t| t.text())
                .unwrap_or_default();
            self.phase = OutPhase::Closed;
            return vec![
                Action::Send(stream::CLOSE.to_vec()),
                Action::Close {
                    error: Some(StreamError::with_text(
                        Cond::RemoteConnectionFailed,
                        format!("peer sent stream error {cond} {text}"),
                    )),
                },
            ];
        }
        match (self.phase, el.ns.as_str(), el.name.as_str()) {
            (OutPhase::AwaitFeatures, ns::STREAM, "features") => self.features(&el, false),
            (OutPhase::AwaitProceed, ns::TLS, "proceed") => {
                self.phase = OutPhase::AwaitTls;
                vec![Action::StartTls]
            }
            (OutPhase::AwaitProceed, ns::TLS, _) => self.fail(StreamError::with_text(
                Cond::PolicyViolation,
                "the peer refused STARTTLS",
            )),
            (OutPhase::AwaitSasl, ns::SASL, "success") => {
                let actions = vec![
                    Action::Restart,
                    Action::Authenticated {
                        domain: self.local.clone(),
                        method: AuthMethod::SaslExternal,
                    },
                ];
                let mut actions = actions;
                actions.extend(self.start());
                actions
            }
            (OutPhase::AwaitSasl, ns::SASL, "failure") => {
                if self.policy.dialback && self.dialback_offered {
                    self.send_dialback()
                } else {
                    self.fail(StreamError::with_text(
                        Cond::NotAuthorized,
                        "SASL EXTERNAL failed and dialback is not available",
                    ))
                }
            }
            (_, ns::DIALBACK, "result") => self.db_result(&el),
            (_, ns::DIALBACK, "verify") => {
                let Some(id) = el.attr("id") else {
                    return Vec::new();
                };
                vec![Action::VerifyResult {
                    id: id.to_string(),
                    valid: el.attr("type") == Some("valid"),
                }]
            }
            // RFC 6120 streams are one-way: nothing else is expected from the peer here.
            _ => Vec::new(),
        }
    }

    fn features(&mut self, features: &Element, legacy: bool) -> Vec<Action> {
        let starttls = features.get_child("starttls", ns::TLS).is_some();
        if !self.secured && starttls {
            self.phase = OutPhase::AwaitProceed;
            return vec![Action::Send(write(&Element::new("starttls", ns::TLS)))];
        }
        if !self.secured && self.policy.tls_required {
            return self.fail(StreamError::with_text(
                Cond::PolicyViolation,
                format!(
                    "{} does not offer STARTTLS, which our policy requires",
                    self.remote
                ),
            ));
        }
        let mut actions = Vec::new();
        if !self.can_verify {
            self.can_verify = true;
            actions.extend(self.flush_verifies());
        }
        if self.phase == OutPhase::Ready {
            return actions;
        }
        if self.tried_sasl {
            // Restarted after SASL success: authenticated.
            self.phase = OutPhase::Ready;
            actions.push(Action::Ready);
            return actions;
        }
        self.dialback_offered = legacy
            || features
                .get_child("dialback", ns::DIALBACK_FEATURE)
                .is_some();
        let external = features.get_child("mechanisms", ns::SASL).is_some_and(|m| {
            m.children()
                .any(|c| c.is("mechanism", ns::SASL) && c.text().trim() == "EXTERNAL")
        });
        if self.policy.sasl_external && self.secured && self.cert_ok && external {
            self.tried_sasl = true;
            self.phase = OutPhase::AwaitSasl;
            let authzid = base64::engine::general_purpose::STANDARD.encode(self.local.as_bytes());
            let auth = sasl("auth")
                .with_attr("mechanism", "EXTERNAL")
                .with_text(authzid);
            actions.push(Action::Send(write(&auth)));
            return actions;
        }
        if self.policy.dialback && self.dialback_offered {
            actions.extend(self.send_dialback());
            return actions;
        }
        let why = if self.policy.dialback {
            format!(
                "{} offers neither dialback nor SASL EXTERNAL with a certificate we can verify",
                self.remote
            )
        } else {
            format!(
                "{} cannot be authenticated with SASL EXTERNAL (certificate not verified for it \
                 or mechanism not offered) and dialback is disabled",
                self.remote
            )
        };
        actions.extend(self.fail(StreamError::with_text(Cond::NotAuthorized, why)));
        actions
    }

    fn send_dialback(&mut self) -> Vec<Action> {
        let Some(id) = self.stream_id.clone() else {
            return self.fail(StreamError::with_text(
                Cond::InvalidXml,
                "the peer's stream header has no id",
            ));
        };
        // A SASL attempt that failed does not count as authenticated after a restart.
        self.tried_sasl = false;
        self.phase = OutPhase::AwaitDialback;
        let key = crate::dialback::key(&self.policy.secret, &self.remote, &self.local, &id);
        let el = db("result", &self.local, &self.remote).with_text(key);
        vec![Action::Send(write(&el))]
    }

    fn db_result(&mut self, el: &Element) -> Vec<Action> {
        if self.phase != OutPhase::AwaitDialback {
            return Vec::new();
        }
        match el.attr("type") {
            Some("valid") => {
                self.phase = OutPhase::Ready;
                vec![
                    Action::Authenticated {
                        domain: self.local.clone(),
                        method: AuthMethod::Dialback,
                    },
                    Action::Ready,
                ]
            }
            _ => {
                let cond = el
                    .children()
                    .find(|c| c.name == "error")
                    .and_then(|e| e.children().next())
                    .map(|c| c.name.clone());
                let text = match cond {
                    Some(c) => format!("{} refused our dialback ({c})", self.remote),
                    None => format!("{} refused our dialback key", self.remote),
                };
                self.fail(StreamError::with_text(Cond::NotAuthorized, text))
            }
        }
    }

    /// Ask the peer, as the authoritative server for `remote`, whether `key` is right for
    /// the stream `id` it opened to us (XEP-0220 §2.2.1).
    pub fn verify(&mut self, id: &str, key: &str) -> Vec<Action> {
        self.verifies.push((id.to_string(), key.to_string()));
        if self.can_verify {
            self.flush_verifies()
        } else {
            Vec::new()
        }
    }

    fn flush_verifies(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        for (id, key) in self.verifies.drain(..) {
            db("verify", &self.local, &self.remote)
                .with_attr("id", id)
                .with_text(key)
                .write_to(&mut out, ns::SERVER);
        }
        if out.is_empty() {
            Vec::new()
        } else {
            vec![Action::Send(out)]
        }
    }

    /// Serialise a stanza for this link (only once it sent `Action::Ready`).
    pub fn stanza(&self, stanza: &Element) -> Vec<u8> {
        stanza_bytes(stanza)
    }

    pub fn fail(&mut self, error: StreamError) -> Vec<Action> {
        if self.phase == OutPhase::Closed {
            return Vec::new();
        }
        self.phase = OutPhase::Closed;
        let mut out = error.to_bytes();
        out.extend_from_slice(stream::CLOSE);
        vec![Action::Send(out), Action::Close { error: Some(error) }]
    }

    /// Close the link politely (idle, shutdown).
    pub fn close(&mut self) -> Vec<Action> {
        if self.phase == OutPhase::Closed {
            return Vec::new();
        }
        self.phase = OutPhase::Closed;
        vec![
            Action::Send(stream::CLOSE.to_vec()),
            Action::Close { error: None },
        ]
    }

    pub fn on_close(&mut self) -> Vec<Action> {
        let was = self.phase;
        self.phase = OutPhase::Closed;
        let error = (was != OutPhase::Ready).then(|| {
            StreamError::with_text(
                Cond::RemoteConnectionFailed,
                "the peer closed the stream during negotiation",
            )
        });
        if was == OutPhase::Closed {
            return vec![Action::Close { error }];
        }
        vec![
            Action::Send(stream::CLOSE.to_vec()),
            Action::Close { error },
        ]
    }
}
