//! The c2s negotiation state machine driven without a socket: features and their flags,
//! every step in order, and out-of-order steps refused with the right error.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use proto::element::Element;
use proto::error::{StanzaErrorCondition, StreamError, StreamErrorCondition};
use proto::negotiation::{Action, C2sNegotiation, C2sPolicy};
use proto::sasl::{
    Authenticator, ChannelBinding, CredentialLookup, DomainAuthenticators, StoredCredentials,
};
use proto::stream::StreamHeader;

struct Accounts(HashMap<String, StoredCredentials>);
impl CredentialLookup for Accounts {
    fn credentials(&self, username: &str) -> Option<StoredCredentials> {
        self.0.get(username).cloned()
    }
}

fn auth() -> DomainAuthenticators {
    let mut m = HashMap::new();
    m.insert(
        "juliet".to_string(),
        StoredCredentials::derive("secret", 4096).unwrap(),
    );
    let mut d = DomainAuthenticators::default();
    d.insert(
        "example.com",
        Authenticator::new(Arc::new(Accounts(m)), [1; 32]).unwrap(),
    );
    d
}

fn policy() -> Arc<C2sPolicy> {
    Arc::new(C2sPolicy {
        domains: vec!["example.com".into()],
        tls_available: true,
        tls_required: true,
        max_auth_failures: 3,
        bound_features: Vec::new(),
        nonza_namespaces: Vec::new(),
    })
}

fn header(to: &str) -> StreamHeader {
    StreamHeader {
        to: Some(to.into()),
        version: Some("1.0".into()),
        default_ns: Some("jabber:client".into()),
        ..StreamHeader::default()
    }
}

fn cb() -> ChannelBinding {
    ChannelBinding {
        tls_exporter: Some(vec![9; 32]),
        tls_server_end_point: Some(vec![8; 32]),
    }
}

/// All bytes the actions send, as one string.
fn sent(actions: &[Action]) -> String {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        })
        .collect()
}

fn el(xml: &str) -> Element {
    Element::parse(xml).unwrap()
}

fn plain_auth(user: &str, pass: &str) -> Element {
    let payload = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
    el(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"
    ))
}

/// A negotiation that has completed STARTTLS and sent the post-TLS features.
fn secured(a: &DomainAuthenticators) -> (C2sNegotiation, String) {
    secured_with(a, policy())
}

fn secured_with(a: &DomainAuthenticators, policy: Arc<C2sPolicy>) -> (C2sNegotiation, String) {
    let mut n = C2sNegotiation::new(policy, None);
    n.on_header(&header("example.com"), "s1", a);
    let acts = n.on_element(el("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"), a);
    assert!(sent(&acts).contains("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"));
    assert_eq!(acts.last(), Some(&Action::StartTls));
    n.tls_established(cb());
    let features = sent(&n.on_header(&header("example.com"), "s2", a));
    (n, features)
}

#[test]
fn first_features_require_starttls_and_offer_no_sasl() {
    let a = auth();
    let mut n = C2sNegotiation::new(policy(), None);
    let out = sent(&n.on_header(&header("example.com"), "s1", &a));
    assert!(out.contains("from='example.com'"));
    assert!(out.contains("<stream:features><starttls"), "{out}");
    assert!(out.ends_with("</stream:features>"), "{out}");
    assert!(
        out.contains("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>")
    );
    assert!(!out.contains("mechanisms"));
}

#[test]
fn features_after_tls_offer_scram_plus_and_plain() {
    let a = auth();
    let (_, features) = secured(&a);
    assert!(!features.contains("starttls"));
    for m in [
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
        "PLAIN",
    ] {
        assert!(
            features.contains(&format!("<mechanism>{m}</mechanism>")),
            "{m} missing"
        );
    }
    assert!(features.contains("<channel-binding type='tls-exporter'/>"));
}

