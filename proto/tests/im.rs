//! The subscription state machine against RFC 6121 Appendix A, row by row for each of the
//! nine defined states (A.1) and the three that can carry a pre-approval (§3.4), then two
//! accounts, Juliet and Romeo, driven through whole handshakes over an in-order link.

use std::collections::{HashSet, VecDeque};

use proto::im::{
    inbound, outbound, roster_attrs, PresenceToSend, SubState, Subscription, SubscriptionKind,
};
use PresenceToSend::{Available, Unavailable};
use SubscriptionKind::{Subscribe, Subscribed, Unsubscribe, Unsubscribed};

const fn st(subscription: Subscription, pending_out: bool, pending_in: bool) -> SubState {
    SubState {
        subscription,
        pending_out,
        pending_in,
        approved: false,
    }
}

const fn approved(state: SubState) -> SubState {
    SubState {
        approved: true,
        ..state
    }
}

// A.1 Defined States.
const NONE: SubState = st(Subscription::None, false, false);
const NONE_PENDING_OUT: SubState = st(Subscription::None, true, false);
const NONE_PENDING_IN: SubState = st(Subscription::None, false, true);
const NONE_PENDING_OUT_IN: SubState = st(Subscription::None, true, true);
const TO: SubState = st(Subscription::To, false, false);
const TO_PENDING_IN: SubState = st(Subscription::To, false, true);
const FROM: SubState = st(Subscription::From, false, false);
const FROM_PENDING_OUT: SubState = st(Subscription::From, true, false);
const BOTH: SubState = st(Subscription::Both, false, false);

const DEFINED_STATES: [SubState; 9] = [
    NONE,
    NONE_PENDING_OUT,
    NONE_PENDING_IN,
    NONE_PENDING_OUT_IN,
    TO,
    TO_PENDING_IN,
    FROM,
    FROM_PENDING_OUT,
    BOTH,
];

// §3.4.2 items 3 and 4: the states in which a `subscribed` is noted as a pre-approval.
const NONE_APPROVED: SubState = approved(NONE);
const NONE_PENDING_OUT_APPROVED: SubState = approved(NONE_PENDING_OUT);
const TO_APPROVED: SubState = approved(TO);

const PRE_APPROVED_STATES: [SubState; 3] = [NONE_APPROVED, NONE_PENDING_OUT_APPROVED, TO_APPROVED];

const YES: bool = true;
const NO: bool = false;

/// The NEW STATE column.
#[derive(Debug, Clone, Copy)]
enum New {
    NoStateChange,
    Becomes(SubState),
}
use New::{Becomes, NoStateChange};

/// An A.2 row: EXISTING STATE, ROUTE?, NEW STATE, then the presence §3 adds.
type OutRow = (SubState, bool, New, Option<PresenceToSend>);
/// An A.3 row: EXISTING STATE, DELIVER?, NEW STATE, then the auto-reply and presence §3 adds.
type InRow = (
    SubState,
    bool,
    New,
    Option<SubscriptionKind>,
    Option<PresenceToSend>,
);

/// A.2.1 Subscribe (§3.1.2).
#[rustfmt::skip]
const A_2_1_SUBSCRIBE: [OutRow; 9] = [
    // EXISTING STATE      ROUTE?  NEW STATE                      presence
    (NONE,                 YES,    Becomes(NONE_PENDING_OUT),     None),
    (NONE_PENDING_OUT,     YES,    NoStateChange,                 None),
    (NONE_PENDING_IN,      YES,    Becomes(NONE_PENDING_OUT_IN),  None),
    (NONE_PENDING_OUT_IN,  YES,    NoStateChange,                 None),
    (TO,                   YES,    NoStateChange,                 None),
    (TO_PENDING_IN,        YES,    NoStateChange,                 None),
    (FROM,                 YES,    Becomes(FROM_PENDING_OUT),     None),
    (FROM_PENDING_OUT,     YES,    NoStateChange,                 None),
    (BOTH,                 YES,    NoStateChange,                 None),
];

/// A.2.2 Unsubscribe (§3.3.2).
#[rustfmt::skip]
const A_2_2_UNSUBSCRIBE: [OutRow; 9] = [
    // EXISTING STATE      ROUTE?  NEW STATE                      presence
    (NONE,                 YES,    NoStateChange,                 None),
    (NONE_PENDING_OUT,     YES,    Becomes(NONE),                 None),
    (NONE_PENDING_IN,      YES,    NoStateChange,                 None),
    (NONE_PENDING_OUT_IN,  YES,    Becomes(NONE_PENDING_IN),      None),
    (TO,                   YES,    Becomes(NONE),                 None),
    (TO_PENDING_IN,        YES,    Becomes(NONE_PENDING_IN),      None),
    (FROM,                 YES,    NoStateChange,                 None),
    (FROM_PENDING_OUT,     YES,    Becomes(FROM),                 None),
    (BOTH,                 YES,    Becomes(FROM),                 None),
];

