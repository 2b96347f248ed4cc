//! The c2s stream negotiation state machine (RFC 6120 §4.3): STARTTLS, then SASL, then
//! resource binding, each offered as a stream feature flagged `<required/>` when it is
//! mandatory-to-negotiate (RFC 6120 §4.3.2) or `<optional/>` where the older session feature
//! allows it.
//!
//! The machine does no I/O: the caller feeds it stream events and carries out the returned
//! [`Action`]s (write bytes, upgrade to TLS, bind a resource, close the stream).

use base64::Engine;

use crate::element::Element;
use crate::error::{StreamError, StreamErrorCondition as Cond};
use crate::ns;
use crate::sasl::{
    Authenticator, ChannelBinding, DomainAuthenticators, SaslExchange, SaslFailure, SaslStep,
};
use crate::stream::{self, StreamHeader};

/// What this listener offers.
#[derive(Debug, Clone)]
pub struct C2sPolicy {
    /// Domains this server serves; a header `to` outside them gets `<host-unknown/>`.
    pub domains: Vec<String>,
    /// A certificate is configured, so STARTTLS can be offered.
    pub tls_available: bool,
    /// Refuse SASL and stanzas until the stream is encrypted.
    pub tls_required: bool,
    /// Failed SASL attempts before the stream is closed.
    pub max_auth_failures: u32,
    /// Stream features the server's extensions offer once the client authenticated
    /// (RFC 6120 §4.3.2), after bind's: e.g. `<csi xmlns='urn:xmpp:csi:0'/>` (XEP-0352).
    pub bound_features: Vec<Element>,
    /// Namespaces of top-level elements that are not stanzas but that a bound client may
    /// send (nonzas such as XEP-0352's `<active/>`): they come out as [`Action::Nonza`]
    /// instead of closing the stream with `<unsupported-stanza-type/>`.
    pub nonza_namespaces: Vec<String>,
}

/// Something the caller must do, in order.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Write these bytes to the peer.
    Send(Vec<u8>),
    /// `<proceed/>` was sent: perform the TLS handshake, then call [`C2sNegotiation::tls_established`]
    /// and start a fresh stream reader.
    StartTls,
    /// SASL succeeded for this prepared localpart: start a fresh stream reader.
    Authenticated(String),
    /// The client asks to bind a resource (`None`: the server picks one). Answer with
    /// [`C2sNegotiation::bound`] or [`C2sNegotiation::bind_failed`].
    Bind {
        iq_id: String,
        resource: Option<String>,
    },
    /// A stanza from the bound session, for the router.
    Stanza(Element),
    /// A top-level element in one of [`C2sPolicy::nonza_namespaces`] from the bound session.
    Nonza(Element),
    /// The authenticated client asks to resume stream-management session `previd`
    /// (XEP-0198 §5) instead of binding; it handled `h` of our stanzas. Answer with
    /// [`C2sNegotiation::resumed`] or [`C2sNegotiation::resume_failed`].
    Resume { previd: String, h: u32 },
    /// Close the stream: the bytes are already in a preceding `Send`.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the client's stream header.
    AwaitHeader,
    /// Header exchanged, features sent, waiting for the client to pick one.
    Negotiating,
    /// A SASL exchange is in progress.
    Sasl,
    /// Bound: stanzas flow.
    Established,
    /// The stream is closed or closing: ignore everything.
    Closed,
}

/// Negotiation state of one c2s connection.
pub struct C2sNegotiation {
    policy: std::sync::Arc<C2sPolicy>,
    phase: Phase,
    secured: bool,
    channel_binding: ChannelBinding,
    /// The served domain the client addressed.
    domain: Option<String>,
    header_sent: bool,
    lang: String,
    user: Option<String>,
    bind_pending: bool,
    auth_failures: u32,
    /// The SASL mechanism of the last exchange that started (one of the offered names).
    mechanism: Option<&'static str>,
    /// The condition of the last SASL failure.
    last_failure: Option<SaslFailure>,
    sasl: Option<SaslExchange>,
    /// Stanzas received from the client since stream management was enabled or resumed
    /// (XEP-0198 §4); `None` while it is not enabled. The inbound half of stream management
    /// lives here because some stanzas are answered here (the legacy session request) and
    /// every one of them counts; the outbound half (the unacknowledged queue) is the
    /// session's.
    sm_handled: Option<crate::sm::Counter>,
}

