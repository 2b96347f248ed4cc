//! The s2s negotiation machines driven without a socket: each side alone against scripted
//! peer input, and both sides talking to each other through real stream readers.

use std::sync::Arc;

use proto::element::Element;
use proto::error::StreamErrorCondition;
use proto::s2s::{Action, AuthMethod, DialbackOutcome, S2sInbound, S2sOutbound, S2sPolicy};
use proto::stream::{Limits, StreamEvent, StreamHeader, StreamReader};

fn policy(domain: &str, secret: u8) -> Arc<S2sPolicy> {
    Arc::new(S2sPolicy {
        domains: vec![domain.into()],
        tls_required: true,
        dialback: true,
        sasl_external: true,
        secret: [secret; 32],
        max_pending_dialback: 8,
    })
}

#[test]
fn dialback_key_is_hmac_sha256_of_the_hashed_secret() {
    // XEP-0185 §3 with the example secret (SHA-256 a7136eb1…); the expected value was
    // computed independently with Python's hmac module.
    assert_eq!(
        proto::dialback::key(
            b"s3cr3tf0rd14lb4ck",
            "example.net",
            "example.com",
            "D60000229F"
        ),
        "008c689ff366b50c63d69a3e2d2c0e0e1f8404b0118eb688a0102c87cb691bdc"
    );
    assert!(proto::dialback::verify(
        b"s3cr3tf0rd14lb4ck",
        "example.net",
        "example.com",
        "D60000229F",
        "008C689FF366B50C63D69A3E2D2C0E0E1F8404B0118EB688A0102C87CB691BDC"
    ));
    assert!(!proto::dialback::verify(
        b"s3cr3tf0rd14lb4ck",
        "example.net",
        "example.com",
        "D60000229G",
        "008c689ff366b50c63d69a3e2d2c0e0e1f8404b0118eb688a0102c87cb691bdc"
    ));
}

fn header(from: &str, to: &str) -> StreamHeader {
    StreamHeader {
        from: Some(from.into()),
        to: Some(to.into()),
        version: Some("1.0".into()),
        default_ns: Some("jabber:server".into()),
        ..StreamHeader::default()
    }
}

fn sent(actions: &[Action]) -> String {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        })
        .collect()
}

fn el(s: &str) -> Element {
    Element::parse(s).unwrap()
}

#[test]
fn inbound_requires_starttls_before_dialback() {
    let mut inb = S2sInbound::new(policy("a.test", 1), None);
    let out = sent(&inb.on_header(&header("b.test", "a.test"), "id1"));
    assert!(out.contains("xmlns='jabber:server'"), "{out}");
    assert!(out.contains("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/>"));
    assert!(
        !out.contains("urn:xmpp:features:dialback"),
        "dialback offered before TLS: {out}"
    );
    let actions = inb.on_element(el(
        "<result xmlns='jabber:server:dialback' from='b.test' to='a.test'>k</result>",
    ));
    assert!(sent(&actions).contains("policy-violation"));
    assert!(matches!(actions.last(), Some(Action::Close { .. })));
}

#[test]
fn inbound_unknown_host_is_refused() {
    let mut inb = S2sInbound::new(policy("a.test", 1), None);
    let out = sent(&inb.on_header(&header("b.test", "c.test"), "id1"));
    assert!(out.contains("host-unknown"), "{out}");
}

fn secured_inbound(cert_for: Option<&'static str>) -> S2sInbound {
    let mut inb = S2sInbound::new(policy("a.test", 1), None);
    inb.on_header(&header("b.test", "a.test"), "id1");
    let actions = inb.on_element(el("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"));
    assert_eq!(actions.last(), Some(&Action::StartTls));
    inb.tls_established(Box::new(move |d| Some(d) == cert_for));
    inb
}