/// A.2.3 Subscribed (§3.1.5, §3.4.2). Footnote [1], "no state change" apart from the
/// pre-approval (§3.4.2 items 3 and 4), which sets the approved flag.
#[rustfmt::skip]
const A_2_3_SUBSCRIBED: [OutRow; 9] = [
    // EXISTING STATE      ROUTE?  NEW STATE                           presence (§3.1.5)
    (NONE,                 NO,     Becomes(NONE_APPROVED),             None), // [1]
    (NONE_PENDING_OUT,     NO,     Becomes(NONE_PENDING_OUT_APPROVED), None), // [1]
    (NONE_PENDING_IN,      YES,    Becomes(FROM),                      Some(Available)),
    (NONE_PENDING_OUT_IN,  YES,    Becomes(FROM_PENDING_OUT),          Some(Available)),
    (TO,                   NO,     Becomes(TO_APPROVED),               None), // [1]
    (TO_PENDING_IN,        YES,    Becomes(BOTH),                      Some(Available)),
    (FROM,                 NO,     NoStateChange,                      None),
    (FROM_PENDING_OUT,     NO,     NoStateChange,                      None),
    (BOTH,                 NO,     NoStateChange,                      None),
];

/// A.2.4 Unsubscribed (§3.1.4 refusal, §3.2.2 cancellation). Footnote [2]: may cancel a
/// pre-approval (see the pre-approval tables below).
#[rustfmt::skip]
const A_2_4_UNSUBSCRIBED: [OutRow; 9] = [
    // EXISTING STATE      ROUTE?  NEW STATE                      presence (§3.2.2)
    (NONE,                 NO,     NoStateChange,                 None), // [2]
    (NONE_PENDING_OUT,     NO,     NoStateChange,                 None), // [2]
    (NONE_PENDING_IN,      YES,    Becomes(NONE),                 None),
    (NONE_PENDING_OUT_IN,  YES,    Becomes(NONE_PENDING_OUT),     None),
    (TO,                   NO,     NoStateChange,                 None), // [2]
    (TO_PENDING_IN,        YES,    Becomes(TO),                   None),
    (FROM,                 YES,    Becomes(NONE),                 Some(Unavailable)),
    (FROM_PENDING_OUT,     YES,    Becomes(NONE_PENDING_OUT),     Some(Unavailable)),
    (BOTH,                 YES,    Becomes(TO),                   Some(Unavailable)),
];

/// A.3.1 Subscribe (§3.1.3). "no *": the server auto-replies `subscribed`.
#[rustfmt::skip]
const A_3_1_SUBSCRIBE: [InRow; 9] = [
    // EXISTING STATE      DELIVER?  NEW STATE                      auto-reply        presence
    (NONE,                 YES,      Becomes(NONE_PENDING_IN),      None,             None),
    (NONE_PENDING_OUT,     YES,      Becomes(NONE_PENDING_OUT_IN),  None,             None),
    (NONE_PENDING_IN,      NO,       NoStateChange,                 None,             None),
    (NONE_PENDING_OUT_IN,  NO,       NoStateChange,                 None,             None),
    (TO,                   YES,      Becomes(TO_PENDING_IN),        None,             None),
    (TO_PENDING_IN,        NO,       NoStateChange,                 None,             None),
    (FROM,                 NO,       NoStateChange,                 Some(Subscribed), None), // *
    (FROM_PENDING_OUT,     NO,       NoStateChange,                 Some(Subscribed), None), // *
    (BOTH,                 NO,       NoStateChange,                 Some(Subscribed), None), // *
];

/// A.3.2 Unsubscribe (§3.3.3).
#[rustfmt::skip]
const A_3_2_UNSUBSCRIBE: [InRow; 9] = [
    // EXISTING STATE      DELIVER?  NEW STATE                      auto-reply  presence (§3.3.3)
    (NONE,                 NO,       NoStateChange,                 None,       None),
    (NONE_PENDING_OUT,     NO,       NoStateChange,                 None,       None),
    (NONE_PENDING_IN,      YES,      Becomes(NONE),                 None,       None),
    (NONE_PENDING_OUT_IN,  YES,      Becomes(NONE_PENDING_OUT),     None,       None),
    (TO,                   NO,       NoStateChange,                 None,       None),
    (TO_PENDING_IN,        YES,      Becomes(TO),                   None,       None),
    (FROM,                 YES,      Becomes(NONE),                 None,       Some(Unavailable)),
    (FROM_PENDING_OUT,     YES,      Becomes(NONE_PENDING_OUT),     None,       Some(Unavailable)),
    (BOTH,                 YES,      Becomes(TO),                   None,       Some(Unavailable)),
];

/// A.3.3 Subscribed (§3.1.6).
#[rustfmt::skip]
const A_3_3_SUBSCRIBED: [InRow; 9] = [
    // EXISTING STATE      DELIVER?  NEW STATE                      auto-reply  presence
    (NONE,                 NO,       NoStateChange,                 None,       None),
    (NONE_PENDING_OUT,     YES,      Becomes(TO),                   None,       None),
    (NONE_PENDING_IN,      NO,       NoStateChange,                 None,       None),
    (NONE_PENDING_OUT_IN,  YES,      Becomes(TO_PENDING_IN),        None,       None),
    (TO,                   NO,       NoStateChange,                 None,       None),
    (TO_PENDING_IN,        NO,       NoStateChange,                 None,       None),
    (FROM,                 NO,       NoStateChange,                 None,       None),
    (FROM_PENDING_OUT,     YES,      Becomes(BOTH),                 None,       None),
    (BOTH,                 NO,       NoStateChange,                 None,       None),
];