#[test]
fn full_negotiation_with_plain_then_bind() {
    let a = auth();
    let (mut n, _) = secured(&a);
    let acts = n.on_element(plain_auth("juliet", "secret"), &a);
    assert!(sent(&acts).contains("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'"));
    assert_eq!(acts.last(), Some(&Action::Authenticated("juliet".into())));
    let features = sent(&n.on_header(&header("example.com"), "s3", &a));
    assert!(features.contains("<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><required/></bind>"));
    assert!(features
        .contains("<session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session>"));
    assert!(!features.contains("mechanisms"));
    assert!(features.contains("<ver xmlns='urn:xmpp:features:rosterver'/>"));
    assert!(features.contains("<sub xmlns='urn:xmpp:features:pre-approval'/>"));
    let acts = n.on_element(
        el("<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>balcony</resource></bind></iq>"),
        &a,
    );
    assert_eq!(
        acts,
        vec![Action::Bind {
            iq_id: "b1".into(),
            resource: Some("balcony".into())
        }]
    );
    let out = sent(&n.bound("b1", "juliet@example.com/balcony"));
    assert!(out.contains("<jid>juliet@example.com/balcony</jid>"));
    assert!(n.is_established());
    let msg = el("<message xmlns='jabber:client' to='romeo@example.com'><body>hi</body></message>");
    assert_eq!(n.on_element(msg.clone(), &a), vec![Action::Stanza(msg)]);
    // The legacy session request is answered, not routed.
    let out = sent(&n.on_element(
        el("<iq xmlns='jabber:client' type='set' id='s'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>"),
        &a,
    ));
    assert!(out.contains("type='result'"));
}

#[test]
fn sasl_before_tls_needs_encryption() {
    let a = auth();
    let mut n = C2sNegotiation::new(policy(), None);
    n.on_header(&header("example.com"), "s1", &a);
    let out = sent(&n.on_element(plain_auth("juliet", "secret"), &a));
    assert!(out.contains("<encryption-required/>"));
    assert!(!n.is_established());
}

#[test]
fn stanza_before_auth_or_bind_is_not_authorized() {
    let a = auth();
    let mut n = C2sNegotiation::new(policy(), None);
    n.on_header(&header("example.com"), "s1", &a);
    let acts = n.on_element(
        el("<message xmlns='jabber:client'><body>x</body></message>"),
        &a,
    );
    assert!(sent(&acts).contains("<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"));
    assert_eq!(acts.last(), Some(&Action::Close));

    let (mut n, _) = secured(&a);
    n.on_element(plain_auth("juliet", "secret"), &a);
    n.on_header(&header("example.com"), "s3", &a);
    let acts = n.on_element(el("<presence xmlns='jabber:client'/>"), &a);
    assert!(sent(&acts).contains("<not-authorized"));
}

#[test]
fn wrong_password_and_unknown_user_fail_alike_and_are_limited() {
    let a = auth();
    let (mut n, _) = secured(&a);
    let wrong = sent(&n.on_element(plain_auth("juliet", "nope"), &a));
    let unknown = sent(&n.on_element(plain_auth("nobody", "secret"), &a));
    assert_eq!(wrong, unknown);
    assert!(wrong.contains("<not-authorized/>"));
    let acts = n.on_element(plain_auth("juliet", "nope"), &a);
    let out = sent(&acts);
    assert!(out.contains("<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"));
    assert_eq!(acts.last(), Some(&Action::Close));
}

#[test]
fn unserved_domain_and_old_version_are_refused() {
    let a = auth();
    let mut n = C2sNegotiation::new(policy(), None);
    let out = sent(&n.on_header(&header("elsewhere.org"), "s", &a));
    assert!(
        out.starts_with("<?xml"),
        "header must precede the error: {out}"
    );
    assert!(out.contains("<host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"));

    let mut n = C2sNegotiation::new(policy(), None);
    let mut h = header("example.com");
    h.version = None;
    assert!(sent(&n.on_header(&h, "s", &a)).contains("<unsupported-version"));
}

#[test]
fn unknown_elements_and_repeated_starttls_are_refused() {
    let a = auth();
    let mut n = C2sNegotiation::new(policy(), None);
    n.on_header(&header("example.com"), "s1", &a);
    let out = sent(&n.on_element(el("<foo xmlns='urn:example'/>"), &a));
    assert!(out.contains("<unsupported-stanza-type"));

    let (mut n, _) = secured(&a);
    let acts = n.on_element(
        el("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"),
        &a,
    );
    assert!(sent(&acts).contains("<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"));
    assert_eq!(acts.last(), Some(&Action::Close));
}

#[test]
fn sasl_protocol_errors() {
    let a = auth();
    let (mut n, _) = secured(&a);
    let out = sent(&n.on_element(
        el("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='X-UNKNOWN'/>"),
        &a,
    ));
    assert!(out.contains("<invalid-mechanism/>"));
    let out = sent(&n.on_element(
        el("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>!!notbase64</auth>"),
        &a,
    ));
    assert!(out.contains("<incorrect-encoding/>"));
    let out = sent(&n.on_element(
        el("<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>AAAA</response>"),
        &a,
    ));
    assert!(out.contains("<malformed-request/>"));
}

