//! Scenario `pep`: the notification fan-out of the Personal Eventing Protocol (XEP-0163) at
//! stepped publish rates, next to the same fan-out through presence.
//!
//! Users in groups of `--group` mutual contacts (`both`), set up as `presence` does
//! ([`presence::setup`]: through the protocol or from provisioned rosters). Every client logs
//! in with entity capabilities (XEP-0115 §4) in its initial presence; their disco#info lists
//! `http://jabber.org/protocol/tune+notify`, and the client answers the server's disco#info
//! query for that `ver` (§6.2). The `ver` is the real §5.1 hash of the identity and
//! features: the server checks it before caching the answer for every client that announces
//! it. Then for each aggregate rate of `--rates` in turn, the users together publish that many
//! User Tune items (XEP-0118) per second for `--step-secs`, the tune's title carrying
//! `TAG FROM SEQ SENT_US`; each contact, and the publisher's own session (the server
//! notifies the account's bare JID, XEP-0163 §4.3), measures the latency of the `<event/>`
//! notification. After a step the run waits at most `--drain-secs` for its notifications;
//! later ones count as lost (`late`). A step is sustained if its p99 is below
//! `--p99-limit-ms`, nothing was lost, no publish failed and at least 90 % of the target was
//! offered.
//!
//! With `--event presence` the users send presence changes instead (the same caps, the
//! marker as `<status>`): the same users, contacts and steps through the presence path, for
//! the comparison. A presence change also comes back to the session that sent it (RFC 6121
//! §4.4.2: to all of the user's available resources, the sender's included), so both kinds
//! expect one notification per contact and one to the sender. With `--server-pid` the server's CPU is read around each step and its
//! drain, and divided by the notifications delivered.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rustc_hash::FxHashSet;
use serde::Serialize;
use sha1::{Digest, Sha1};
use tokio::task::JoinSet;

use crate::chatstep::StepPlan;
use crate::conn::Failure;
use crate::fanout::{
    self, cpu_cell, gather, step_line, step_of, Counters, Exchange, Received, Signals, StepFields,
    Totals,
};
use crate::login::Target;
use crate::presence::{self, answer_setup, wait_ready, Groups, Rosters, Setup};
use crate::probe;
use crate::ramp::{login_all, tally, Plan, Session};
use crate::report::Outcome;
use crate::system::{cpu_us_per, server_cpu};
use crate::xml;

/// The PEP node published to (XEP-0118).
pub const TUNE: &str = "http://jabber.org/protocol/tune";
const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const NS_CAPS: &str = "http://jabber.org/protocol/caps";
const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
/// The `node` of the client's caps (XEP-0115 §4: a URI identifying the software).
const CAPS_NODE: &str = "https://switchboard.invalid/loadgen";
/// The client's one identity (category, type, name) and its features.
const IDENTITY: (&str, &str, &str) = ("client", "pc", "switchboard-loadgen");
const FEATURES: &[&str] = &[
    NS_DISCO_INFO,
    NS_CAPS,
    "http://jabber.org/protocol/tune+notify",
];
/// Publish ids are `p SEQ . TAG` ([`probe::bounced_seq`] reads them back).
const ID_PREFIX: char = 'p';

/// What a user sends at each event of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EventKind {
    /// A PEP publish to the tune node; notifications to contacts and to the publisher.
    Pep,
    /// A presence change (with the same caps); broadcast to the contacts.
    Presence,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Pep => "pep",
            EventKind::Presence => "presence",
        }
    }
}

pub struct PepPlan {
    /// Users per group of mutual contacts (contacts: one less).
    pub group: u32,
    pub rosters: Rosters,
    pub event: EventKind,
    pub steps: StepPlan,
    /// Upper bound on setting up the contacts.
    pub setup: Duration,
    pub server_pid: Option<u32>,
}

