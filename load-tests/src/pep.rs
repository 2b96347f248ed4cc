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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rustc_hash::FxHashSet;
use serde::Serialize;
use sha1::{Digest, Sha1};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::chatstep::{
    delivered_per_sec, met_the_bar, sustainable, Pacer, Phase, StepPlan, StepRun, Stepper,
    STEP_SHIFT,
};
use crate::conn::Failure;
use crate::login::Target;
use crate::markdown::{ms, table};
use crate::presence::{self, answer_setup, wait_ready, Groups, Rosters, Setup};
use crate::probe;
use crate::ramp::{join_users, login_all, stopped, tally, End, Plan, Session};
use crate::report::{Distribution, Outcome};
use crate::svg::{bar_chart, Labels};
use crate::system::{cpu_percent, cpu_time_of, cpu_us_per};
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

#[derive(Default)]
struct StepCounters {
    /// Events sent (publishes or presence changes).
    sent: AtomicU64,
    /// Notifications the events sent should give: to each logged-in contact and to the
    /// sender's own session.
    expected: AtomicU64,
    /// Of those, received before the end of the step's drain.
    accounted: AtomicU64,
    /// Received slower than the p99 limit (to stop early).
    slow: AtomicU64,
    /// Publishes answered (result or error).
    answered: AtomicU64,
}

struct Shared {
    target: Arc<Target>,
    groups: Groups,
    rosters: Rosters,
    event: EventKind,
    caps: Caps,
    tag: String,
    epoch: Instant,
    ready: AtomicU64,
    steps: Vec<StepCounters>,
    /// Steps whose drain is over: their notifications arriving now are late.
    closed: AtomicUsize,
    p99_limit_us: u64,
    /// Notifications of other runs (last items sent at login, earlier runs' contacts).
    stale: AtomicU64,
}

#[derive(Default, Clone)]
struct Received {
    to_contacts: u64,
    to_self: u64,
    duplicates: u64,
    late: u64,
    acked: u64,
    errors: u64,
    latencies_us: Vec<u64>,
    last_us: u64,
}

impl Received {
    fn add(&mut self, r: Received) {
        self.to_contacts += r.to_contacts;
        self.to_self += r.to_self;
        self.duplicates += r.duplicates;
        self.late += r.late;
        self.acked += r.acked;
        self.errors += r.errors;
        self.latencies_us.extend(r.latencies_us);
        self.last_us = self.last_us.max(r.last_us);
    }
}

/// The scenario's own part of the summary (JSON `pep`).
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
    pub setup_secs: f64,
    pub step_secs: u64,
    pub drain_secs: u64,
    pub p99_limit_ms: f64,
    pub sent: u64,
    pub expected: u64,
    /// Notifications received in time: to contacts plus to the sender's own session.
    pub delivered: u64,
    pub delivered_to_contacts: u64,
    pub delivered_to_self: u64,
    pub lost: u64,
    pub late: u64,
    pub duplicates: u64,
    /// Publishes answered with an error.
    pub errors: u64,
    pub stale: u64,
    pub latency_ms: Distribution,
    pub steps: Vec<PepStep>,
    /// The highest target rate sustained, events/s (0: none).
    pub sustainable_rate: u32,
    pub sustainable_delivered_per_sec: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_pid: Option<u32>,
    /// Server CPU over all steps and drains per delivered notification, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_notification: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct PepStep {
    /// Aggregate events/s wanted.
    pub target_rate: u32,
    pub sent: u64,
    pub offered_per_sec: f64,
    pub expected: u64,
    pub delivered: u64,
    pub delivered_to_contacts: u64,
    pub delivered_to_self: u64,
    /// `delivered` over the step, or to its last notification if that came later.
    pub delivered_per_sec: f64,
    pub lost: u64,
    pub late: u64,
    pub duplicates: u64,
    /// Publishes answered with a result / with an error (0 for presence).
    pub acked: u64,
    pub errors: u64,
    pub drain_waited_secs: f64,
    pub latency_ms: Distribution,
    pub generator_cpu_percent: f64,
    /// The server's CPU from the step's start to the end of its drain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_secs: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_notification: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_event: Option<f64>,
    pub sustained: bool,
}

/// A step that ran, with the server's CPU from its start to the end of its drain.
struct PepStepRun {
    run: StepRun,
    server_cpu: Option<Duration>,
}

