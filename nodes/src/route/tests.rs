//! [`decide`] case by case against RFC 6120 §10 and RFC 6121 §8.5: message types × bare,
//! full, absent-resource and unknown-account recipients; IQ types; presence types;
//! priorities (negative, ties); resources on other nodes; component domains; federation.

use super::*;

/// A routing table in a test: `example.org` is local, accounts listed, resources with
/// their location and priority (`None`: not available).
struct View {
    domains: Vec<&'static str>,
    components: Vec<&'static str>,
    federation: bool,
    accounts: Vec<Jid>,
    resources: Vec<(Jid, Location, Option<i8>)>,
}

impl View {
    fn new() -> View {
        View {
            domains: vec!["example.org"],
            components: Vec::new(),
            federation: true,
            accounts: vec![jid("juliet@example.org"), jid("romeo@example.org")],
            resources: Vec::new(),
        }
    }

    fn with(mut self, full: &str, at: Location, priority: Option<i8>) -> View {
        self.resources.push((jid(full), at, priority));
        self
    }
}

impl RoutingView for View {
    fn is_local_domain(&self, domain: &str) -> bool {
        self.domains.contains(&domain)
    }
    fn is_component(&self, domain: &str) -> bool {
        self.components.contains(&domain)
    }
    fn federation(&self) -> bool {
        self.federation
    }
    fn account_exists(&self, bare: &Jid) -> bool {
        self.accounts.contains(bare)
    }
    fn account_namespace(&self, ns: &str) -> bool {
        ns == "vcard-temp"
    }
    fn resources<'a>(&'a self, bare: &Jid) -> impl Iterator<Item = Resource<'a>> + 'a {
        let bare = bare.clone();
        // This node's first, as the Router's view yields them.
        let here = self
            .resources
            .iter()
            .filter(|(_, at, _)| *at == Location::Here);
        let there = self
            .resources
            .iter()
            .filter(|(_, at, _)| *at != Location::Here);
        here.chain(there)
            .filter(move |(j, _, _)| j.to_bare() == bare)
            .map(|(jid, at, priority)| Resource {
                jid,
                at: *at,
                priority: *priority,
            })
    }
}

fn jid(s: &str) -> Jid {
    Jid::parse(s).expect("valid jid")
}

fn stanza(xml: &str) -> Element {
    Element::parse(xml).expect("valid xml")
}

fn message(kind: Option<&str>) -> Element {
    let t = kind.map(|t| format!(" type='{t}'")).unwrap_or_default();
    stanza(&format!(
        "<message xmlns='jabber:client'{t}><body>hi</body></message>"
    ))
}

fn presence(kind: Option<&str>) -> Element {
    let t = kind.map(|t| format!(" type='{t}'")).unwrap_or_default();
    stanza(&format!("<presence xmlns='jabber:client'{t}/>"))
}

fn iq(kind: &str, ns: &str) -> Element {
    stanza(&format!(
        "<iq xmlns='jabber:client' type='{kind}' id='i1'><query xmlns='{ns}'/></iq>"
    ))
}

const ROMEO: &str = "romeo@example.org/orchard";

fn route(view: &View, to: &str, s: &Element) -> Vec<Delivery> {
    decide(view, &jid(ROMEO), &jid(to), s)
}

fn local(full: &str, address: Address) -> Delivery {
    Delivery::Local {
        resource: jid(full),
        address,
    }
}

fn remote(node: NodeId, full: &str, address: Address) -> Delivery {
    Delivery::Remote {
        node,
        resource: jid(full),
        address,
    }
}

fn bounce(c: StanzaErrorCondition) -> Vec<Delivery> {
    vec![Delivery::Bounce(c)]
}

const SU: StanzaErrorCondition = StanzaErrorCondition::ServiceUnavailable;

/// Juliet with two resources here (balcony 5, chamber 1) and one on node 2 (garden 5).
fn juliet_three() -> View {
    View::new()
        .with("juliet@example.org/balcony", Location::Here, Some(5))
        .with("juliet@example.org/chamber", Location::Here, Some(1))
        .with("juliet@example.org/garden", Location::Node(2), Some(5))
}

// --- RFC 6121 §8.5.3.1: full JID, resource bound ---

#[test]
fn full_jid_bound_here_gets_every_stanza_kind() {
    let v = juliet_three();
    let to = "juliet@example.org/chamber";
    let want = vec![local(to, Address::Full)];
    for s in [
        message(Some("chat")),
        message(Some("normal")),
        message(Some("headline")),
        message(Some("groupchat")),
        message(Some("error")),
        presence(None),
        presence(Some("unavailable")),
        iq("get", "jabber:iq:version"),
        iq("result", "jabber:iq:version"),
    ] {
        assert_eq!(route(&v, to, &s), want, "{}", s.to_xml_string());
    }
}