/// XEP-0115 §5.1: the verification string of one identity (`category/type//name`, no
/// `xml:lang`) and `features`, hashed with SHA-1 and encoded in base64.
fn caps_ver(identity: (&str, &str, &str), features: &[&str]) -> String {
    let mut sorted = features.to_vec();
    sorted.sort_unstable();
    let mut s = format!("{}/{}//{}<", identity.0, identity.1, identity.2);
    for f in sorted {
        s.push_str(f);
        s.push('<');
    }
    B64.encode(Sha1::digest(s.as_bytes()))
}

/// The client's entity capabilities: the `<c/>` it announces and its answer to the
/// server's disco#info query for them.
pub struct Caps {
    ver: String,
    element: String,
}

impl Caps {
    pub fn new() -> Caps {
        let ver = caps_ver(IDENTITY, FEATURES);
        let element = format!(
            "<c xmlns='{NS_CAPS}' hash='sha-1' node='{CAPS_NODE}' ver='{}'/>",
            xml::escape(&ver)
        );
        Caps { ver, element }
    }

    /// Initial presence with the caps (what every login of the scenario sends).
    pub fn initial_presence(&self) -> String {
        format!("<presence>{}</presence>", self.element)
    }

    /// The result for `el` if it is a disco#info query for our caps (XEP-0115 §6.2).
    fn answer(&self, el: &str) -> Option<String> {
        if xml::name(el) != "iq" || xml::attr(el, "type").as_deref() != Some("get") {
            return None;
        }
        let query = xml::child(el, "query")?;
        let node = xml::attr(query, "node")?;
        if xml::attr(query, "xmlns").as_deref() != Some(NS_DISCO_INFO)
            || node != format!("{CAPS_NODE}#{}", self.ver)
        {
            return None;
        }
        let id = xml::attr(el, "id")?;
        let mut out = format!("<iq type='result' id='{}'", xml::escape(&id));
        if let Some(from) = xml::attr(el, "from") {
            let _ = write!(out, " to='{}'", xml::escape(&from));
        }
        let _ = write!(
            out,
            "><query xmlns='{NS_DISCO_INFO}' node='{}'><identity category='{}' type='{}' name='{}'/>",
            xml::escape(&node),
            IDENTITY.0,
            IDENTITY.1,
            IDENTITY.2
        );
        for f in FEATURES {
            let _ = write!(out, "<feature var='{f}'/>");
        }
        out.push_str("</query></iq>");
        Some(out)
    }
}

struct Shared {
    target: Arc<Target>,
    groups: Groups,
    rosters: Rosters,
    event: EventKind,
    caps: Caps,
    /// The run's tag, epoch, users ready and step counters; stale: notifications of other
    /// runs (last items sent at login, earlier runs' contacts).
    fan: Counters,
    /// Publishes answered (result or error), per step.
    answered: Vec<AtomicU64>,
}

/// The scenario's own part of the summary (JSON `pep`). A delivery is a notification: to a
/// contact, or to the sender's own session; `errors` are publishes answered with an error.
#[derive(Debug, Serialize)]
pub struct PepSummary {
    /// `pep` (publishes) or `presence` (presence changes).
    pub event: &'static str,
    pub node: &'static str,
    pub caps_ver: String,
    pub group_size: u32,
    pub contacts: u32,
    pub rosters: &'static str,
    pub ready: u64,
    pub not_ready: u64,
    pub delivered_to_contacts: u64,
    #[serde(flatten)]
    pub totals: Totals<PepStep>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_pid: Option<u32>,
    /// Server CPU over all steps and drains per delivered notification, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_notification: Option<f64>,
}

/// The scenario's own fields of a step.
#[derive(Debug, Serialize)]
pub struct PepStep {
    pub delivered_to_contacts: u64,
    /// Publishes answered with a result (0 for presence).
    pub acked: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_notification: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_event: Option<f64>,
}

impl StepFields for PepStep {
    fn server_cpu_us_per_delivery(&self) -> Option<f64> {
        self.server_cpu_us_per_notification
    }
}