pub async fn run(plan: &Plan, pp: PepPlan) -> anyhow::Result<(Outcome, PepSummary)> {
    // Fails early, before anyone logs in, if the server's stat cannot be read.
    let server_cpu = |pid: Option<u32>| pid.map(cpu_time_of).transpose();
    server_cpu(pp.server_pid)?;
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
        tag: probe::run_tag('e'),
        epoch: Instant::now(),
        ready: AtomicU64::new(0),
        steps: pp
            .steps
            .rates
            .iter()
            .map(|_| StepCounters::default())
            .collect(),
        closed: AtomicUsize::new(0),
        p99_limit_us: pp.steps.p99_limit.as_micros() as u64,
        stale: AtomicU64::new(0),
    });
    let online: Vec<u32> = ramp.sessions.iter().map(|s| s.index).collect();
    let users = online.len() as u64;
    let (go, go_rx) = watch::channel(None::<()>);
    let (phase_tx, phase_rx) = watch::channel(None::<Phase>);
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for session in ramp.sessions {
        let contacts = shared.groups.contacts_of(&online, session.index);
        tasks.spawn(user(
            session,
            contacts,
            shared.clone(),
            go_rx.clone(),
            phase_rx.clone(),
            stop_rx.clone(),
            plan.close_grace,
        ));
    }
    eprintln!(
        "  {} in groups of {} ({users} users)",
        match pp.rosters {
            Rosters::Protocol => "setting up subscriptions",
            Rosters::Provisioned => "checking the provisioned rosters",
        },
        pp.group
    );
    let (ready, setup_secs) = wait_ready(&shared.ready, users, pp.setup).await;
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
    let _ = go.send(Some(()));

    let mut ran: Vec<PepStepRun> = Vec::new();
    let mut stepper = Stepper::new(&pp.steps, phase_tx, shared.epoch, &shared.closed);
    for (k, &rate) in pp.steps.rates.iter().enumerate() {
        let interval = Duration::from_secs_f64(users.max(1) as f64 / f64::from(rate.max(1)));
        let server_before = server_cpu(pp.server_pid)?;
        let c = &shared.steps[k];
        let run = stepper
            .run(k, interval, || {
                let sent = c.sent.load(Ordering::Relaxed);
                let notified =
                    c.accounted.load(Ordering::Relaxed) >= c.expected.load(Ordering::Relaxed);
                let answered =
                    pp.event == EventKind::Presence || c.answered.load(Ordering::Relaxed) >= sent;
                notified && answered
            })
            .await;
        let server_after = server_cpu(pp.server_pid)?;
        let server = server_before
            .zip(server_after)
            .map(|(b, a)| a.saturating_sub(b));
        let (sent, expected) = (
            c.sent.load(Ordering::Relaxed),
            c.expected.load(Ordering::Relaxed),
        );
        let accounted = c.accounted.load(Ordering::Relaxed);
        let slow = c.slow.load(Ordering::Relaxed);
        eprintln!(
            "  step {rate}/s: {sent} sent, {accounted}/{expected} notifications, {slow} over {} ms, drain {:.2} s, gen CPU {:.0} %{}",
            pp.steps.p99_limit.as_millis(),
            run.waited.as_secs_f64(),
            cpu_percent(run.cpu, run.wall),
            server.map_or(String::new(), |s| format!(", server CPU {:.2} s", s.as_secs_f64()))
        );
        ran.push(PepStepRun {
            run,
            server_cpu: server,
        });
        if stepper.should_stop(k, pp.steps.rates.len(), accounted, expected, slow) {
            break;
        }
    }
    let _ = stop.send(true);

    let mut per_step = vec![Received::default(); pp.steps.rates.len()];
    let ends = join_users(tasks, |received: Vec<Received>| {
        for (total, r) in per_step.iter_mut().zip(received) {
            total.add(r);
        }
    })
    .await;
    let (dropped, close) = tally(ends);
    let summary = summarize(&pp, &shared, ran, per_step, ready, users, setup_secs);
    Ok((Outcome::sessions(ramp.summary, dropped, close), summary))
}