#[test]
fn full_jid_bound_on_another_node_goes_over_the_node_link() {
    let v = juliet_three();
    let to = "juliet@example.org/garden";
    assert_eq!(
        route(&v, to, &message(Some("chat"))),
        vec![remote(2, to, Address::Full)]
    );
    assert_eq!(
        route(&v, to, &iq("set", "urn:example")),
        vec![remote(2, to, Address::Full)]
    );
}

#[test]
fn full_jid_of_a_resource_without_presence_still_gets_it() {
    // §8.5.3.1: a connected resource gets stanzas to its full JID, available or not.
    let v = View::new().with("juliet@example.org/balcony", Location::Here, None);
    let to = "juliet@example.org/balcony";
    assert_eq!(
        route(&v, to, &message(Some("normal"))),
        vec![local(to, Address::Full)]
    );
}

// --- RFC 6121 §8.5.3.2: full JID, no such resource ---

#[test]
fn absent_resource_chat_goes_to_the_bare_jid() {
    let v = juliet_three();
    let got = route(&v, "juliet@example.org/gone", &message(Some("chat")));
    assert_eq!(
        got,
        vec![
            local("juliet@example.org/balcony", Address::Bare),
            remote(2, "juliet@example.org/garden", Address::Bare),
        ]
    );
}

#[test]
fn absent_resource_chat_without_available_resource_is_stored() {
    let v = View::new();
    assert_eq!(
        route(&v, "juliet@example.org/gone", &message(Some("chat"))),
        vec![Delivery::Offline]
    );
}

#[test]
fn absent_resource_normal_and_groupchat_bounce() {
    // §8.5.3.2.1 (normal, groupchat): ignore or service-unavailable; the server answers, and
    // never hands it to another resource nor stores it.
    let v = juliet_three();
    for kind in [None, Some("normal"), Some("groupchat")] {
        assert_eq!(
            route(&v, "juliet@example.org/gone", &message(kind)),
            bounce(SU),
            "{kind:?}"
        );
    }
}

#[test]
fn absent_resource_headline_and_error_are_ignored() {
    let v = juliet_three();
    for kind in ["headline", "error"] {
        assert_eq!(
            route(&v, "juliet@example.org/gone", &message(Some(kind))),
            vec![Delivery::Drop],
            "{kind}"
        );
    }
}

#[test]
fn absent_resource_subscription_presence_goes_to_the_bare_jid() {
    let v = juliet_three();
    assert_eq!(
        route(&v, "juliet@example.org/gone", &presence(Some("subscribe"))),
        vec![Delivery::Subscription(SubscriptionKind::Subscribe)]
    );
    assert_eq!(
        route(
            &v,
            "juliet@example.org/gone",
            &presence(Some("unsubscribed"))
        ),
        vec![Delivery::Subscription(SubscriptionKind::Unsubscribed)]
    );
}

#[test]
fn absent_resource_other_presence_is_ignored() {
    let v = juliet_three();
    for kind in [None, Some("unavailable"), Some("probe"), Some("error")] {
        assert_eq!(
            route(&v, "juliet@example.org/gone", &presence(kind)),
            vec![Delivery::Drop],
            "{kind:?}"
        );
    }
}

#[test]
fn absent_resource_iq_request_bounces_and_response_is_ignored() {
    let v = juliet_three();
    let to = "juliet@example.org/gone";
    assert_eq!(route(&v, to, &iq("get", "jabber:iq:version")), bounce(SU));
    assert_eq!(route(&v, to, &iq("set", "vcard-temp")), bounce(SU));
    assert_eq!(
        route(&v, to, &iq("result", "jabber:iq:version")),
        vec![Delivery::Drop]
    );
    assert_eq!(
        route(&v, to, &iq("error", "jabber:iq:version")),
        vec![Delivery::Drop]
    );
}

// --- RFC 6121 §8.5.2: bare JID ---

#[test]
fn bare_chat_goes_to_the_highest_priority_on_every_node() {
    // §8.5.2.1.1: balcony and garden tie at 5; chamber (1) gets nothing.
    let v = juliet_three();
    for kind in [Some("chat"), Some("normal"), None] {
        assert_eq!(
            route(&v, "juliet@example.org", &message(kind)),
            vec![
                local("juliet@example.org/balcony", Address::Bare),
                remote(2, "juliet@example.org/garden", Address::Bare),
            ],
            "{kind:?}"
        );
    }
}