pub async fn run(plan: &Plan, pp: PepPlan) -> anyhow::Result<(Outcome, PepSummary)> {
    // Fails early, before anyone logs in, if the server's stat cannot be read.
    let server_pids: Vec<u32> = pp.server_pid.into_iter().collect();
    server_cpu(&server_pids)?;
    let ramp = login_all(plan).await;
    let shared = Arc::new(Shared {
        target: plan.target.clone(),
        groups: Groups {
            first: plan.first,
            size: pp.group,
        },
        rosters: pp.rosters,
        event: pp.event,
        caps: Caps::new(),
        fan: Counters::new('e', &pp.steps),
        answered: pp.steps.rates.iter().map(|_| AtomicU64::new(0)).collect(),
    });
    let online: Vec<u32> = ramp.sessions.iter().map(|s| s.index).collect();
    let users = online.len() as u64;
    let (coordinator, signals) = fanout::signals();
    let mut tasks = JoinSet::new();
    let (steps, grace) = (pp.steps.rates.len(), plan.close_grace);
    for session in ramp.sessions {
        let contacts = shared.groups.contacts_of(&online, session.index);
        let (shared, signals) = (shared.clone(), signals.clone());
        tasks.spawn(fanout::user(session, steps, grace, move |s, r| {
            Box::pin(publish(s, contacts, shared, signals, r))
        }));
    }
    eprintln!(
        "  {} in groups of {} ({users} users)",
        match pp.rosters {
            Rosters::Protocol => "setting up subscriptions",
            Rosters::Provisioned => "checking the provisioned rosters",
        },
        pp.group
    );
    let (ready, setup_secs) = wait_ready(&shared.fan.ready, users, pp.setup).await;
    eprintln!(
        "  {ready}/{users} users ready after {setup_secs:.2} s; {} steps of {} s at {:?} {}/s",
        pp.steps.rates.len(),
        pp.steps.step.as_secs(),
        pp.steps.rates,
        match pp.event {
            EventKind::Pep => "publishes",
            EventKind::Presence => "presence changes",
        }
    );
    let _ = coordinator.go.send(Some(()));

    let ran = shared
        .fan
        .run_steps(
            &pp.steps,
            coordinator.phase,
            &server_pids,
            users,
            "notifications",
            |k, sent| {
                pp.event == EventKind::Presence
                    || shared.answered[k].load(Ordering::Relaxed) >= sent
            },
        )
        .await?;
    let _ = coordinator.stop.send(true);

    let (ends, per_step) = gather(tasks, pp.steps.rates.len()).await;
    let (dropped, close) = tally(ends);
    let totals = shared.fan.totals(
        &pp.steps,
        ran,
        per_step,
        setup_secs,
        false,
        |r, cpu, sent, delivered| PepStep {
            delivered_to_contacts: r.to_others,
            acked: r.acked,
            server_cpu_us_per_notification: cpu.map(|d| cpu_us_per(d, delivered)),
            server_cpu_us_per_event: cpu.map(|d| cpu_us_per(d, sent)),
        },
    );
    let summary = PepSummary {
        event: pp.event.name(),
        node: TUNE,
        caps_ver: shared.caps.ver.clone(),
        group_size: pp.group,
        contacts: pp.group - 1,
        rosters: shared.rosters.name(),
        ready,
        not_ready: users - ready,
        delivered_to_contacts: totals.delivered - totals.delivered_to_self,
        server_pid: pp.server_pid,
        server_cpu_us_per_notification: totals.server_cpu_us_per_delivery(),
        totals,
    };
    Ok((Outcome::sessions(ramp.summary, dropped, close), summary))
}

/// One user: set up its contacts, then send while a step runs and receive until told to
/// stop.
async fn publish(
    session: &mut Session,
    contacts: Vec<u32>,
    shared: Arc<Shared>,
    mut signals: Signals,
    received: &mut [Received],
) -> Result<(), Failure> {
    let shared = &*shared;
    let how = Setup {
        target: &shared.target,
        rosters: shared.rosters,
        ready: &shared.fan.ready,
    };
    let reply = |el: &str| shared.caps.answer(el);
    presence::setup(session, &contacts, &how, &mut signals.go, &reply).await?;
    // Each event notifies every contact and the sender's own session: a publish the
    // account's bare JID (XEP-0163 §4.3), a presence every available resource (RFC 6121
    // §4.4.2).
    let per_event = contacts.len() as u64 + 1;
    let mut exchange = Exchange::new(&signals, true, per_event);
    let me = session.index;
    while let Some(el) = exchange
        .next(&shared.fan, session, |out, seq| {
            compose(out, shared, me, seq)
        })
        .await?
    {
        if let Some(answer) = shared.caps.answer(&el) {
            session.conn.send(&answer).await?;
            continue;
        }
        answer_setup(session, &el).await?;
        receive(shared, me, &el, &mut exchange.seen, received);
    }
    Ok(())
}