#[test]
fn inbound_dialback_then_stanzas_and_invalid_from() {
    let mut inb = secured_inbound(None);
    let out = sent(&inb.on_header(&header("b.test", "a.test"), "id2"));
    assert!(out.contains("<dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>"));
    assert!(
        !out.contains("EXTERNAL"),
        "EXTERNAL offered without a valid certificate"
    );
    let actions = inb.on_element(el(
        "<result xmlns='jabber:server:dialback' from='b.test' to='a.test'>KEY</result>",
    ));
    assert_eq!(
        actions,
        vec![Action::VerifyDialback {
            originating: "b.test".into(),
            receiving: "a.test".into(),
            stream_id: "id2".into(),
            key: "KEY".into(),
        }]
    );
    let actions = inb.dialback_verified("b.test", "a.test", DialbackOutcome::Valid);
    assert!(sent(&actions).contains("type='valid'"));
    let actions = inb.on_element(el(
        "<message xmlns='jabber:server' from='romeo@b.test/x' to='juliet@a.test'><body>hi</body></message>",
    ));
    match &actions[..] {
        [Action::Stanza { from, to, stanza }] => {
            assert_eq!(from.to_string(), "romeo@b.test/x");
            assert_eq!(to.to_string(), "juliet@a.test");
            assert_eq!(stanza.ns, "jabber:client");
            assert!(stanza.get_child("body", "jabber:client").is_some());
        }
        other => panic!("{other:?}"),
    }
    // A domain that did not authenticate on this stream.
    let actions = inb.on_element(el(
        "<message xmlns='jabber:server' from='mallory@evil.test' to='juliet@a.test'/>",
    ));
    assert!(
        sent(&actions).contains("<invalid-from"),
        "{}",
        sent(&actions)
    );
    match actions.last() {
        Some(Action::Close { error: Some(e) }) => {
            assert_eq!(e.condition, StreamErrorCondition::InvalidFrom)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn inbound_caps_pending_dialback_verifications() {
    // policy(): at most 8 outstanding verifications per stream.
    let mut inb = secured_inbound(None);
    inb.on_header(&header("b.test", "a.test"), "id2");
    let result = |from: &str| {
        el(&format!(
            "<result xmlns='jabber:server:dialback' from='{from}' to='a.test'>KEY</result>"
        ))
    };
    for i in 0..8 {
        let actions = inb.on_element(result(&format!("d{i}.test")));
        assert!(
            matches!(&actions[..], [Action::VerifyDialback { .. }]),
            "request {i}: {actions:?}"
        );
    }
    assert_eq!(inb.pending_dialback(), 8);
    // The ninth is refused at once with a dialback error, and the stream stays open.
    let actions = inb.on_element(result("d8.test"));
    let out = sent(&actions);
    assert!(
        out.contains("type='error'") && out.contains("<resource-constraint"),
        "{out}"
    );
    assert!(out.contains("from='a.test' to='d8.test'"), "{out}");
    assert_eq!(
        actions.last(),
        Some(&Action::DialbackRefused {
            originating: "d8.test".into(),
            receiving: "a.test".into(),
        })
    );
    assert!(!actions.iter().any(|a| matches!(a, Action::Close { .. })));
    assert_eq!(inb.pending_dialback(), 8);
    // A repeated request for a pair already pending costs nothing and is not refused.
    assert!(inb.on_element(result("d0.test")).is_empty());
    // An answer frees a slot: the next request is verified again.
    inb.dialback_verified("d0.test", "a.test", DialbackOutcome::Invalid);
    let actions = inb.on_element(result("d8.test"));
    assert!(
        matches!(&actions[..], [Action::VerifyDialback { originating, .. }] if originating == "d8.test"),
        "{actions:?}"
    );
    // The stream speaks for the domain of its header and those authenticated on it.
    inb.dialback_verified("d1.test", "a.test", DialbackOutcome::Valid);
    let domains: Vec<&str> = inb.peer_domains().collect();
    assert_eq!(domains, vec!["b.test", "d1.test"]);
}

#[test]
fn inbound_answers_db_verify_with_its_secret() {
    let mut inb = secured_inbound(None);
    inb.on_header(&header("b.test", "a.test"), "id2");
    let key = proto::dialback::key(&[1; 32], "b.test", "a.test", "S1");
    let actions = inb.on_element(el(&format!(
        "<verify xmlns='jabber:server:dialback' from='b.test' to='a.test' id='S1'>{key}</verify>"
    )));
    assert!(
        sent(&actions).contains("type='valid'"),
        "{}",
        sent(&actions)
    );
    let actions = inb.on_element(el(
        "<verify xmlns='jabber:server:dialback' from='b.test' to='a.test' id='S1'>bad</verify>",
    ));
    assert!(sent(&actions).contains("type='invalid'"));
}

#[test]
fn inbound_sasl_external_only_with_a_verified_certificate() {
    let mut inb = secured_inbound(Some("b.test"));
    let out = sent(&inb.on_header(&header("b.test", "a.test"), "id2"));
    assert!(out.contains("<mechanism>EXTERNAL</mechanism>"), "{out}");
    // The authzid names another domain: refused.
    let actions = inb.on_element(el(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>Yy50ZXN0</auth>",
    ));
    assert!(sent(&actions).contains("invalid-authzid"));
    let actions = inb.on_element(el(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>Yi50ZXN0</auth>",
    ));
    assert!(sent(&actions).contains("<success"));
    assert!(actions.contains(&Action::Authenticated {
        domain: "b.test".into(),
        method: AuthMethod::SaslExternal
    }));
    assert!(inb.authorised("b.test", "a.test"));
}

/// Pump bytes between an outbound and an inbound machine until neither has anything to say.
struct Pair {
    out: S2sOutbound,
    inb: S2sInbound,
    out_reader: StreamReader,
    in_reader: StreamReader,
    /// Certificate check results: does the responder's cert verify for the initiator's
    /// expectation, and vice versa.
    responder_cert_ok: bool,
    initiator_cert_for: Option<&'static str>,
    log: Vec<String>,
    ready: bool,
    to_inbound: Vec<u8>,
    to_outbound: Vec<u8>,
}

impl Pair {
    fn new(responder_cert_ok: bool, initiator_cert_for: Option<&'static str>) -> Pair {
        Pair {
            out: S2sOutbound::new(policy("b.test", 2), "b.test", "a.test", None),
            inb: S2sInbound::new(policy("a.test", 1), None),
            out_reader: StreamReader::new(Limits::default(), "jabber:server"),
            in_reader: StreamReader::new(Limits::default(), "jabber:server"),
            responder_cert_ok,
            initiator_cert_for,
            log: Vec::new(),
            ready: false,
            to_inbound: Vec::new(),
            to_outbound: Vec::new(),
        }
    }

    fn run(&mut self) {
        let start = self.out.start();
        self.out_actions(start);
        for _ in 0..50 {
            if self.to_inbound.is_empty() && self.to_outbound.is_empty() {
                return;
            }
            let bytes = std::mem::take(&mut self.to_inbound);
            self.in_reader.feed(&bytes);
            while let Ok(Some(ev)) = self.in_reader.next_event() {
                let actions = match ev {
                    StreamEvent::Header(h) => self.inb.on_header(&h, "SID"),
                    StreamEvent::Element(e, _) => self.inb.on_element(e),
                    StreamEvent::Close => self.inb.on_close(),
                    StreamEvent::Keepalive => Vec::new(),
                };
                self.in_actions(actions);
            }
            let bytes = std::mem::take(&mut self.to_outbound);
            self.out_reader.feed(&bytes);
            while let Ok(Some(ev)) = self.out_reader.next_event() {
                let actions = match ev {
                    StreamEvent::Header(h) => self.out.on_header(&h),
                    StreamEvent::Element(e, _) => self.out.on_element(e),
                    StreamEvent::Close => self.out.on_close(),
                    StreamEvent::Keepalive => Vec::new(),
                };
                self.out_actions(actions);
            }
        }
        panic!("negotiation did not settle: {:?}", self.log);
    }

    fn in_actions(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Send(b) => self.to_outbound.extend(b),
                Action::StartTls => {
                    self.in_reader = StreamReader::new(Limits::default(), "jabber:server");
                    let cert_for = self.initiator_cert_for;
                    self.inb
                        .tls_established(Box::new(move |d| Some(d) == cert_for));
                    self.log.push("in: tls".into());
                }
                Action::Restart => {
                    self.in_reader = StreamReader::new(Limits::default(), "jabber:server")
                }
                Action::VerifyDialback {
                    originating,
                    receiving,
                    stream_id,
                    key,
                } => {
                    // Stand-in for the authoritative server: b.test's secret is [2; 32].
                    let ok = proto::dialback::verify(
                        &[2; 32],
                        &receiving,
                        &originating,
                        &stream_id,
                        &key,
                    );
                    let outcome = if ok {
                        DialbackOutcome::Valid
                    } else {
                        DialbackOutcome::Invalid
                    };
                    let more = self
                        .inb
                        .dialback_verified(&originating, &receiving, outcome);
                    self.in_actions(more);
                }
                other => self.log.push(format!("in: {other:?}")),
            }
        }
    }

    fn out_actions(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Send(b) => self.to_inbound.extend(b),
                Action::StartTls => {
                    self.out_reader = StreamReader::new(Limits::default(), "jabber:server");
                    let more = self.out.tls_established(self.responder_cert_ok);
                    self.log.push("out: tls".into());
                    self.out_actions(more);
                }
                Action::Restart => {
                    self.out_reader = StreamReader::new(Limits::default(), "jabber:server")
                }
                Action::Ready => self.ready = true,
                other => self.log.push(format!("out: {other:?}")),
            }
        }
    }
}