/// A.3.4 Unsubscribed (§3.2.3).
#[rustfmt::skip]
const A_3_4_UNSUBSCRIBED: [InRow; 9] = [
    // EXISTING STATE      DELIVER?  NEW STATE                      auto-reply  presence
    (NONE,                 NO,       NoStateChange,                 None,       None),
    (NONE_PENDING_OUT,     YES,      Becomes(NONE),                 None,       None),
    (NONE_PENDING_IN,      NO,       NoStateChange,                 None,       None),
    (NONE_PENDING_OUT_IN,  YES,      Becomes(NONE_PENDING_IN),      None,       None),
    (TO,                   YES,      Becomes(NONE),                 None,       None),
    (TO_PENDING_IN,        YES,      Becomes(NONE_PENDING_IN),      None,       None),
    (FROM,                 NO,       NoStateChange,                 None,       None),
    (FROM_PENDING_OUT,     YES,      Becomes(FROM),                 None,       None),
    (BOTH,                 YES,      Becomes(FROM),                 None,       None),
];

// §3.4 Pre-approval: the owner's own stanzas from the three pre-approved states.
#[rustfmt::skip]
const PRE_APPROVED_OUT_SUBSCRIBE: [OutRow; 3] = [
    (NONE_APPROVED,             YES, Becomes(NONE_PENDING_OUT_APPROVED), None),
    (NONE_PENDING_OUT_APPROVED, YES, NoStateChange,                      None),
    (TO_APPROVED,               YES, NoStateChange,                      None),
];
#[rustfmt::skip]
const PRE_APPROVED_OUT_UNSUBSCRIBE: [OutRow; 3] = [
    (NONE_APPROVED,             YES, NoStateChange,                      None),
    (NONE_PENDING_OUT_APPROVED, YES, Becomes(NONE_APPROVED),             None),
    (TO_APPROVED,               YES, Becomes(NONE_APPROVED),             None),
];
/// §3.4.2 item 4: already noted, nothing more to do.
#[rustfmt::skip]
const PRE_APPROVED_OUT_SUBSCRIBED: [OutRow; 3] = [
    (NONE_APPROVED,             NO,  NoStateChange,                      None),
    (NONE_PENDING_OUT_APPROVED, NO,  NoStateChange,                      None),
    (TO_APPROVED,               NO,  NoStateChange,                      None),
];
/// A.2.4 footnote [2]: the pre-approval is cancelled, nothing is routed.
#[rustfmt::skip]
const PRE_APPROVED_OUT_UNSUBSCRIBED: [OutRow; 3] = [
    (NONE_APPROVED,             NO,  Becomes(NONE),                      None),
    (NONE_PENDING_OUT_APPROVED, NO,  Becomes(NONE_PENDING_OUT),          None),
    (TO_APPROVED,               NO,  Becomes(TO),                        None),
];

// §3.4 Pre-approval: the contact's stanzas reaching the three pre-approved states.
/// The request is approved on the owner's behalf, the roster item shows the new subscriber and
/// the owner's presence follows.
#[rustfmt::skip]
const PRE_APPROVED_IN_SUBSCRIBE: [InRow; 3] = [
    (NONE_APPROVED,             NO,  Becomes(FROM),             Some(Subscribed), Some(Available)),
    (NONE_PENDING_OUT_APPROVED, NO,  Becomes(FROM_PENDING_OUT), Some(Subscribed), Some(Available)),
    (TO_APPROVED,               NO,  Becomes(BOTH),             Some(Subscribed), Some(Available)),
];
#[rustfmt::skip]
const PRE_APPROVED_IN_UNSUBSCRIBE: [InRow; 3] = [
    (NONE_APPROVED,             NO,  NoStateChange,             None, None),
    (NONE_PENDING_OUT_APPROVED, NO,  NoStateChange,             None, None),
    (TO_APPROVED,               NO,  NoStateChange,             None, None),
];
#[rustfmt::skip]
const PRE_APPROVED_IN_SUBSCRIBED: [InRow; 3] = [
    (NONE_APPROVED,             NO,  NoStateChange,             None, None),
    (NONE_PENDING_OUT_APPROVED, YES, Becomes(TO_APPROVED),      None, None),
    (TO_APPROVED,               NO,  NoStateChange,             None, None),
];
#[rustfmt::skip]
const PRE_APPROVED_IN_UNSUBSCRIBED: [InRow; 3] = [
    (NONE_APPROVED,             NO,  NoStateChange,             None, None),
    (NONE_PENDING_OUT_APPROVED, YES, Becomes(NONE_APPROVED),    None, None),
    (TO_APPROVED,               YES, Becomes(NONE_APPROVED),    None, None),
];