/// Append event `seq` of user `from` to `out`: a publish, or a presence change.
fn compose(out: &mut String, shared: &Shared, from: u32, seq: u32) {
    let sent_us = shared.fan.epoch.elapsed().as_micros() as u64;
    match shared.event {
        EventKind::Pep => {
            let _ = write!(
                out,
                "<iq type='set' id='{ID_PREFIX}{seq}.{}'><pubsub xmlns='{NS_PUBSUB}'>\
                 <publish node='{TUNE}'><item><tune xmlns='{TUNE}'><title>",
                shared.fan.tag
            );
            probe::push_marker(out, &shared.fan.tag, from, seq, sent_us, 0);
            out.push_str("</title></tune></item></publish></pubsub></iq>");
        }
        EventKind::Presence => {
            // The caps go in every presence (XEP-0115 §4), as a client sends them.
            out.push_str("<presence>");
            out.push_str(&shared.caps.element);
            out.push_str("<status>");
            probe::push_marker(out, &shared.fan.tag, from, seq, sent_us, 0);
            out.push_str("</status></presence>");
        }
    }
}

/// The marker of a notification: the tune title of a PEP `<event/>` on the tune node, or
/// the status of an available presence.
fn marker(el: &str, event: EventKind) -> Option<String> {
    match (xml::name(el), event) {
        ("message", EventKind::Pep) => {
            let items = xml::child(xml::child(el, "event")?, "items")?;
            if xml::attr(items, "node").as_deref() != Some(TUNE) {
                return None;
            }
            let title = xml::child(xml::child(xml::child(items, "item")?, "tune")?, "title")?;
            Some(xml::text(title))
        }
        ("presence", EventKind::Presence) if xml::attr(el, "type").is_none() => {
            Some(xml::text(xml::child(el, "status")?))
        }
        _ => None,
    }
}

fn receive(
    shared: &Shared,
    me: u32,
    el: &str,
    seen: &mut FxHashSet<(u32, u32)>,
    received: &mut [Received],
) {
    if xml::name(el) == "iq" {
        // The answer to one of our publishes.
        let Some(k) = probe::bounced_seq(el, ID_PREFIX, &shared.fan.tag).map(step_of) else {
            return;
        };
        let Some(r) = received.get_mut(k) else {
            return;
        };
        match xml::attr(el, "type").as_deref() {
            Some("result") => r.acked += 1,
            Some("error") => r.errors += 1,
            _ => return,
        }
        shared.answered[k].fetch_add(1, Ordering::Relaxed);
        return;
    }
    let Some(text) = marker(el, shared.event) else {
        return;
    };
    let Some(marker) = shared.fan.parse(&text) else {
        return;
    };
    let from = marker.0;
    // Contacts left over from runs with other groups do not count.
    if from != me && shared.groups.group_of(from) != shared.groups.group_of(me) {
        return;
    }
    shared.fan.count(me, marker, seen, received);
}