#[test]
fn both_sides_negotiate_tls_then_dialback() {
    let mut p = Pair::new(false, None);
    p.run();
    assert!(p.ready, "{:?}", p.log);
    assert!(p.inb.authorised("b.test", "a.test"));
    assert!(p
        .log
        .iter()
        .any(|l| l.contains("Authenticated") && l.contains("Dialback")));
    let bytes = p.out.stanza(&el(
        "<message xmlns='jabber:client' from='r@b.test' to='j@a.test'><body>x</body></message>",
    ));
    let text = String::from_utf8(bytes).unwrap();
    assert!(!text.contains("jabber:client"), "{text}");
}

#[test]
fn both_sides_use_sasl_external_when_certificates_verify() {
    let mut p = Pair::new(true, Some("b.test"));
    p.run();
    assert!(p.ready, "{:?}", p.log);
    assert!(p
        .log
        .iter()
        .any(|l| l.starts_with("in: Authenticated") && l.contains("SaslExternal")));
    assert!(!p.log.iter().any(|l| l.contains("Dialback")), "{:?}", p.log);
}

#[test]
fn sasl_external_refused_falls_back_to_dialback() {
    // We trust the responder's certificate, but it does not accept ours.
    let mut p = Pair::new(true, None);
    p.run();
    assert!(p.ready, "{:?}", p.log);
    assert!(p.inb.authorised("b.test", "a.test"));
}