#[test]
fn bare_chat_to_the_single_best_resource() {
    let v = View::new()
        .with("juliet@example.org/balcony", Location::Here, Some(1))
        .with("juliet@example.org/garden", Location::Node(3), Some(7));
    assert_eq!(
        route(&v, "juliet@example.org", &message(Some("chat"))),
        vec![remote(3, "juliet@example.org/garden", Address::Bare)]
    );
}

#[test]
fn bare_chat_skips_negative_priority_and_unavailable_resources() {
    // §8.5.2.1.1: a negative priority never gets bare-JID messages; §8.5.2.2.1: with no
    // other, the message is stored.
    let v = View::new()
        .with("juliet@example.org/balcony", Location::Here, Some(-1))
        .with("juliet@example.org/chamber", Location::Here, None)
        .with("juliet@example.org/garden", Location::Node(2), Some(-5));
    assert_eq!(
        route(&v, "juliet@example.org", &message(Some("chat"))),
        vec![Delivery::Offline]
    );
    assert_eq!(
        route(&v, "juliet@example.org", &message(Some("normal"))),
        vec![Delivery::Offline]
    );
}

#[test]
fn bare_chat_priority_zero_counts() {
    let v = View::new()
        .with("juliet@example.org/balcony", Location::Here, Some(0))
        .with("juliet@example.org/chamber", Location::Here, Some(-1));
    assert_eq!(
        route(&v, "juliet@example.org", &message(Some("chat"))),
        vec![local("juliet@example.org/balcony", Address::Bare)]
    );
}

#[test]
fn bare_message_of_unknown_type_is_normal() {
    // RFC 6121 §5.2.2: an unknown type is treated as normal.
    let v = View::new();
    assert_eq!(
        route(&v, "juliet@example.org", &message(Some("whisper"))),
        vec![Delivery::Offline]
    );
}

#[test]
fn bare_headline_to_every_non_negative_resource() {
    // §8.5.2.1.1: headline to all available resources with a non-negative priority; this
    // node's as full JIDs, other nodes' as addressed (the server's behaviour).
    let v = juliet_three()
        .with("juliet@example.org/attic", Location::Here, Some(-2))
        .with("juliet@example.org/cellar", Location::Node(3), Some(0));
    assert_eq!(
        route(&v, "juliet@example.org", &message(Some("headline"))),
        vec![
            local("juliet@example.org/balcony", Address::Full),
            local("juliet@example.org/chamber", Address::Full),
            remote(2, "juliet@example.org/garden", Address::Bare),
            remote(3, "juliet@example.org/cellar", Address::Bare),
        ]
    );
}

#[test]
fn bare_headline_without_resource_is_dropped_not_stored() {
    // §8.5.2.2.1: a headline is never stored.
    let v = View::new().with("juliet@example.org/balcony", Location::Here, Some(-1));
    assert_eq!(
        route(&v, "juliet@example.org", &message(Some("headline"))),
        Vec::<Delivery>::new()
    );
}

#[test]
fn bare_groupchat_bounces() {
    let v = juliet_three();
    assert_eq!(
        route(&v, "juliet@example.org", &message(Some("groupchat"))),
        bounce(SU)
    );
}

#[test]
fn bare_error_message_to_best_resources_never_stored_never_answered() {
    let v = juliet_three();
    assert_eq!(
        route(&v, "juliet@example.org", &message(Some("error"))),
        vec![
            local("juliet@example.org/balcony", Address::Full),
            remote(2, "juliet@example.org/garden", Address::Full),
        ]
    );
    let nobody = View::new();
    assert_eq!(
        route(&nobody, "juliet@example.org", &message(Some("error"))),
        Vec::<Delivery>::new()
    );
}

#[test]
fn bare_presence_to_every_available_resource() {
    // §8.5.2.1.3: all available resources, negative priority included.
    let v = juliet_three()
        .with("juliet@example.org/attic", Location::Here, Some(-2))
        .with("juliet@example.org/cellar", Location::Node(3), None);
    let want = vec![
        local("juliet@example.org/balcony", Address::Bare),
        local("juliet@example.org/chamber", Address::Bare),
        local("juliet@example.org/attic", Address::Bare),
        remote(2, "juliet@example.org/garden", Address::Bare),
    ];
    assert_eq!(route(&v, "juliet@example.org", &presence(None)), want);
    assert_eq!(
        route(&v, "juliet@example.org", &presence(Some("unavailable"))),
        want
    );
}