#[test]
fn bind_refused_lets_the_client_retry() {
    let a = auth();
    let (mut n, _) = secured(&a);
    n.on_element(plain_auth("juliet", "secret"), &a);
    n.on_header(&header("example.com"), "s3", &a);
    let bind = "<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>";
    assert_eq!(
        n.on_element(el(bind), &a),
        vec![Action::Bind {
            iq_id: "b1".into(),
            resource: None
        }]
    );
    let out = sent(&n.bind_failed("b1", StanzaErrorCondition::Conflict));
    assert!(out.contains("<conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"));
    assert!(!n.is_established());
    assert!(matches!(
        n.on_element(el(bind), &a)[..],
        [Action::Bind { .. }]
    ));
}

#[test]
fn failing_sends_header_once_and_then_stays_silent() {
    let a = auth();
    let mut n = C2sNegotiation::new(policy(), None);
    let out = sent(&n.fail(StreamError::new(StreamErrorCondition::ConnectionTimeout)));
    assert!(out.starts_with("<?xml"));
    assert!(out.contains("<connection-timeout"));
    assert!(out.ends_with("</stream:stream>"));
    assert!(n
        .fail(StreamError::new(StreamErrorCondition::SystemShutdown))
        .is_empty());
    assert!(n
        .on_element(el("<presence xmlns='jabber:client'/>"), &a)
        .is_empty());
}

/// Extensions' stream features appear after authentication only, and their nonzas reach the
/// caller once bound; other foreign elements still close the stream.
#[test]
fn extension_features_and_nonzas() {
    let a = auth();
    let policy = Arc::new(C2sPolicy {
        bound_features: vec![Element::new("csi", "urn:xmpp:csi:0")],
        nonza_namespaces: vec!["urn:xmpp:csi:0".into()],
        ..(*policy()).clone()
    });
    let mut n = C2sNegotiation::new(policy, None);
    let before = sent(&n.on_header(&header("example.com"), "s1", &a));
    assert!(!before.contains("urn:xmpp:csi:0"), "{before}");
    n.on_element(
        el("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"),
        &a,
    );
    n.tls_established(cb());
    n.on_header(&header("example.com"), "s2", &a);
    n.on_element(plain_auth("juliet", "secret"), &a);
    let features = sent(&n.on_header(&header("example.com"), "s3", &a));
    assert!(
        features.contains("<csi xmlns='urn:xmpp:csi:0'/>"),
        "{features}"
    );
    n.on_element(
        el("<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>"),
        &a,
    );
    n.bound("b1", "juliet@example.com/x");
    let inactive = el("<inactive xmlns='urn:xmpp:csi:0'/>");
    assert_eq!(
        n.on_element(inactive.clone(), &a),
        vec![Action::Nonza(inactive)]
    );
    let other = sent(&n.on_element(el("<enable xmlns='urn:xmpp:sm:3'/>"), &a));
    assert!(other.contains("unsupported-stanza-type"), "{other}");
}

fn policy_sm() -> Arc<C2sPolicy> {
    Arc::new(C2sPolicy {
        bound_features: vec![Element::new("sm", "urn:xmpp:sm:3")],
        nonza_namespaces: vec!["urn:xmpp:sm:3".into()],
        ..(*policy()).clone()
    })
}