#[test]
fn outbound_refuses_a_peer_without_starttls_when_tls_is_required() {
    let mut out = S2sOutbound::new(policy("b.test", 2), "b.test", "a.test", None);
    out.start();
    out.on_header(&StreamHeader {
        id: Some("x".into()),
        version: Some("1.0".into()),
        ..StreamHeader::default()
    });
    let actions = out.on_element(el(
        "<stream:features xmlns:stream='http://etherx.jabber.org/streams'><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>",
    ));
    assert!(sent(&actions).contains("policy-violation"));
    assert!(matches!(
        actions.last(),
        Some(Action::Close { error: Some(_) })
    ));
}

#[test]
fn outbound_verify_requests_wait_for_tls() {
    let mut out = S2sOutbound::new(policy("b.test", 2), "b.test", "a.test", None);
    out.start();
    assert!(out.verify("S9", "K").is_empty());
    out.on_header(&StreamHeader {
        id: Some("x".into()),
        version: Some("1.0".into()),
        ..StreamHeader::default()
    });
    let actions = out.on_element(el(
        "<stream:features xmlns:stream='http://etherx.jabber.org/streams'><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>",
    ));
    assert!(!sent(&actions).contains("verify"));
    out.on_element(el("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"));
    out.tls_established(false);
    out.on_header(&StreamHeader {
        id: Some("y".into()),
        version: Some("1.0".into()),
        ..StreamHeader::default()
    });
    let actions = out.on_element(el(
        "<stream:features xmlns:stream='http://etherx.jabber.org/streams'><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>",
    ));
    let text = sent(&actions);
    assert!(
        text.contains("<db:verify from='b.test' to='a.test' id='S9'>K</db:verify>"),
        "{text}"
    );
    assert!(
        text.contains("<db:result from='b.test' to='a.test'>"),
        "{text}"
    );
    let actions = out.on_element(el(
        "<verify xmlns='jabber:server:dialback' from='a.test' to='b.test' id='S9' type='valid'/>",
    ));
    assert_eq!(
        actions,
        vec![Action::VerifyResult {
            id: "S9".into(),
            valid: true
        }]
    );
}