fn summarize(
    pp: &PepPlan,
    shared: &Shared,
    ran: Vec<PepStepRun>,
    mut per_step: Vec<Received>,
    ready: u64,
    users: u64,
    setup_secs: f64,
) -> PepSummary {
    let step_secs = pp.steps.step.as_secs_f64();
    let limit_ms = pp.steps.p99_limit.as_secs_f64() * 1000.0;
    let mut steps = Vec::new();
    let mut all = Received::default();
    let (mut sent_all, mut expected_all, mut lost_all) = (0, 0, 0);
    let mut server_all: Option<Duration> = None;
    for (k, PepStepRun { run, server_cpu }) in ran.into_iter().enumerate() {
        let r = std::mem::take(&mut per_step[k]);
        let c = &shared.steps[k];
        let rate = pp.steps.rates[k];
        let sent = c.sent.load(Ordering::Relaxed);
        let expected = c.expected.load(Ordering::Relaxed);
        // One per event to the sender's own session, the rest to contacts.
        let lost = expected.saturating_sub(sent).saturating_sub(r.to_contacts)
            + sent.saturating_sub(r.to_self);
        let delivered = r.to_contacts + r.to_self;
        let latency = Distribution::from_micros(r.latencies_us.clone());
        let offered = sent as f64 / step_secs;
        let sustained = lost == 0
            && r.errors == 0
            && met_the_bar(delivered, latency.p99, limit_ms, offered, rate);
        if let Some(cpu) = server_cpu {
            server_all = Some(server_all.unwrap_or_default() + cpu);
        }
        sent_all += sent;
        expected_all += expected;
        lost_all += lost;
        steps.push(PepStep {
            target_rate: rate,
            sent,
            offered_per_sec: offered,
            expected,
            delivered,
            delivered_to_contacts: r.to_contacts,
            delivered_to_self: r.to_self,
            delivered_per_sec: delivered_per_sec(delivered, run.begun, r.last_us, step_secs),
            lost,
            late: r.late,
            duplicates: r.duplicates,
            acked: r.acked,
            errors: r.errors,
            drain_waited_secs: run.waited.as_secs_f64(),
            latency_ms: latency,
            generator_cpu_percent: cpu_percent(run.cpu, run.wall),
            server_cpu_secs: server_cpu.map(|d| d.as_secs_f64()),
            server_cpu_us_per_notification: server_cpu.map(|d| cpu_us_per(d, delivered)),
            server_cpu_us_per_event: server_cpu.map(|d| cpu_us_per(d, sent)),
            sustained,
        });
        all.add(r);
    }
    let (sustainable_rate, sustainable_delivered_per_sec) = sustainable(
        steps
            .iter()
            .map(|s| (s.sustained, s.target_rate, s.delivered_per_sec)),
    );
    let delivered = all.to_contacts + all.to_self;
    PepSummary {
        event: pp.event.name(),
        node: TUNE,
        caps_ver: shared.caps.ver.clone(),
        group_size: pp.group,
        contacts: pp.group - 1,
        rosters: shared.rosters.name(),
        ready,
        not_ready: users - ready,
        setup_secs,
        step_secs: pp.steps.step.as_secs(),
        drain_secs: pp.steps.drain.as_secs(),
        p99_limit_ms: limit_ms,
        sent: sent_all,
        expected: expected_all,
        delivered,
        delivered_to_contacts: all.to_contacts,
        delivered_to_self: all.to_self,
        lost: lost_all,
        late: all.late,
        duplicates: all.duplicates,
        errors: all.errors,
        stale: shared.stale.load(Ordering::Relaxed),
        latency_ms: Distribution::from_micros(all.latencies_us),
        steps,
        sustainable_rate,
        sustainable_delivered_per_sec,
        server_pid: pp.server_pid,
        server_cpu_us_per_notification: server_all.map(|d| cpu_us_per(d, delivered)),
    }
}

/// One user: set up its contacts, then send while a step runs and receive until told to
/// stop.
async fn user(
    mut session: Session,
    contacts: Vec<u32>,
    shared: Arc<Shared>,
    mut go: watch::Receiver<Option<()>>,
    phase_rx: watch::Receiver<Option<Phase>>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) -> (End, Vec<Received>) {
    let mut received = vec![Received::default(); shared.steps.len()];
    let how = Setup {
        target: &shared.target,
        rosters: shared.rosters,
        ready: &shared.ready,
    };
    let reply = |el: &str| shared.caps.answer(el);
    let failure = match presence::setup(&mut session, &contacts, &how, &mut go, &reply).await {
        Err(failure) => Some(failure),
        Ok(()) => exchange(
            &mut session,
            contacts.len() as u64,
            &shared,
            phase_rx,
            &mut stop,
            &mut received,
        )
        .await
        .err(),
    };
    (session.end(failure, grace).await, received)
}