pub fn print(p: &PepSummary) {
    let t = &p.totals;
    for s in &t.steps {
        let copies = format!(
            "notifications ({} to contacts, {} to self)",
            s.own.delivered_to_contacts, s.delivered_to_self
        );
        let cpu = format!(
            "{} µs/notification",
            cpu_cell(s.own.server_cpu_us_per_notification)
        );
        println!("{}", step_line(s, &copies, "publish errors", &cpu));
    }
    println!(
        "{} fan-out to {} contacts: {} sent, {} of {} notifications ({} to contacts, {} to self), {} lost, {} duplicates, {} errors, {} stale; sustained {} events/s ({:.0} notifications/s) at p99 < {:.0} ms; server CPU {} µs/notification",
        p.event, p.contacts, t.sent, t.delivered, t.expected, p.delivered_to_contacts,
        t.delivered_to_self, t.lost, t.duplicates, t.errors, t.stale, t.sustainable_rate,
        t.sustainable_delivered_per_sec, t.p99_limit_ms, cpu_cell(p.server_cpu_us_per_notification)
    );
    println!("{} latency: {}", p.event, t.latency_ms.line());
}

/// The scenario's section of `report.md`.
pub fn sections(p: &PepSummary) -> String {
    let t = &p.totals;
    let mut out = String::new();
    let what = match p.event {
        "pep" => format!(
            "Each event is a PEP publish to `{}`; notifications go to the publisher's {} contacts \
             and its own session",
            p.node, p.contacts
        ),
        _ => format!(
            "Each event is a presence change (with the same caps); it goes to the sender's {} \
             contacts and back to its own session (RFC 6121 §4.4.2)",
            p.contacts
        ),
    };
    let _ = writeln!(
        out,
        "## Fan-out (`{}`)\n\n{what}. {}/{} users ready after {:.2} s (rosters {}). Steps of {} s, \
         then at most {} s of drain; sustained: p99 < {:.0} ms, nothing lost, no error. Latency \
         in milliseconds, server CPU in µs per delivered notification.\n",
        p.event, p.ready, p.ready + p.not_ready, t.setup_secs, p.rosters, t.step_secs,
        t.drain_secs, t.p99_limit_ms
    );
    fanout::steps_section(
        &mut out,
        t,
        false,
        ("events", "notification", "notifications"),
    );
    out
}