#[test]
fn bare_subscription_presence_goes_to_the_roster_shard() {
    let v = juliet_three();
    for kind in [
        SubscriptionKind::Subscribe,
        SubscriptionKind::Subscribed,
        SubscriptionKind::Unsubscribe,
        SubscriptionKind::Unsubscribed,
    ] {
        assert_eq!(
            route(&v, "juliet@example.org", &presence(Some(kind.as_str()))),
            vec![Delivery::Subscription(kind)]
        );
    }
}

#[test]
fn bare_probe_local_sender_dropped_federated_sender_to_shard() {
    let v = juliet_three();
    let probe = presence(Some("probe"));
    assert_eq!(
        route(&v, "juliet@example.org", &probe),
        vec![Delivery::Drop]
    );
    assert_eq!(
        decide(
            &v,
            &jid("mercutio@verona.lit/x"),
            &jid("juliet@example.org"),
            &probe
        ),
        vec![Delivery::RemoteProbe]
    );
}

#[test]
fn bare_iq_in_account_namespace_goes_to_the_shard() {
    // §8.5.2.1.4: the server answers on the user's behalf.
    let v = View::new();
    assert_eq!(
        route(&v, "juliet@example.org", &iq("get", "vcard-temp")),
        vec![Delivery::AccountIq { exists: true }]
    );
}

#[test]
fn bare_iq_other_namespace_bounces_response_ignored() {
    let v = juliet_three();
    assert_eq!(
        route(&v, "juliet@example.org", &iq("get", "jabber:iq:version")),
        bounce(SU)
    );
    assert_eq!(
        route(&v, "juliet@example.org", &iq("result", "vcard-temp")),
        vec![Delivery::Drop]
    );
    assert_eq!(
        route(&v, "juliet@example.org", &iq("error", "vcard-temp")),
        vec![Delivery::Drop]
    );
}

// --- RFC 6121 §8.5.1: no such account ---

#[test]
fn unknown_account_messages() {
    let v = View::new();
    for to in ["nobody@example.org", "nobody@example.org/res"] {
        for kind in [None, Some("normal"), Some("chat"), Some("groupchat")] {
            assert_eq!(route(&v, to, &message(kind)), bounce(SU), "{to} {kind:?}");
        }
        for kind in ["headline", "error"] {
            assert_eq!(
                route(&v, to, &message(Some(kind))),
                vec![Delivery::Drop],
                "{to} {kind}"
            );
        }
    }
}

#[test]
fn unknown_account_presence_is_silently_dropped() {
    let v = View::new();
    for kind in [None, Some("subscribe"), Some("probe"), Some("unavailable")] {
        for to in ["nobody@example.org", "nobody@example.org/res"] {
            assert_eq!(
                route(&v, to, &presence(kind)),
                vec![Delivery::Drop],
                "{to} {kind:?}"
            );
        }
    }
}

#[test]
fn unknown_account_iq() {
    let v = View::new();
    // Account namespaces take the same hop as an existing account's (no enumeration).
    assert_eq!(
        route(&v, "nobody@example.org", &iq("get", "vcard-temp")),
        vec![Delivery::AccountIq { exists: false }]
    );
    assert_eq!(
        route(&v, "nobody@example.org/res", &iq("get", "vcard-temp")),
        bounce(SU)
    );
    assert_eq!(
        route(&v, "nobody@example.org", &iq("set", "jabber:iq:version")),
        bounce(SU)
    );
    assert_eq!(
        route(&v, "nobody@example.org", &iq("result", "vcard-temp")),
        vec![Delivery::Drop]
    );
}

#[test]
fn an_account_with_sessions_elsewhere_exists() {
    // The view decides existence; resources on another node are found as for local ones.
    let mut v = View::new().with("tybalt@example.org/sword", Location::Node(4), Some(0));
    v.accounts.push(jid("tybalt@example.org"));
    assert_eq!(
        route(&v, "tybalt@example.org", &message(Some("chat"))),
        vec![remote(4, "tybalt@example.org/sword", Address::Bare)]
    );
}

// --- RFC 6120 §10.3: the server's own domain ---

#[test]
fn to_the_domain_iq_request_bounces_others_dropped() {
    let v = View::new();
    assert_eq!(route(&v, "example.org", &iq("get", "urn:x")), bounce(SU));
    assert_eq!(
        route(&v, "example.org", &iq("result", "urn:x")),
        vec![Delivery::Drop]
    );
    assert_eq!(
        route(&v, "example.org", &message(Some("chat"))),
        vec![Delivery::Drop]
    );
    assert_eq!(
        route(&v, "example.org/resource", &presence(None)),
        vec![Delivery::Drop]
    );
}