/// The RFC's name for a state, for failure messages.
fn name(state: SubState) -> String {
    let mut name = match state.subscription {
        Subscription::None => "None",
        Subscription::To => "To",
        Subscription::From => "From",
        Subscription::Both => "Both",
    }
    .to_string();
    match (state.pending_out, state.pending_in) {
        (true, true) => name.push_str(" + Pending Out+In"),
        (true, false) => name.push_str(" + Pending Out"),
        (false, true) => name.push_str(" + Pending In"),
        (false, false) => {}
    }
    if state.approved {
        name.push_str(" (approved)");
    }
    name
}

fn expected_state(existing: SubState, new: New) -> SubState {
    match new {
        NoStateChange => existing,
        Becomes(state) => state,
    }
}

fn check_outbound(table: &str, kind: SubscriptionKind, rows: &[OutRow]) {
    for &(existing, route, new, presence) in rows {
        let context = format!(
            "{table}: outbound {} in {:?}",
            kind.as_str(),
            name(existing)
        );
        let next = expected_state(existing, new);
        let out = outbound(existing, kind);
        assert_eq!(name(out.state), name(next), "{context}: NEW STATE");
        assert_eq!(out.state, next, "{context}: NEW STATE");
        assert_eq!(out.route, route, "{context}: ROUTE?");
        assert_eq!(out.send_presence, presence, "{context}: presence");
        assert_eq!(out.changed, next != existing, "{context}: changed");
        assert_eq!(
            out.push,
            roster_attrs(next) != roster_attrs(existing),
            "{context}: push"
        );
    }
}

fn check_inbound(table: &str, kind: SubscriptionKind, rows: &[InRow]) {
    for &(existing, deliver, new, auto_reply, presence) in rows {
        let context = format!("{table}: inbound {} in {:?}", kind.as_str(), name(existing));
        let next = expected_state(existing, new);
        let inb = inbound(existing, kind);
        assert_eq!(name(inb.state), name(next), "{context}: NEW STATE");
        assert_eq!(inb.state, next, "{context}: NEW STATE");
        assert_eq!(inb.deliver, deliver, "{context}: DELIVER?");
        assert_eq!(inb.auto_reply, auto_reply, "{context}: auto-reply");
        assert_eq!(inb.send_presence, presence, "{context}: presence");
        assert_eq!(inb.changed, next != existing, "{context}: changed");
        assert_eq!(
            inb.push,
            roster_attrs(next) != roster_attrs(existing),
            "{context}: push"
        );
    }
}

#[test]
fn every_appendix_table_lists_the_nine_defined_states_in_order() {
    let out_tables = [
        &A_2_1_SUBSCRIBE,
        &A_2_2_UNSUBSCRIBE,
        &A_2_3_SUBSCRIBED,
        &A_2_4_UNSUBSCRIBED,
    ];
    for table in out_tables {
        let states: Vec<SubState> = table.iter().map(|row| row.0).collect();
        assert_eq!(states, DEFINED_STATES);
    }
    let in_tables = [
        &A_3_1_SUBSCRIBE,
        &A_3_2_UNSUBSCRIBE,
        &A_3_3_SUBSCRIBED,
        &A_3_4_UNSUBSCRIBED,
    ];
    for table in in_tables {
        let states: Vec<SubState> = table.iter().map(|row| row.0).collect();
        assert_eq!(states, DEFINED_STATES);
    }
}

#[test]
fn a_2_1_outbound_subscribe() {
    check_outbound("A.2.1", Subscribe, &A_2_1_SUBSCRIBE);
}

#[test]
fn a_2_2_outbound_unsubscribe() {
    check_outbound("A.2.2", Unsubscribe, &A_2_2_UNSUBSCRIBE);
}

#[test]
fn a_2_3_outbound_subscribed() {
    check_outbound("A.2.3", Subscribed, &A_2_3_SUBSCRIBED);
}

#[test]
fn a_2_4_outbound_unsubscribed() {
    check_outbound("A.2.4", Unsubscribed, &A_2_4_UNSUBSCRIBED);
}

#[test]
fn a_3_1_inbound_subscribe() {
    check_inbound("A.3.1", Subscribe, &A_3_1_SUBSCRIBE);
}

#[test]
fn a_3_2_inbound_unsubscribe() {
    check_inbound("A.3.2", Unsubscribe, &A_3_2_UNSUBSCRIBE);
}

#[test]
fn a_3_3_inbound_subscribed() {
    check_inbound("A.3.3", Subscribed, &A_3_3_SUBSCRIBED);
}

#[test]
fn a_3_4_inbound_unsubscribed() {
    check_inbound("A.3.4", Unsubscribed, &A_3_4_UNSUBSCRIBED);
}

#[test]
fn pre_approved_states_under_the_owners_stanzas() {
    check_outbound("§3.4", Subscribe, &PRE_APPROVED_OUT_SUBSCRIBE);
    check_outbound("§3.4", Unsubscribe, &PRE_APPROVED_OUT_UNSUBSCRIBE);
    check_outbound("§3.4.2", Subscribed, &PRE_APPROVED_OUT_SUBSCRIBED);
    check_outbound("A.2.4 [2]", Unsubscribed, &PRE_APPROVED_OUT_UNSUBSCRIBED);
}