async fn exchange(
    session: &mut Session,
    contacts: u64,
    shared: &Shared,
    phase_rx: watch::Receiver<Option<Phase>>,
    stop: &mut watch::Receiver<bool>,
    received: &mut [Received],
) -> Result<(), Failure> {
    // Each event notifies every contact and the sender's own session: a publish the
    // account's bare JID (XEP-0163 §4.3), a presence every available resource (RFC 6121
    // §4.4.2).
    let per_event = contacts + 1;
    let mut seen = FxHashSet::default();
    let mut pacer = Pacer::new(phase_rx);
    let me = session.index;
    loop {
        tokio::select! {
            _ = stopped(stop) => return Ok(()),
            due = pacer.due(|batch, seq| compose(batch, shared, me, seq)) => {
                let c = &shared.steps[due.step];
                c.sent.fetch_add(due.count, Ordering::Relaxed);
                c.expected.fetch_add(due.count * per_event, Ordering::Relaxed);
                if let Err(failure) = session.conn.send(&due.batch).await {
                    c.sent.fetch_sub(due.count, Ordering::Relaxed);
                    c.expected.fetch_sub(due.count * per_event, Ordering::Relaxed);
                    return Err(failure);
                }
            }
            el = session.conn.next_element() => {
                let el = el?;
                if let Some(answer) = shared.caps.answer(&el) {
                    session.conn.send(&answer).await?;
                    continue;
                }
                answer_setup(session, &el).await?;
                receive(shared, session.index, &el, &mut seen, received);
            }
        }
    }
}