// --- RFC 6120 §10.4: other domains ---

#[test]
fn other_domain_goes_to_federation() {
    let v = View::new();
    assert_eq!(
        route(&v, "mercutio@verona.lit", &message(Some("chat"))),
        vec![Delivery::S2s]
    );
    assert_eq!(
        route(&v, "verona.lit", &iq("get", "urn:x")),
        vec![Delivery::S2s]
    );
}

#[test]
fn other_domain_without_federation_bounces_remote_server_not_found() {
    let mut v = View::new();
    v.federation = false;
    assert_eq!(
        route(&v, "mercutio@verona.lit", &message(Some("chat"))),
        bounce(StanzaErrorCondition::RemoteServerNotFound)
    );
    // An error is never answered with an error (RFC 6120 §8.3.1).
    assert_eq!(
        route(&v, "mercutio@verona.lit", &message(Some("error"))),
        vec![Delivery::Drop]
    );
}

#[test]
fn no_relaying_between_two_other_domains() {
    let v = View::new();
    assert_eq!(
        decide(
            &v,
            &jid("mercutio@verona.lit/x"),
            &jid("benvolio@mantua.lit"),
            &message(Some("chat"))
        ),
        bounce(StanzaErrorCondition::RemoteServerNotFound)
    );
}

// --- components ---

#[test]
fn component_domain_takes_any_jid_at_it() {
    let mut v = View::new();
    v.components.push("conference.example.org");
    let want = vec![Delivery::Component {
        domain: "conference.example.org".into(),
    }];
    for to in [
        "conference.example.org",
        "room@conference.example.org",
        "room@conference.example.org/nick",
    ] {
        for s in [
            message(Some("groupchat")),
            presence(None),
            iq("get", "http://jabber.org/protocol/disco#info"),
            message(Some("error")),
        ] {
            assert_eq!(route(&v, to, &s), want, "{to}");
        }
    }
    // Without federation too: a component is served here.
    v.federation = false;
    assert_eq!(
        route(&v, "room@conference.example.org", &message(Some("chat"))),
        want
    );
}

#[test]
fn a_component_sends_to_other_domains_over_s2s() {
    // XEP-0045 over federation: a room's presence, groupchat and private messages reach its
    // occupants on other servers; a remote component's stanzas are still not relayed.
    let mut v = View::new();
    v.components.push("conference.example.org");
    for s in [
        message(Some("groupchat")),
        presence(None),
        presence(Some("unavailable")),
        message(Some("chat")),
    ] {
        assert_eq!(
            decide(
                &v,
                &jid("room@conference.example.org/nick"),
                &jid("mercutio@verona.lit/phone"),
                &s
            ),
            vec![Delivery::S2s]
        );
    }
    assert_eq!(
        decide(
            &v,
            &jid("room@conference.verona.lit/nick"),
            &jid("benvolio@mantua.lit/x"),
            &message(Some("groupchat"))
        ),
        bounce(StanzaErrorCondition::RemoteServerNotFound)
    );
    v.federation = false;
    assert_eq!(
        decide(
            &v,
            &jid("room@conference.example.org/nick"),
            &jid("mercutio@verona.lit/phone"),
            &message(Some("groupchat"))
        ),
        bounce(StanzaErrorCondition::RemoteServerNotFound)
    );
}

#[test]
fn a_subdomain_without_component_is_another_domain() {
    let mut v = View::new();
    v.federation = false;
    assert_eq!(
        route(&v, "room@upload.example.org", &iq("get", "urn:x")),
        bounce(StanzaErrorCondition::RemoteServerNotFound)
    );
}

// --- errors are never answered ---

#[test]
fn error_stanzas_are_never_bounced() {
    let v = View::new();
    let err_iq = stanza("<iq xmlns='jabber:client' type='error' id='e'/>");
    let err_presence = presence(Some("error"));
    for to in [
        "nobody@example.org",
        "juliet@example.org/gone",
        "juliet@example.org",
        "example.org",
    ] {
        for s in [&message(Some("error")), &err_iq, &err_presence] {
            assert!(
                !route(&v, to, s)
                    .iter()
                    .any(|d| matches!(d, Delivery::Bounce(_))),
                "{to} {}",
                s.to_xml_string()
            );
        }
    }
}