#[test]
fn pre_approved_states_under_the_contacts_stanzas() {
    check_inbound("§3.4", Subscribe, &PRE_APPROVED_IN_SUBSCRIBE);
    check_inbound("§3.4", Unsubscribe, &PRE_APPROVED_IN_UNSUBSCRIBE);
    check_inbound("§3.4", Subscribed, &PRE_APPROVED_IN_SUBSCRIBED);
    check_inbound("§3.4", Unsubscribed, &PRE_APPROVED_IN_UNSUBSCRIBED);
}

#[test]
fn a_pending_request_alone_is_persisted_but_never_pushed() {
    // §3.1.3: no roster item is created for a request, yet it must survive until answered.
    let request = inbound(NONE, Subscribe);
    assert!(request.changed && !request.push && request.deliver);
    // The contact withdraws it: forget it, still nothing to push.
    let withdrawn = inbound(request.state, Unsubscribe);
    assert_eq!(withdrawn.state, SubState::default());
    assert!(withdrawn.changed && !withdrawn.push && withdrawn.deliver);
    // The owner refuses it instead: the refusal is routed, the roster still shows nothing new.
    let refused = outbound(request.state, Unsubscribed);
    assert_eq!(refused.state, SubState::default());
    assert!(refused.changed && !refused.push && refused.route);
    // With To the pending request is just as invisible (A.1: "To + Pending In" shows 'to').
    let request = inbound(TO, Subscribe);
    assert!(request.changed && !request.push);
}

#[test]
fn roster_attributes_show_subscription_ask_and_approved_but_not_pending_in() {
    #[rustfmt::skip]
    let expected = [
        (NONE,                      ("none", None,              false)),
        (NONE_PENDING_OUT,          ("none", Some("subscribe"), false)),
        (NONE_PENDING_IN,           ("none", None,              false)),
        (NONE_PENDING_OUT_IN,       ("none", Some("subscribe"), false)),
        (TO,                        ("to",   None,              false)),
        (TO_PENDING_IN,             ("to",   None,              false)),
        (FROM,                      ("from", None,              false)),
        (FROM_PENDING_OUT,          ("from", Some("subscribe"), false)),
        (BOTH,                      ("both", None,              false)),
        (NONE_APPROVED,             ("none", None,              true)),
        (NONE_PENDING_OUT_APPROVED, ("none", Some("subscribe"), true)),
        (TO_APPROVED,               ("to",   None,              true)),
    ];
    for (state, attrs) in expected {
        assert_eq!(roster_attrs(state), attrs, "{}", name(state));
    }
}

#[test]
fn subscription_values_round_trip_and_nothing_else_parses() {
    for s in [
        Subscription::None,
        Subscription::To,
        Subscription::From,
        Subscription::Both,
    ] {
        assert_eq!(Subscription::parse(s.as_str()), Some(s));
    }
    assert_eq!(Subscription::default(), Subscription::None);
    for bad in ["remove", "", "Both", "NONE", " to", "to "] {
        assert_eq!(Subscription::parse(bad), None, "{bad:?}");
    }
    assert!(Subscription::To.has_to() && Subscription::Both.has_to());
    assert!(!Subscription::None.has_to() && !Subscription::From.has_to());
    assert!(Subscription::From.has_from() && Subscription::Both.has_from());
    assert!(!Subscription::None.has_from() && !Subscription::To.has_from());
}

#[test]
fn subscription_kinds_round_trip_and_other_presence_types_do_not_parse() {
    for kind in [Subscribe, Subscribed, Unsubscribe, Unsubscribed] {
        assert_eq!(SubscriptionKind::parse(kind.as_str()), Some(kind));
    }
    for other in [
        "",
        "available",
        "unavailable",
        "probe",
        "error",
        "Subscribe",
    ] {
        assert_eq!(SubscriptionKind::parse(other), None, "{other:?}");
    }
}

const KINDS: [SubscriptionKind; 4] = [Subscribe, Subscribed, Unsubscribe, Unsubscribed];

/// The invariants every reachable state keeps.
fn assert_well_formed(state: SubState, context: &str) {
    let s = state.subscription;
    assert!(
        !(state.pending_out && s.has_to()),
        "{context}: Pending Out with To in {}",
        name(state)
    );
    assert!(
        !(state.pending_in && s.has_from()),
        "{context}: Pending In with From in {}",
        name(state)
    );
    assert!(
        !(state.approved && (s.has_from() || state.pending_in)),
        "{context}: a pre-approval beside From or a pending request in {}",
        name(state)
    );
}

#[test]
fn any_sequence_of_stanzas_reaches_only_the_twelve_states() {
    // Breadth-first over every stanza in either direction, so every sequence of any length is
    // covered: each reachable state is well formed, and the reachable states are exactly A.1's
    // nine and the three that can hold a pre-approval.
    let mut seen = HashSet::from([SubState::default()]);
    let mut queue = VecDeque::from([SubState::default()]);
    while let Some(state) = queue.pop_front() {
        for kind in KINDS {
            for (direction, next) in [
                ("outbound", outbound(state, kind).state),
                ("inbound", inbound(state, kind).state),
            ] {
                let context = format!("{direction} {} in {}", kind.as_str(), name(state));
                assert_well_formed(next, &context);
                if seen.insert(next) {
                    queue.push_back(next);
                }
            }
        }
    }
    let expected: HashSet<SubState> = DEFINED_STATES
        .into_iter()
        .chain(PRE_APPROVED_STATES)
        .collect();
    assert_eq!(seen, expected);
}