/// p50/p90/p99 per step.
pub fn charts(p: &PepSummary) -> Vec<(&'static str, String)> {
    fanout::latency_chart(
        &p.totals.steps,
        "fanout-latency.svg",
        "notification latency per step",
        "target rate (events/s)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chatstep::STEP_SHIFT;

    #[test]
    fn caps_ver_is_xep_0115_5_1() {
        // XEP-0115 §5.2, the simple generation example.
        let ver = caps_ver(
            ("client", "pc", "Exodus 0.9.1"),
            &[
                "http://jabber.org/protocol/disco#info",
                "http://jabber.org/protocol/disco#items",
                "http://jabber.org/protocol/muc",
                "http://jabber.org/protocol/caps",
            ],
        );
        assert_eq!(ver, "QgayPKawpkPSDYmwT/WM94uAlu0=");
        // Ours, as Python's hashlib computes it.
        assert_eq!(Caps::new().ver, "CFIsc6+h1Pvk/5YwTO81GKheKdQ=");
    }

    #[test]
    fn answers_only_the_query_for_our_caps() {
        let caps = Caps::new();
        let q = |node: &str| {
            format!(
                "<iq type='get' id='pep-caps-1' from='localhost' to='u1@localhost/lg'>\
                 <query xmlns='{NS_DISCO_INFO}' node='{node}'/></iq>"
            )
        };
        let ours = format!("{CAPS_NODE}#{}", caps.ver);
        let answer = caps.answer(&q(&ours)).expect("answered");
        assert_eq!(xml::attr(&answer, "id").as_deref(), Some("pep-caps-1"));
        assert_eq!(xml::attr(&answer, "to").as_deref(), Some("localhost"));
        assert_eq!(xml::attr(&answer, "type").as_deref(), Some("result"));
        let query = xml::child(&answer, "query").unwrap();
        assert_eq!(xml::attr(query, "node"), Some(ours));
        let features: Vec<String> = xml::children(query)
            .into_iter()
            .filter(|c| xml::name(c) == "feature")
            .filter_map(|c| xml::attr(c, "var"))
            .collect();
        assert!(features.contains(&format!("{TUNE}+notify")), "{answer}");
        assert!(caps.answer(&q("urn:other#x")).is_none());
        assert!(caps
            .answer("<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>")
            .is_none());
        assert!(caps.initial_presence().contains(&caps.ver));
    }

    fn shared(event: EventKind) -> Shared {
        Shared {
            target: Arc::new(crate::login::test_target(&[], "user")),
            groups: Groups { first: 1, size: 3 },
            rosters: Rosters::Provisioned,
            event,
            caps: Caps::new(),
            fan: Counters::for_test("e1", 2),
            answered: vec![AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    #[test]
    fn publishes_and_notifications_round_trip() {
        let sh = shared(EventKind::Pep);
        let seq = (1u32 << STEP_SHIFT) | 4;
        let mut iq = String::new();
        compose(&mut iq, &sh, 2, seq);
        assert_eq!(xml::name(&iq), "iq");
        let publish = xml::child(xml::child(&iq, "pubsub").unwrap(), "publish").unwrap();
        assert_eq!(xml::attr(publish, "node").as_deref(), Some(TUNE));
        let item = xml::child(publish, "item").unwrap();
        // What the server sends: the item in an event from the publisher's bare JID.
        let note = format!(
            "<message from='user2@localhost' to='user3@localhost' type='headline'>\
             <event xmlns='http://jabber.org/protocol/pubsub#event'><items node='{TUNE}'>{}\
             </items></event></message>",
            item.replacen("<item>", "<item id='abc'>", 1)
        );
        let mut seen = FxHashSet::default();
        let mut rec = vec![Received::default(), Received::default()];
        receive(&sh, 3, &note, &mut seen, &mut rec);
        receive(&sh, 3, &note, &mut seen, &mut rec);
        receive(&sh, 2, &note, &mut FxHashSet::default(), &mut rec);
        assert_eq!(
            (rec[1].to_others, rec[1].to_self, rec[1].duplicates),
            (1, 1, 1)
        );
        assert_eq!(sh.fan.steps[1].accounted.load(Ordering::Relaxed), 2);
        // user4 is in another group of three: not counted.
        receive(&sh, 4, &note, &mut FxHashSet::default(), &mut rec);
        assert_eq!(rec[1].to_others, 1);
        // Another run's item (sent at login as the last published one) is stale.
        let old = note.replace("e1 2", "e9 2");
        receive(&sh, 3, &old, &mut FxHashSet::default(), &mut rec);
        assert_eq!(sh.fan.stale.load(Ordering::Relaxed), 1);
        // The publish's answers.
        let id = xml::attr(&iq, "id").unwrap();
        receive(
            &sh,
            2,
            &format!("<iq type='result' id='{id}'/>"),
            &mut seen,
            &mut rec,
        );
        receive(
            &sh,
            2,
            &format!("<iq type='error' id='{id}'/>"),
            &mut seen,
            &mut rec,
        );
        assert_eq!((rec[1].acked, rec[1].errors), (1, 1));
        assert_eq!(sh.answered[1].load(Ordering::Relaxed), 2);
    }

    #[test]
    fn presence_changes_carry_caps_and_the_marker() {
        let sh = shared(EventKind::Presence);
        let mut p = String::new();
        compose(&mut p, &sh, 1, 3);
        assert!(xml::child(&p, "c").is_some(), "{p}");
        let mut rec = vec![Received::default(), Received::default()];
        let from_server = p.replacen("<presence>", "<presence from='user1@localhost/lg'>", 1);
        receive(&sh, 2, &from_server, &mut FxHashSet::default(), &mut rec);
        // The copy to the sender (RFC 6121 §4.4.2) counts as its own.
        receive(&sh, 1, &from_server, &mut FxHashSet::default(), &mut rec);
        assert_eq!((rec[0].to_others, rec[0].to_self), (1, 1));
        assert_eq!(rec[0].latencies_us.len(), 2);
        assert_eq!(sh.fan.steps[0].accounted.load(Ordering::Relaxed), 2);
        let gone = "<presence type='unavailable'><status>e1 1 3 5</status></presence>";
        assert_eq!(marker(gone, EventKind::Presence), None);
    }
}