/// XEP-0198: with stream management offered, an authenticated client may resume instead of
/// binding (§5); enable before bind is refused (§3); a failed resume lets it bind.
#[test]
fn stream_management_resume_before_bind() {
    let a = auth();
    let mut n = C2sNegotiation::new(policy_sm(), None);
    n.on_header(&header("example.com"), "s1", &a);
    n.on_element(
        el("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"),
        &a,
    );
    n.tls_established(cb());
    n.on_header(&header("example.com"), "s2", &a);
    // Before authentication an SM element is not a nonza of this stream.
    let early = sent(&n.on_element(el("<resume xmlns='urn:xmpp:sm:3' previd='x' h='0'/>"), &a));
    assert!(early.contains("unsupported-stanza-type"), "{early}");
    let (mut n, _) = secured_with(&a, policy_sm());
    n.on_element(plain_auth("juliet", "secret"), &a);
    let features = sent(&n.on_header(&header("example.com"), "s3", &a));
    assert!(
        features.contains("<sm xmlns='urn:xmpp:sm:3'/>"),
        "{features}"
    );
    let refused = sent(&n.on_element(el("<enable xmlns='urn:xmpp:sm:3'/>"), &a));
    assert_eq!(
        refused,
        "<failed xmlns='urn:xmpp:sm:3'><unexpected-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
    );
    let bad = sent(&n.on_element(el("<resume xmlns='urn:xmpp:sm:3' previd='x'/>"), &a));
    assert!(bad.contains("<bad-request"), "{bad}");
    assert_eq!(
        n.on_element(el("<resume xmlns='urn:xmpp:sm:3' previd='x' h='3'/>"), &a),
        vec![Action::Resume {
            previd: "x".into(),
            h: 3
        }]
    );
    // One resume or bind at a time.
    let twice = sent(&n.on_element(el("<resume xmlns='urn:xmpp:sm:3' previd='x' h='3'/>"), &a));
    assert!(twice.contains("unexpected-request"), "{twice}");
    let failed = sent(&n.resume_failed(proto::error::StanzaErrorCondition::ItemNotFound, None));
    assert_eq!(
        failed,
        "<failed xmlns='urn:xmpp:sm:3'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
    );
    assert!(!n.is_established());
    // A resume that succeeds establishes the stream.
    n.on_element(el("<resume xmlns='urn:xmpp:sm:3' previd='y' h='0'/>"), &a);
    let resumed = sent(&n.resumed("y", 7));
    assert_eq!(resumed, "<resumed xmlns='urn:xmpp:sm:3' previd='y' h='7'/>");
    assert!(n.is_established());
    // The resumed session's count continues.
    assert_eq!(
        sent(&n.on_element(el("<r xmlns='urn:xmpp:sm:3'/>"), &a)),
        "<a xmlns='urn:xmpp:sm:3' h='7'/>"
    );
}

/// XEP-0198 §3-§4 on a bound stream: enable once, every stanza counted (also those answered
/// here), `<r/>` answered with the count, `<a/>` passed on for the session's queue.
#[test]
fn stream_management_counts_and_answers_requests() {
    let a = auth();
    let (mut n, _) = secured_with(&a, policy_sm());
    n.on_element(plain_auth("juliet", "secret"), &a);
    n.on_header(&header("example.com"), "s3", &a);
    n.on_element(
        el("<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>"),
        &a,
    );
    n.bound("b1", "juliet@example.com/x");
    let msg = el("<message xmlns='jabber:client' to='romeo@example.com'><body>hi</body></message>");
    // Not counted before enable; an early <r/> is ignored.
    n.on_element(msg.clone(), &a);
    assert_eq!(n.sm_handled(), None);
    assert_eq!(n.on_element(el("<r xmlns='urn:xmpp:sm:3'/>"), &a), vec![]);
    let enable = el("<enable xmlns='urn:xmpp:sm:3' resume='true'/>");
    assert_eq!(
        n.on_element(enable.clone(), &a),
        vec![Action::Nonza(enable.clone())]
    );
    assert_eq!(n.sm_handled(), Some(0));
    n.on_element(msg.clone(), &a);
    // Answered here, counted all the same.
    n.on_element(
        el("<iq xmlns='jabber:client' type='set' id='s'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>"),
        &a,
    );
    assert_eq!(
        sent(&n.on_element(el("<r xmlns='urn:xmpp:sm:3'/>"), &a)),
        "<a xmlns='urn:xmpp:sm:3' h='2'/>"
    );
    let ack = el("<a xmlns='urn:xmpp:sm:3' h='0'/>");
    assert_eq!(n.on_element(ack.clone(), &a), vec![Action::Nonza(ack)]);
    let again = sent(&n.on_element(enable, &a));
    assert!(again.contains("<unexpected-request"), "{again}");
    let resume = sent(&n.on_element(el("<resume xmlns='urn:xmpp:sm:3' previd='p' h='1'/>"), &a));
    assert!(resume.contains("<unexpected-request"), "{resume}");
    assert_eq!(n.sm_handled(), Some(2), "nonzas are not stanzas");
    let bad = sent(&n.on_element(el("<a xmlns='urn:xmpp:sm:3' h='many'/>"), &a));
    assert!(bad.contains("<undefined-condition"), "{bad}");
    assert!(!n.is_established());
}