#[test]
fn repeating_a_stanza_changes_nothing_the_second_time() {
    // Idempotence: a duplicate (a client retry, a resent request) has no further effect.
    let reachable = DEFINED_STATES.into_iter().chain(PRE_APPROVED_STATES);
    for state in reachable {
        for kind in KINDS {
            let once = outbound(state, kind).state;
            let twice = outbound(once, kind);
            assert!(
                !twice.changed,
                "outbound {} twice in {}",
                kind.as_str(),
                name(state)
            );
            let once = inbound(state, kind).state;
            let twice = inbound(once, kind);
            assert!(
                !twice.changed,
                "inbound {} twice in {}",
                kind.as_str(),
                name(state)
            );
            assert!(
                !twice.deliver,
                "inbound {} delivered twice in {}",
                kind.as_str(),
                name(state)
            );
        }
    }
}

// Two accounts over an in-order link. Each account has its roster item for the other, sees
// the other's presence or not (both stay online), and an inbox of stanzas in flight.

const JULIET: usize = 0;
const ROMEO: usize = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    Sub(SubscriptionKind),
    Presence(PresenceToSend),
}

#[derive(Debug, Clone, Default)]
struct Account {
    item: SubState,
    sees_peer: bool,
    inbox: VecDeque<Wire>,
    /// Everything that reached this account's server, in order.
    arrived: Vec<Wire>,
    /// Subscription stanzas handed to this account's clients.
    delivered: Vec<SubscriptionKind>,
}

#[derive(Debug, Clone, Default)]
struct World {
    accounts: [Account; 2],
}

impl World {
    /// `from`'s client sends `kind` to the other account.
    fn send(&mut self, from: usize, kind: SubscriptionKind) {
        let to = 1 - from;
        let out = outbound(self.accounts[from].item, kind);
        self.accounts[from].item = out.state;
        let inbox = &mut self.accounts[to].inbox;
        // §3.2.2: unavailable while the contact is still subscribed, then the cancellation;
        // §3.1.5: the approval, then the presence.
        if out.send_presence == Some(Unavailable) {
            inbox.push_back(Wire::Presence(Unavailable));
        }
        if out.route {
            inbox.push_back(Wire::Sub(kind));
        }
        if out.send_presence == Some(Available) {
            inbox.push_back(Wire::Presence(Available));
        }
    }

    /// Process the next stanza waiting for account `at`, if any.
    fn arrive_one(&mut self, at: usize) -> bool {
        let Some(wire) = self.accounts[at].inbox.pop_front() else {
            return false;
        };
        self.accounts[at].arrived.push(wire);
        match wire {
            Wire::Presence(p) => self.accounts[at].sees_peer = p == Available,
            Wire::Sub(kind) => {
                let inb = inbound(self.accounts[at].item, kind);
                self.accounts[at].item = inb.state;
                if inb.deliver {
                    self.accounts[at].delivered.push(kind);
                }
                let back = &mut self.accounts[1 - at].inbox;
                if let Some(reply) = inb.auto_reply {
                    back.push_back(Wire::Sub(reply));
                }
                if let Some(presence) = inb.send_presence {
                    back.push_back(Wire::Presence(presence));
                }
            }
        }
        true
    }

    /// Deliver everything in flight, both ways.
    fn settle(&mut self) {
        loop {
            let juliet = self.arrive_one(JULIET);
            let romeo = self.arrive_one(ROMEO);
            if !juliet && !romeo {
                break;
            }
        }
    }

    /// Each step is sent and settled before the next.
    fn run(steps: &[(usize, SubscriptionKind)]) -> World {
        let mut world = World::default();
        for &(who, kind) in steps {
            world.send(who, kind);
            world.settle();
            world.assert_consistent(&format!("after {steps:?}"));
        }
        world
    }

    fn item(&self, who: usize) -> SubState {
        self.accounts[who].item
    }

    /// With nothing in flight both ends agree, and each sees the other's presence exactly
    /// when it is subscribed to it.
    fn assert_consistent(&self, context: &str) {
        for me in [JULIET, ROMEO] {
            let peer = 1 - me;
            let (mine, theirs) = (self.item(me), self.item(peer));
            assert_well_formed(mine, context);
            assert_eq!(
                mine.subscription.has_to(),
                theirs.subscription.has_from(),
                "{context}: {} vs {}",
                name(mine),
                name(theirs)
            );
            assert_eq!(
                mine.pending_out,
                theirs.pending_in,
                "{context}: {} vs {}",
                name(mine),
                name(theirs)
            );
            assert_eq!(
                self.accounts[me].sees_peer,
                mine.subscription.has_to(),
                "{context}: presence seen in {}",
                name(mine)
            );
        }
    }

    fn key(&self) -> (SubState, bool, SubState, bool) {
        let [j, r] = &self.accounts;
        (j.item, j.sees_peer, r.item, r.sees_peer)
    }
}