impl C2sNegotiation {
    /// `direct_tls`: the connection came in on the direct-TLS port (XEP-0368) and is already
    /// encrypted, with this channel binding.
    pub fn new(
        policy: std::sync::Arc<C2sPolicy>,
        direct_tls: Option<ChannelBinding>,
    ) -> C2sNegotiation {
        C2sNegotiation {
            policy,
            phase: Phase::AwaitHeader,
            secured: direct_tls.is_some(),
            channel_binding: direct_tls.unwrap_or_default(),
            domain: None,
            header_sent: false,
            lang: "en".to_string(),
            user: None,
            bind_pending: false,
            auth_failures: 0,
            mechanism: None,
            last_failure: None,
            sasl: None,
            sm_handled: None,
        }
    }

    /// Stanzas handled from the client since stream management was enabled (or the count
    /// the resumed session had plus those since); `None`: not enabled.
    pub fn sm_handled(&self) -> Option<u32> {
        self.sm_handled.map(|c| c.0)
    }

    /// SASL attempts that failed so far on this stream.
    pub fn auth_failures(&self) -> u32 {
        self.auth_failures
    }

    /// The SASL condition of the last failure (`not-authorized`, `aborted`, ...).
    pub fn last_auth_failure(&self) -> Option<&'static str> {
        self.last_failure.map(SaslFailure::as_str)
    }

    /// The mechanism of the SASL exchange that started last, if any.
    pub fn mechanism(&self) -> Option<&'static str> {
        self.mechanism
    }

    pub fn is_secured(&self) -> bool {
        self.secured
    }

    pub fn is_established(&self) -> bool {
        self.phase == Phase::Established
    }

    /// The authenticated, prepared localpart.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The served domain this stream is for.
    pub fn domain(&self) -> Option<&str> {
        self.domain.as_deref()
    }

    /// The stream's default language (from the client's header).
    pub fn lang(&self) -> &str {
        &self.lang
    }

    /// A new stream header from the client. `stream_id` must be fresh and unpredictable.
    pub fn on_header(
        &mut self,
        header: &StreamHeader,
        stream_id: &str,
        auth: &DomainAuthenticators,
    ) -> Vec<Action> {
        if self.phase != Phase::AwaitHeader {
            return self.fail(StreamError::with_text(
                Cond::InvalidXml,
                "unexpected stream header",
            ));
        }
        if let Some(lang) = header.lang.as_deref().filter(|l| !l.is_empty()) {
            self.lang = lang.to_string();
        }
        let to = header
            .to
            .as_deref()
            .and_then(|t| crate::jid::prepare_domain(t).ok());
        let served = to.filter(|t| self.policy.domains.iter().any(|d| d == t));
        let Some(domain) = served else {
            return self.fail(StreamError::new(Cond::HostUnknown));
        };
        if self.domain.as_deref().is_some_and(|d| d != domain) {
            return self.fail(StreamError::new(Cond::HostUnknown));
        }
        self.domain = Some(domain.clone());
        let mut out = stream::header_bytes(ns::CLIENT, &domain, None, stream_id, &self.lang);
        self.header_sent = true;
        let major = header
            .version
            .as_deref()
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse::<u32>().ok());
        if major != Some(1) {
            // RFC 6120 §4.7.5: we speak only version 1.x.
            let mut actions = vec![Action::Send(out)];
            actions.extend(self.fail(StreamError::new(Cond::UnsupportedVersion)));
            return actions;
        }
        out.extend_from_slice(&self.features(auth));
        self.phase = Phase::Negotiating;
        vec![Action::Send(out)]
    }

    fn features(&self, auth: &DomainAuthenticators) -> Vec<u8> {
        let mut features = Element::new("features", ns::STREAM);
        if self.user.is_some() {
            features = features
                .with_child(
                    Element::new("bind", ns::BIND).with_child(Element::new("required", ns::BIND)),
                )
                .with_child(
                    Element::new("session", ns::SESSION)
                        .with_child(Element::new("optional", ns::SESSION)),
                )
                // RFC 6121 §2.6.1 roster versioning and §3.4 subscription pre-approval.
                .with_child(Element::new("ver", "urn:xmpp:features:rosterver"))
                .with_child(Element::new("sub", "urn:xmpp:features:pre-approval"));
            for f in &self.policy.bound_features {
                features = features.with_child(f.clone());
            }
        } else {
            let offer_tls = !self.secured && self.policy.tls_available;
            if offer_tls {
                let mut starttls = Element::new("starttls", ns::TLS);
                if self.policy.tls_required {
                    starttls = starttls.with_child(Element::new("required", ns::TLS));
                }
                features = features.with_child(starttls);
            }
            if self.secured || !self.policy.tls_required {
                // RFC 6120 §6.4.1 gives <mechanisms/> no <required/> child: SASL is always
                // mandatory-to-negotiate.
                let mut mechs = Element::new("mechanisms", ns::SASL);
                let offered = self
                    .authenticator(auth)
                    .map(|a| a.mechanisms(self.secured, &self.channel_binding))
                    .unwrap_or_default();
                for m in offered {
                    mechs = mechs.with_child(Element::new("mechanism", ns::SASL).with_text(m));
                }
                features = features.with_child(mechs);
                let types = self.channel_binding.types();
                if !types.is_empty() {
                    // XEP-0440: which channel-binding types a -PLUS exchange may use.
                    let mut cb = Element::new("sasl-channel-binding", "urn:xmpp:sasl-cb:0");
                    for t in types {
                        cb = cb.with_child(
                            Element::new("channel-binding", "urn:xmpp:sasl-cb:0")
                                .with_attr("type", t),
                        );
                    }
                    features = features.with_child(cb);
                }
            }
        }
        let mut out = Vec::new();
        features.write_to(&mut out, ns::CLIENT);
        out
    }

    /// A complete top-level element from the client.
    pub fn on_element(&mut self, el: Element, auth: &DomainAuthenticators) -> Vec<Action> {
        match self.phase {
            Phase::Closed => Vec::new(),
            Phase::AwaitHeader => self.fail(StreamError::with_text(
                Cond::InvalidXml,
                "element before stream restart",
            )),
            Phase::Established => self.established_element(el),
            Phase::Negotiating | Phase::Sasl => self.negotiating_element(el, auth),
        }
    }

    fn negotiating_element(&mut self, el: Element, auth: &DomainAuthenticators) -> Vec<Action> {
        if el.ns == ns::TLS && el.name == "starttls" {
            return self.starttls();
        }
        if el.ns == ns::SASL {
            return self.sasl_element(el, auth);
        }
        if el.ns == ns::SM && self.user.is_some() && self.offers(ns::SM) {
            return self.sm_before_bind(&el);
        }
        if el.ns == ns::CLIENT && matches!(el.name.as_str(), "iq" | "message" | "presence") {
            if self.user.is_some() && el.name == "iq" {
                if let Some(actions) = self.bind_request(&el) {
                    return actions;
                }
            }
            return self.fail(StreamError::with_text(
                Cond::NotAuthorized,
                "authenticate and bind a resource first",
            ));
        }
        self.fail(StreamError::new(Cond::UnsupportedStanzaType))
    }

    fn starttls(&mut self) -> Vec<Action> {
        if self.secured || self.user.is_some() || !self.policy.tls_available {
            // RFC 6120 §5.4.2.2: failure, then close the stream.
            let mut out = Vec::new();
            Element::new("failure", ns::TLS).write_to(&mut out, ns::CLIENT);
            out.extend_from_slice(stream::CLOSE);
            self.phase = Phase::Closed;
            return vec![Action::Send(out), Action::Close];
        }
        let mut out = Vec::new();
        Element::new("proceed", ns::TLS).write_to(&mut out, ns::CLIENT);
        self.phase = Phase::AwaitHeader;
        vec![Action::Send(out), Action::StartTls]
    }

    fn authenticator<'a>(&self, auth: &'a DomainAuthenticators) -> Option<&'a Authenticator> {
        self.domain.as_deref().and_then(|d| auth.get(d))
    }

    /// The TLS handshake finished; the client now restarts the stream.
    pub fn tls_established(&mut self, cb: ChannelBinding) {
        self.secured = true;
        self.channel_binding = cb;
        self.header_sent = false;
    }

    fn sasl_element(&mut self, el: Element, auth: &DomainAuthenticators) -> Vec<Action> {
        if self.user.is_some() {
            return self.fail(StreamError::with_text(
                Cond::PolicyViolation,
                "already authenticated",
            ));
        }
        if !self.secured && self.policy.tls_required {
            return self.sasl_failure(SaslFailure::EncryptionRequired, false);
        }
        match el.name.as_str() {
            "auth" => {
                if self.phase == Phase::Sasl {
                    self.sasl = None;
                }
                let Some(mechanism) = el.attr("mechanism") else {
                    return self.sasl_failure(SaslFailure::InvalidMechanism, false);
                };
                let initial = match decode_sasl_payload(&el.text()) {
                    Ok(i) => i,
                    Err(f) => return self.sasl_failure(f, false),
                };
                let Some(authenticator) = self.authenticator(auth) else {
                    return self.sasl_failure(SaslFailure::TemporaryAuthFailure, false);
                };
                match authenticator.start(mechanism, self.secured, self.channel_binding.clone()) {
                    Ok(exchange) => {
                        self.mechanism = authenticator
                            .mechanisms(self.secured, &self.channel_binding)
                            .into_iter()
                            .find(|m| *m == mechanism);
                        self.sasl = Some(exchange);
                        self.phase = Phase::Sasl;
                        self.sasl_step(initial.as_deref())
                    }
                    Err(f) => self.sasl_failure(f, false),
                }
            }
            "response" => {
                if self.sasl.is_none() {
                    return self.sasl_failure(SaslFailure::MalformedRequest, false);
                }
                match decode_sasl_payload(&el.text()) {
                    Ok(data) => self.sasl_step(Some(data.as_deref().unwrap_or(&[]))),
                    Err(f) => self.sasl_failure(f, false),
                }
            }
            "abort" => self.sasl_failure(SaslFailure::Aborted, false),
            _ => self.fail(StreamError::new(Cond::UnsupportedStanzaType)),
        }
    }

    fn sasl_step(&mut self, data: Option<&[u8]>) -> Vec<Action> {
        let Some(exchange) = self.sasl.as_mut() else {
            return self.sasl_failure(SaslFailure::MalformedRequest, false);
        };
        match exchange.step(data) {
            SaslStep::Challenge(c) => {
                let el = Element::new("challenge", ns::SASL).with_text(encode_sasl_payload(&c));
                let mut out = Vec::new();
                el.write_to(&mut out, ns::CLIENT);
                vec![Action::Send(out)]
            }
            SaslStep::Success {
                username,
                additional,
            } => {
                self.sasl = None;
                self.user = Some(username.clone());
                self.phase = Phase::AwaitHeader;
                self.header_sent = false;
                let mut el = Element::new("success", ns::SASL);
                if let Some(a) = additional {
                    el = el.with_text(encode_sasl_payload(&a));
                }
                let mut out = Vec::new();
                el.write_to(&mut out, ns::CLIENT);
                vec![Action::Send(out), Action::Authenticated(username)]
            }
            SaslStep::Failure(f) => self.sasl_failure(f, true),
        }
    }

    fn sasl_failure(&mut self, failure: SaslFailure, counts: bool) -> Vec<Action> {
        self.sasl = None;
        self.phase = Phase::Negotiating;
        self.last_failure = Some(failure);
        let el =
            Element::new("failure", ns::SASL).with_child(Element::new(failure.as_str(), ns::SASL));
        let mut out = Vec::new();
        el.write_to(&mut out, ns::CLIENT);
        let mut actions = vec![Action::Send(out)];
        if counts || failure == SaslFailure::Aborted {
            self.auth_failures += 1;
            if self.auth_failures >= self.policy.max_auth_failures {
                actions.extend(self.fail(StreamError::with_text(
                    Cond::PolicyViolation,
                    "too many failed authentication attempts",
                )));
            }
        }
        actions
    }

    /// `Some` if `iq` is a resource-binding request (answered or passed on as `Action::Bind`).
    fn bind_request(&mut self, iq: &Element) -> Option<Vec<Action>> {
        let bind = iq.get_child("bind", ns::BIND)?;
        let id = iq.attr("id").unwrap_or_default().to_string();
        if iq.attr("type") != Some("set") || self.bind_pending {
            let reply = crate::error::stanza_error_reply(
                iq,
                crate::error::StanzaErrorCondition::BadRequest,
                None,
            );
            let mut out = Vec::new();
            reply.write_to(&mut out, ns::CLIENT);
            return Some(vec![Action::Send(out)]);
        }
        let resource = bind
            .get_child("resource", ns::BIND)
            .map(|r| r.text())
            .filter(|r| !r.is_empty());
        self.bind_pending = true;
        Some(vec![Action::Bind {
            iq_id: id,
            resource,
        }])
    }

    fn offers(&self, namespace: &str) -> bool {
        self.policy.nonza_namespaces.iter().any(|n| n == namespace)
    }

    /// Stream management between authentication and bind (XEP-0198 §3, §5): only
    /// `<resume/>` belongs here; `<enable/>` must wait for a bound resource.
    fn sm_before_bind(&mut self, el: &Element) -> Vec<Action> {
        use crate::error::StanzaErrorCondition as C;
        let failed = |cond| {
            let mut out = Vec::new();
            crate::sm::failed(cond, None).write_to(&mut out, ns::CLIENT);
            vec![Action::Send(out)]
        };
        match crate::sm::parse(el) {
            Ok(crate::sm::Nonza::Resume { previd, h }) if !self.bind_pending => {
                self.bind_pending = true;
                vec![Action::Resume { previd, h }]
            }
            Ok(crate::sm::Nonza::Resume { .. } | crate::sm::Nonza::Enable { .. }) => {
                failed(C::UnexpectedRequest)
            }
            // Nothing is counted before enable: an early <r/> or <a/> is ignored.
            Ok(crate::sm::Nonza::Request | crate::sm::Nonza::Ack { .. }) => Vec::new(),
            Err(_) => failed(C::BadRequest),
        }
    }

    /// The session `previd` was resumed for this connection (XEP-0198 §5): the stream is
    /// established again; `h` is how many of the client's stanzas the session handled. The
    /// caller retransmits the unacknowledged stanzas after these bytes.
    pub fn resumed(&mut self, previd: &str, h: u32) -> Vec<Action> {
        self.bind_pending = false;
        self.phase = Phase::Established;
        self.sm_handled = Some(crate::sm::Counter(h));
        let mut out = Vec::new();
        crate::sm::resumed(previd, h).write_to(&mut out, ns::CLIENT);
        vec![Action::Send(out)]
    }

    /// The session could not be resumed (§5: unknown, expired, replaced or held by a node
    /// that is gone: `item-not-found`); the client may bind a new resource instead.
    pub fn resume_failed(
        &mut self,
        condition: crate::error::StanzaErrorCondition,
        h: Option<u32>,
    ) -> Vec<Action> {
        self.bind_pending = false;
        let mut out = Vec::new();
        crate::sm::failed(condition, h).write_to(&mut out, ns::CLIENT);
        vec![Action::Send(out)]
    }

    /// The caller bound `full_jid` for the request `iq_id`: the stream is established.
    pub fn bound(&mut self, iq_id: &str, full_jid: &str) -> Vec<Action> {
        self.bind_pending = false;
        self.phase = Phase::Established;
        let reply = Element::new("iq", ns::CLIENT)
            .with_attr("type", "result")
            .with_attr("id", iq_id)
            .with_child(
                Element::new("bind", ns::BIND)
                    .with_child(Element::new("jid", ns::BIND).with_text(full_jid)),
            );
        let mut out = Vec::new();
        reply.write_to(&mut out, ns::CLIENT);
        vec![Action::Send(out)]
    }

    /// Binding failed with this stanza error (e.g. `conflict`, `bad-request` for an invalid
    /// resource, `resource-constraint`); the client may try again.
    pub fn bind_failed(
        &mut self,
        iq_id: &str,
        condition: crate::error::StanzaErrorCondition,
    ) -> Vec<Action> {
        self.bind_pending = false;
        let request = Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", iq_id);
        let reply = crate::error::stanza_error_reply(&request, condition, None);
        let mut out = Vec::new();
        reply.write_to(&mut out, ns::CLIENT);
        vec![Action::Send(out)]
    }

    fn established_element(&mut self, el: Element) -> Vec<Action> {
        if el.ns == ns::SM && self.offers(ns::SM) {
            return self.sm_established(el);
        }
        if let Some(handled) = &mut self.sm_handled {
            if el.ns == ns::CLIENT && matches!(el.name.as_str(), "iq" | "message" | "presence") {
                handled.bump();
            }
        }
        if self
            .policy
            .nonza_namespaces
            .iter()
            .any(|n| el.ns == n.as_str())
        {
            return vec![Action::Nonza(el)];
        }
        if el.ns != ns::CLIENT || !matches!(el.name.as_str(), "iq" | "message" | "presence") {
            return self.fail(StreamError::new(Cond::UnsupportedStanzaType));
        }
        if el.name == "iq" && el.attr("type") == Some("set") && el.attr("to").is_none() {
            // RFC 3921 session establishment: a no-op kept for old clients.
            if el.get_child("session", ns::SESSION).is_some() {
                let reply = Element::new("iq", ns::CLIENT)
                    .with_attr("type", "result")
                    .with_attr("id", el.attr("id").unwrap_or_default());
                let mut out = Vec::new();
                reply.write_to(&mut out, ns::CLIENT);
                return vec![Action::Send(out)];
            }
            if el.get_child("bind", ns::BIND).is_some() {
                // RFC 6120 §7.7.2.1: one resource per stream.
                let reply = crate::error::stanza_error_reply(
                    &el,
                    crate::error::StanzaErrorCondition::NotAllowed,
                    None,
                );
                let mut out = Vec::new();
                reply.write_to(&mut out, ns::CLIENT);
                return vec![Action::Send(out)];
            }
        }
        vec![Action::Stanza(el)]
    }

    /// Stream management on a bound stream (XEP-0198 §3, §4): `<r/>` is answered here with
    /// the count kept here; `<enable/>` (once) and `<a/>` go to the session, which owns the
    /// queue of what it sent.
    fn sm_established(&mut self, el: Element) -> Vec<Action> {
        use crate::error::StanzaErrorCondition as C;
        use crate::sm::Nonza;
        let send = |el: Element| {
            let mut out = Vec::new();
            el.write_to(&mut out, ns::CLIENT);
            vec![Action::Send(out)]
        };
        match (crate::sm::parse(&el), self.sm_handled) {
            (Ok(Nonza::Enable { .. }), None) => {
                self.sm_handled = Some(crate::sm::Counter::default());
                vec![Action::Nonza(el)]
            }
            // Enabled twice, or a resume on a bound stream (§5: resume replaces bind).
            (Ok(Nonza::Enable { .. } | Nonza::Resume { .. }), _) => {
                send(crate::sm::failed(C::UnexpectedRequest, None))
            }
            (Ok(Nonza::Request), Some(handled)) => send(crate::sm::ack(handled.0)),
            (Ok(Nonza::Ack { .. }), Some(_)) => vec![Action::Nonza(el)],
            // Nothing is counted before enable: an early <r/> or <a/> means nothing.
            (Ok(Nonza::Request | Nonza::Ack { .. }), None) => Vec::new(),
            (Err(e), _) => self.fail(StreamError::with_text(
                Cond::UndefinedCondition,
                format!("stream management: {e}"),
            )),
        }
    }

    /// Close the stream with `error`, sending our header first if it has not gone out yet
    /// (RFC 6120 §4.9.1.1). Also the way to report reader errors and timeouts.
    pub fn fail(&mut self, error: StreamError) -> Vec<Action> {
        if self.phase == Phase::Closed {
            return Vec::new();
        }
        self.phase = Phase::Closed;
        let mut out = Vec::new();
        if !self.header_sent {
            let from = self
                .domain
                .clone()
                .or_else(|| self.policy.domains.first().cloned())
                .unwrap_or_default();
            out.extend(stream::header_bytes(
                ns::CLIENT,
                &from,
                None,
                "error",
                &self.lang,
            ));
            self.header_sent = true;
        }
        out.extend(error.to_bytes());
        out.extend_from_slice(stream::CLOSE);
        vec![Action::Send(out), Action::Close]
    }

    /// The client closed its stream: answer with ours.
    pub fn on_close(&mut self) -> Vec<Action> {
        if self.phase == Phase::Closed {
            return vec![Action::Close];
        }
        self.phase = Phase::Closed;
        vec![Action::Send(stream::CLOSE.to_vec()), Action::Close]
    }
}

/// RFC 6120 §6.4.2: empty means "no data", `=` means an empty response.
fn decode_sasl_payload(text: &str) -> Result<Option<Vec<u8>>, SaslFailure> {
    let t = text.trim();
    match t {
        "" => Ok(None),
        "=" => Ok(Some(Vec::new())),
        _ => base64::engine::general_purpose::STANDARD
            .decode(t)
            .map(Some)
            .map_err(|_| SaslFailure::IncorrectEncoding),
    }
}

fn encode_sasl_payload(data: &[u8]) -> String {
    if data.is_empty() {
        "=".to_string()
    } else {
        base64::engine::general_purpose::STANDARD.encode(data)
    }
}
