//! In-process tests: a whole node on port 0 (`nodes::node::run_until`) driven by the raw
//! client of `harness/`. Login over STARTTLS + PLAIN and over plaintext SCRAM-SHA-256,
//! a message between two sessions, XMPP Ping (XEP-0199), the server's disco#info features
//! (generated from the module registry), an unknown IQ (RFC 6120 §8.4: service-unavailable),
//! and the clean stop.

mod harness;

use std::time::Duration;

use harness::{error_condition, Client, NodeOptions, TestNode, DOMAIN, NS_BIND, NS_SASL};

fn accounts(names: &[&str]) -> NodeOptions {
    NodeOptions {
        accounts: names
            .iter()
            .map(|n| (n.to_string(), format!("pw-{n}")))
            .collect(),
        ..NodeOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_over_starttls_with_plain() {
    let node = TestNode::start(accounts(&["alice"]));
    let mut c = Client::connect(node.bound.c2s).await;
    let features = c.open_stream().await;
    // require_tls: STARTTLS is offered and required, SASL not yet (RFC 6120 §5.3.1).
    let starttls = features
        .get_child("starttls", harness::NS_TLS)
        .expect("starttls offered");
    assert!(starttls.get_child("required", harness::NS_TLS).is_some());
    let features = c.starttls(&node.cert_path()).await;
    let mechs: Vec<String> = features
        .get_child("mechanisms", NS_SASL)
        .expect("SASL offered after TLS")
        .children()
        .map(|m| m.text())
        .collect();
    assert!(mechs.iter().any(|m| m == "PLAIN"), "{mechs:?}");
    let features = c.auth_plain("alice", "pw-alice").await;
    assert!(features.get_child("bind", NS_BIND).is_some());
    let jid = c.bind("desk").await;
    assert_eq!(jid, format!("alice@{DOMAIN}/desk"));
    drop(c);
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_in_plaintext_with_scram_and_a_wrong_password_fails() {
    let node = TestNode::start(NodeOptions {
        plaintext_allowed: true,
        ..accounts(&["bob"])
    });
    let mut c = Client::connect(node.bound.c2s).await;
    let features = c.open_stream().await;
    let mechs: Vec<String> = features
        .get_child("mechanisms", NS_SASL)
        .expect("SASL offered without TLS when it is not required")
        .children()
        .map(|m| m.text())
        .collect();
    // No PLAIN over an unencrypted stream.
    assert!(!mechs.iter().any(|m| m == "PLAIN"), "{mechs:?}");
    c.auth_scram("bob", "pw-bob").await;
    assert_eq!(c.bind("r").await, format!("bob@{DOMAIN}/r"));

    let mut wrong = Client::connect(node.bound.c2s).await;
    wrong.open_stream().await;
    wrong
        .send(&format!(
            "<auth xmlns='{NS_SASL}' mechanism='PLAIN'>AGJvYgB3cm9uZw==</auth>"
        ))
        .await;
    let answer = wrong.recv().await;
    assert!(answer.is("failure", NS_SASL), "{}", answer.to_xml_string());
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_between_two_sessions() {
    let node = TestNode::start(accounts(&["alice", "bob"]));
    let mut a = Client::login(&node, "alice", "pw-alice", "one").await;
    let mut b = Client::login(&node, "bob", "pw-bob", "two").await;
    a.send(&format!(
        "<message to='{}' id='m1' type='chat'><body>hello</body></message>",
        b.jid
    ))
    .await;
    let got = b.expect(|e| e.name == "message").await;
    assert_eq!(got.attr("id"), Some("m1"));
    // RFC 6120 §8.1.2.1: the server stamps the sender's full JID.
    assert_eq!(got.attr("from"), Some(a.jid.as_str()));
    assert_eq!(
        got.get_child("body", harness::NS_CLIENT).map(|b| b.text()),
        Some("hello".to_string())
    );
    // Nothing comes back to the sender.
    let echoed = a.quiet(Duration::from_millis(200)).await;
    assert!(
        echoed.iter().all(|e| e.name != "message"),
        "{:?}",
        echoed.iter().map(|e| e.to_xml_string()).collect::<Vec<_>>()
    );
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_the_server() {
    let node = TestNode::start(accounts(&["alice"]));
    let mut a = Client::login(&node, "alice", "pw-alice", "one").await;
    let pong = a
        .iq("get", Some(DOMAIN), "<ping xmlns='urn:xmpp:ping'/>")
        .await;
    assert_eq!(
        pong.attr("type"),
        Some("result"),
        "{}",
        pong.to_xml_string()
    );
    assert_eq!(pong.attr("from"), Some(DOMAIN));
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disco_features_come_from_the_modules() {
    let node = TestNode::start(accounts(&["alice"]));
    let mut a = Client::login(&node, "alice", "pw-alice", "one").await;
    let info = a
        .iq(
            "get",
            Some(DOMAIN),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    let features: Vec<String> = info
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .expect("a disco#info result")
        .children()
        .filter(|c| c.name == "feature")
        .filter_map(|c| c.attr("var").map(String::from))
        .collect();
    for f in [
        "urn:xmpp:carbons:2",
        "urn:xmpp:time",
        "urn:xmpp:ping",
        "jabber:iq:version",
    ] {
        assert!(features.iter().any(|x| x == f), "{f} missing: {features:?}");
    }
    // CSI is a stream feature (XEP-0352 §4), not a disco feature of the server.
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_module_is_gone_and_csi_is_a_stream_feature() {
    let node = TestNode::start(NodeOptions {
        extra_toml: "[modules.time]\nenabled = false\n".into(),
        ..accounts(&["alice"])
    });
    let mut c = Client::connect(node.bound.c2s).await;
    c.open_stream().await;
    c.starttls(&node.cert_path()).await;
    let features = c.auth_plain("alice", "pw-alice").await;
    assert!(
        features.get_child("csi", "urn:xmpp:csi:0").is_some(),
        "{}",
        features.to_xml_string()
    );
    c.bind("one").await;
    let answer = c
        .iq("get", Some(DOMAIN), "<time xmlns='urn:xmpp:time'/>")
        .await;
    assert_eq!(
        error_condition(&answer).as_deref(),
        Some("service-unavailable")
    );
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_iq_is_service_unavailable() {
    let node = TestNode::start(accounts(&["alice"]));
    let mut a = Client::login(&node, "alice", "pw-alice", "one").await;
    let answer = a
        .iq("get", Some(DOMAIN), "<query xmlns='urn:example:nothing'/>")
        .await;
    assert_eq!(
        answer.attr("type"),
        Some("error"),
        "{}",
        answer.to_xml_string()
    );
    assert_eq!(
        error_condition(&answer).as_deref(),
        Some("service-unavailable")
    );
    // The stream goes on.
    let pong = a
        .iq("get", Some(DOMAIN), "<ping xmlns='urn:xmpp:ping'/>")
        .await;
    assert_eq!(pong.attr("type"), Some("result"));
    node.stop();
}