#[test]
fn both_ends_stay_consistent_after_any_sequence_of_settled_stanzas() {
    // Breadth-first over every stanza either client can send, each settled before the next:
    // every such sequence, of any length, leaves the two rosters and the presence each sees
    // in agreement.
    let start = World::default();
    let mut seen = HashSet::from([start.key()]);
    let mut queue = VecDeque::from([start]);
    while let Some(world) = queue.pop_front() {
        for who in [JULIET, ROMEO] {
            for kind in KINDS {
                let mut next = world.clone();
                next.send(who, kind);
                next.settle();
                next.assert_consistent(&format!(
                    "{} sends {} with {} / {}",
                    ["juliet", "romeo"][who],
                    kind.as_str(),
                    name(world.item(JULIET)),
                    name(world.item(ROMEO)),
                ));
                if seen.insert(next.key()) {
                    queue.push_back(next);
                }
            }
        }
    }
    let both_ways = (BOTH, true, BOTH, true);
    assert!(seen.contains(&both_ways));
}

#[test]
fn juliet_subscribes_and_romeo_approves() {
    // RFC 6121 §3.1: request, approval, presence.
    let world = World::run(&[(JULIET, Subscribe), (ROMEO, Subscribed)]);
    assert_eq!(world.item(JULIET), TO);
    assert_eq!(world.item(ROMEO), FROM);
    assert_eq!(world.accounts[ROMEO].delivered, [Subscribe]);
    assert_eq!(world.accounts[JULIET].delivered, [Subscribed]);
    // The approval comes before Romeo's presence (§3.1.5).
    assert_eq!(
        world.accounts[JULIET].arrived,
        [Wire::Sub(Subscribed), Wire::Presence(Available)]
    );
    assert!(world.accounts[JULIET].sees_peer && !world.accounts[ROMEO].sees_peer);
}

#[test]
fn mutual_subscription_one_after_the_other() {
    let world = World::run(&[
        (JULIET, Subscribe),
        (ROMEO, Subscribed),
        (ROMEO, Subscribe),
        (JULIET, Subscribed),
    ]);
    assert_eq!((world.item(JULIET), world.item(ROMEO)), (BOTH, BOTH));
}

#[test]
fn mutual_subscription_when_romeo_asks_before_answering() {
    let mut world = World::default();
    world.send(JULIET, Subscribe);
    world.settle();
    world.send(ROMEO, Subscribe);
    world.settle();
    assert_eq!(world.item(JULIET), NONE_PENDING_OUT_IN);
    assert_eq!(world.item(ROMEO), NONE_PENDING_OUT_IN);
    world.send(JULIET, Subscribed);
    world.settle();
    assert_eq!(world.item(JULIET), FROM_PENDING_OUT);
    assert_eq!(world.item(ROMEO), TO_PENDING_IN);
    world.send(ROMEO, Subscribed);
    world.settle();
    world.assert_consistent("mutual");
    assert_eq!((world.item(JULIET), world.item(ROMEO)), (BOTH, BOTH));
}

#[test]
fn crossing_requests_and_crossing_approvals_end_in_both() {
    // Neither has seen the other's request when sending its own, nor the other's approval.
    let mut world = World::default();
    world.send(JULIET, Subscribe);
    world.send(ROMEO, Subscribe);
    world.settle();
    world.assert_consistent("crossing requests");
    assert_eq!(world.item(JULIET), NONE_PENDING_OUT_IN);
    world.send(JULIET, Subscribed);
    world.send(ROMEO, Subscribed);
    world.settle();
    world.assert_consistent("crossing approvals");
    assert_eq!((world.item(JULIET), world.item(ROMEO)), (BOTH, BOTH));
}

#[test]
fn romeo_refuses() {
    let world = World::run(&[(JULIET, Subscribe), (ROMEO, Unsubscribed)]);
    assert_eq!((world.item(JULIET), world.item(ROMEO)), (NONE, NONE));
    assert_eq!(world.accounts[JULIET].delivered, [Unsubscribed]);
    // He never granted anything, so no unavailable presence goes with the refusal.
    assert_eq!(world.accounts[JULIET].arrived, [Wire::Sub(Unsubscribed)]);
}

#[test]
fn juliet_withdraws_her_request_before_romeo_answers() {
    let world = World::run(&[(JULIET, Subscribe), (JULIET, Unsubscribe)]);
    assert_eq!((world.item(JULIET), world.item(ROMEO)), (NONE, NONE));
    assert_eq!(world.accounts[ROMEO].delivered, [Subscribe, Unsubscribe]);
    assert!(world.accounts[ROMEO].arrived.len() == 2 && world.accounts[JULIET].arrived.is_empty());
}

#[test]
fn a_pre_approved_request_is_answered_by_the_server() {
    // §3.4: Romeo approves before Juliet asks; nothing goes out until she does.
    let mut world = World::default();
    world.send(ROMEO, Subscribed);
    assert!(world.accounts[JULIET].inbox.is_empty());
    assert_eq!(world.item(ROMEO), NONE_APPROVED);
    world.settle();
    world.send(JULIET, Subscribe);
    world.settle();
    world.assert_consistent("pre-approved");
    assert_eq!((world.item(JULIET), world.item(ROMEO)), (TO, FROM));
    // Romeo's clients never see the request; Juliet gets the approval and his presence.
    assert!(world.accounts[ROMEO].delivered.is_empty());
    assert_eq!(
        world.accounts[JULIET].arrived,
        [Wire::Sub(Subscribed), Wire::Presence(Available)]
    );
}