/// Append event `seq` of user `from` to `out`: a publish, or a presence change.
fn compose(out: &mut String, shared: &Shared, from: u32, seq: u32) {
    let sent_us = shared.epoch.elapsed().as_micros() as u64;
    match shared.event {
        EventKind::Pep => {
            let _ = write!(
                out,
                "<iq type='set' id='{ID_PREFIX}{seq}.{}'><pubsub xmlns='{NS_PUBSUB}'>\
                 <publish node='{TUNE}'><item><tune xmlns='{TUNE}'><title>",
                shared.tag
            );
            probe::push_marker(out, &shared.tag, from, seq, sent_us, 0);
            out.push_str("</title></tune></item></publish></pubsub></iq>");
        }
        EventKind::Presence => {
            // The caps go in every presence (XEP-0115 §4), as a client sends them.
            out.push_str("<presence>");
            out.push_str(&shared.caps.element);
            out.push_str("<status>");
            probe::push_marker(out, &shared.tag, from, seq, sent_us, 0);
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
    let step_of = |seq: u32| (seq >> STEP_SHIFT) as usize;
    let closed = shared.closed.load(Ordering::Relaxed);
    if xml::name(el) == "iq" {
        // The answer to one of our publishes.
        let Some(k) = probe::bounced_seq(el, ID_PREFIX, &shared.tag).map(step_of) else {
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
        shared.steps[k].answered.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let Some(text) = marker(el, shared.event) else {
        return;
    };
    let Some((from, seq, sent_us)) = probe::parse_tagged(&text, &shared.tag) else {
        shared.stale.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let own = from == me;
    // Contacts left over from runs with other groups do not count.
    if !own && shared.groups.group_of(from) != shared.groups.group_of(me) {
        return;
    }
    let k = step_of(seq);
    let Some(r) = received.get_mut(k) else {
        return;
    };
    if !seen.insert((from, seq)) {
        r.duplicates += 1;
        return;
    }
    if k < closed {
        r.late += 1;
        return;
    }
    if own {
        r.to_self += 1;
    } else {
        r.to_contacts += 1;
    }
    let now_us = shared.epoch.elapsed().as_micros() as u64;
    let latency = now_us.saturating_sub(sent_us);
    r.latencies_us.push(latency);
    r.last_us = r.last_us.max(now_us);
    let c = &shared.steps[k];
    c.accounted.fetch_add(1, Ordering::Relaxed);
    if latency >= shared.p99_limit_us {
        c.slow.fetch_add(1, Ordering::Relaxed);
    }
}

fn cpu_cell(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.1}"))
}

pub fn print(p: &PepSummary) {
    for s in &p.steps {
        println!(
            "step {}/s: {} sent ({:.0}/s offered), {} of {} notifications ({} to contacts, {} to self) = {:.0}/s, {} lost ({} late), {} duplicates, {} publish errors, drain {:.2} s; {}; server CPU {} µs/notification{}",
            s.target_rate, s.sent, s.offered_per_sec, s.delivered, s.expected,
            s.delivered_to_contacts, s.delivered_to_self, s.delivered_per_sec, s.lost, s.late,
            s.duplicates, s.errors, s.drain_waited_secs, s.latency_ms.line(),
            cpu_cell(s.server_cpu_us_per_notification),
            if s.sustained { "" } else { " (not sustained)" }
        );
    }
    println!(
        "{} fan-out to {} contacts: {} sent, {} of {} notifications ({} to contacts, {} to self), {} lost, {} duplicates, {} errors, {} stale; sustained {} events/s ({:.0} notifications/s) at p99 < {:.0} ms; server CPU {} µs/notification",
        p.event, p.contacts, p.sent, p.delivered, p.expected, p.delivered_to_contacts,
        p.delivered_to_self, p.lost, p.duplicates, p.errors, p.stale, p.sustainable_rate,
        p.sustainable_delivered_per_sec, p.p99_limit_ms, cpu_cell(p.server_cpu_us_per_notification)
    );
    println!("{} latency: {}", p.event, p.latency_ms.line());
}

/// The scenario's section of `report.md`.
pub fn sections(p: &PepSummary) -> String {
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
        p.event, p.ready, p.ready + p.not_ready, p.setup_secs, p.rosters, p.step_secs,
        p.drain_secs, p.p99_limit_ms
    );
    let rows: Vec<Vec<String>> = p
        .steps
        .iter()
        .map(|s| {
            vec![
                format!("{}/s", s.target_rate),
                s.sent.to_string(),
                format!("{:.0}", s.offered_per_sec),
                format!("{}/{}", s.delivered, s.expected),
                format!("{:.0}", s.delivered_per_sec),
                s.lost.to_string(),
                s.errors.to_string(),
                ms(s.latency_ms.p50),
                ms(s.latency_ms.p99),
                format!("{:.0}", s.generator_cpu_percent),
                cpu_cell(s.server_cpu_us_per_notification),
                if s.sustained { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "target",
            "sent",
            "offered/s",
            "delivered",
            "delivered/s",
            "lost",
            "errors",
            "p50",
            "p99",
            "gen CPU %",
            "server µs/notification",
            "sustained",
        ],
        &rows,
    );
    let _ = writeln!(
        out,
        "Sustained: **{} events/s** ({:.0} notifications/s).\n",
        p.sustainable_rate, p.sustainable_delivered_per_sec
    );
    out
}

/// p50/p90/p99 per step.
pub fn charts(p: &PepSummary) -> Vec<(&'static str, String)> {
    if p.steps.is_empty() {
        return Vec::new();
    }
    let categories: Vec<String> = p.steps.iter().map(|s| s.target_rate.to_string()).collect();
    let pick = |f: fn(&Distribution) -> f64| -> Vec<f64> {
        p.steps.iter().map(|s| f(&s.latency_ms)).collect()
    };
    let values = [pick(|d| d.p50), pick(|d| d.p90), pick(|d| d.p99)];
    let labels = Labels {
        title: "notification latency per step",
        x: "target rate (events/s)",
        y: "latency (ms)",
    };
    vec![(
        "fanout-latency.svg",
        bar_chart(&labels, &categories, &["p50", "p90", "p99"], &values),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

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
            tag: "e1".into(),
            epoch: Instant::now(),
            ready: AtomicU64::new(0),
            steps: vec![StepCounters::default(), StepCounters::default()],
            closed: AtomicUsize::new(0),
            p99_limit_us: 100_000,
            stale: AtomicU64::new(0),
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
            (rec[1].to_contacts, rec[1].to_self, rec[1].duplicates),
            (1, 1, 1)
        );
        assert_eq!(sh.steps[1].accounted.load(Ordering::Relaxed), 2);
        // user4 is in another group of three: not counted.
        receive(&sh, 4, &note, &mut FxHashSet::default(), &mut rec);
        assert_eq!(rec[1].to_contacts, 1);
        // Another run's item (sent at login as the last published one) is stale.
        let old = note.replace("e1 2", "e9 2");
        receive(&sh, 3, &old, &mut FxHashSet::default(), &mut rec);
        assert_eq!(sh.stale.load(Ordering::Relaxed), 1);
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
        assert_eq!(sh.steps[1].answered.load(Ordering::Relaxed), 2);
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
        assert_eq!((rec[0].to_contacts, rec[0].to_self), (1, 1));
        assert_eq!(rec[0].latencies_us.len(), 2);
        assert_eq!(sh.steps[0].accounted.load(Ordering::Relaxed), 2);
        let gone = "<presence type='unavailable'><status>e1 1 3 5</status></presence>";
        assert_eq!(marker(gone, EventKind::Presence), None);
    }
}