#[test]
fn inbound_piggybacks_several_domain_pairs_on_one_stream() {
    let policy = Arc::new(S2sPolicy {
        domains: vec!["a.test".into(), "c.test".into()],
        tls_required: true,
        dialback: true,
        sasl_external: true,
        secret: [1; 32],
        max_pending_dialback: 8,
    });
    let mut inb = S2sInbound::new(policy, None);
    inb.on_header(&header("b.test", "a.test"), "id1");
    inb.on_element(el("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"));
    inb.tls_established(Box::new(|_| false));
    inb.on_header(&header("b.test", "a.test"), "id2");
    for to in ["a.test", "c.test"] {
        let actions = inb.on_element(el(&format!(
            "<result xmlns='jabber:server:dialback' from='b.test' to='{to}'>K</result>"
        )));
        assert!(
            matches!(&actions[..], [Action::VerifyDialback { receiving, .. }] if receiving == to)
        );
        if to == "a.test" {
            inb.dialback_verified("b.test", "a.test", DialbackOutcome::Valid);
            // Only the verified pair is open so far.
            assert!(inb.authorised("b.test", "a.test"));
            assert!(!inb.authorised("b.test", "c.test"));
        }
    }
    inb.dialback_verified("b.test", "c.test", DialbackOutcome::Valid);
    let actions = inb.on_element(el(
        "<message xmlns='jabber:server' from='r@b.test' to='x@c.test'/>",
    ));
    assert!(
        matches!(&actions[..], [Action::Stanza { .. }]),
        "{actions:?}"
    );
    // A refused key leaves the pair closed.
    let mut other = S2sInbound::new(policy_for_refusal(), None);
    other.on_header(&header("d.test", "a.test"), "id3");
    other.on_element(el("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"));
    other.tls_established(Box::new(|_| false));
    other.on_header(&header("d.test", "a.test"), "id4");
    other.on_element(el(
        "<result xmlns='jabber:server:dialback' from='d.test' to='a.test'>bad</result>",
    ));
    let actions = other.dialback_verified("d.test", "a.test", DialbackOutcome::Invalid);
    assert!(sent(&actions).contains("type='invalid'"));
    assert!(!other.authorised("d.test", "a.test"));
}

fn policy_for_refusal() -> Arc<S2sPolicy> {
    policy("a.test", 1)
}