#[test]
fn a_cancelled_pre_approval_leaves_the_request_to_romeo() {
    // A.2.4 [2]: his `unsubscribed` cancels the pre-approval and is not routed.
    let world = World::run(&[
        (ROMEO, Subscribed),
        (ROMEO, Unsubscribed),
        (JULIET, Subscribe),
    ]);
    assert!(world.accounts[JULIET].arrived.is_empty());
    assert_eq!(world.item(ROMEO), NONE_PENDING_IN);
    assert_eq!(world.accounts[ROMEO].delivered, [Subscribe]);
}

#[test]
fn juliet_unsubscribes_from_a_mutual_subscription() {
    // §3.3: she stops seeing Romeo; he still sees her.
    let mut world = World::run(&[
        (JULIET, Subscribe),
        (ROMEO, Subscribed),
        (ROMEO, Subscribe),
        (JULIET, Subscribed),
    ]);
    world.accounts[JULIET].arrived.clear();
    world.send(JULIET, Unsubscribe);
    world.settle();
    world.assert_consistent("unsubscribe");
    assert_eq!((world.item(JULIET), world.item(ROMEO)), (FROM, TO));
    assert_eq!(world.accounts[ROMEO].delivered.last(), Some(&Unsubscribe));
    // §3.3.3: Romeo's server sends his unavailable presence to her.
    assert_eq!(
        world.accounts[JULIET].arrived,
        [Wire::Presence(Unavailable)]
    );
    assert!(!world.accounts[JULIET].sees_peer && world.accounts[ROMEO].sees_peer);
}

#[test]
fn romeo_cancels_juliets_subscription() {
    // §3.2: unavailable while she is still subscribed, then the cancellation.
    let mut world = World::run(&[(JULIET, Subscribe), (ROMEO, Subscribed)]);
    world.accounts[JULIET].arrived.clear();
    world.send(ROMEO, Unsubscribed);
    world.settle();
    world.assert_consistent("cancellation");
    assert_eq!((world.item(JULIET), world.item(ROMEO)), (NONE, NONE));
    assert_eq!(
        world.accounts[JULIET].arrived,
        [Wire::Presence(Unavailable), Wire::Sub(Unsubscribed)]
    );
    assert_eq!(world.accounts[JULIET].delivered.last(), Some(&Unsubscribed));
}

#[test]
fn both_end_every_subscription_and_reach_none() {
    let world = World::run(&[
        (JULIET, Subscribe),
        (ROMEO, Subscribed),
        (ROMEO, Subscribe),
        (JULIET, Subscribed),
        (JULIET, Unsubscribe),
        (ROMEO, Unsubscribed),
        (ROMEO, Unsubscribe),
        (JULIET, Unsubscribed),
    ]);
    assert_eq!((world.item(JULIET), world.item(ROMEO)), (NONE, NONE));
    assert!(!world.accounts[JULIET].sees_peer && !world.accounts[ROMEO].sees_peer);
}

#[test]
fn asking_again_while_subscribed_changes_nothing() {
    // A.2.1 "To": routed; A.3.1 "From": auto-replied; A.3.3 "To": the reply is ignored.
    let mut world = World::run(&[(JULIET, Subscribe), (ROMEO, Subscribed)]);
    let delivered_before = world.accounts[ROMEO].delivered.clone();
    world.accounts[JULIET].arrived.clear();
    world.send(JULIET, Subscribe);
    world.settle();
    world.assert_consistent("asking again");
    assert_eq!((world.item(JULIET), world.item(ROMEO)), (TO, FROM));
    assert_eq!(world.accounts[ROMEO].delivered, delivered_before);
    assert_eq!(world.accounts[JULIET].arrived, [Wire::Sub(Subscribed)]);
}

#[test]
fn a_repeated_request_reaches_romeo_once() {
    let world = World::run(&[(JULIET, Subscribe), (JULIET, Subscribe)]);
    assert_eq!(world.accounts[ROMEO].arrived.len(), 2);
    assert_eq!(world.accounts[ROMEO].delivered, [Subscribe]);
}

#[test]
fn withdrawing_and_asking_again_in_one_breath_keeps_the_request_pending() {
    // Romeo's server handles her `unsubscribe` and the new `subscribe` in order; because it
    // does not answer the `unsubscribe` with an `unsubscribed` of its own, no stale refusal
    // arrives after her new request to cancel it on her side.
    let mut world = World::run(&[(JULIET, Subscribe)]);
    world.send(JULIET, Unsubscribe);
    world.send(JULIET, Subscribe);
    world.settle();
    world.assert_consistent("withdraw and ask again");
    assert_eq!(world.item(JULIET), NONE_PENDING_OUT);
    assert_eq!(world.item(ROMEO), NONE_PENDING_IN);
    world.send(ROMEO, Subscribed);
    world.settle();
    assert_eq!((world.item(JULIET), world.item(ROMEO)), (TO, FROM));
}
