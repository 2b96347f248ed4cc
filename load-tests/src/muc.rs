//! Scenario `muc`: groupchat throughput of one XEP-0045 room at stepped message rates.
//!
//! Every user logs in and joins one room (`--room`, default `bench@conference.<domain>`),
//! nick `u<index>`, asking for no history (§7.2.15 `maxstanzas='0'`). The first user
//! joins alone first: if it gets status 201 (§10.1.1, a new locked room) it accepts the
//! default configuration (an instant room, §10.1.2: an empty submitted form) before the
//! others join; the room is temporary and lives as long as its occupants. A user is ready
//! once its own presence (from `room/nick`, §7.2.3) arrives; the steps start once the joins'
//! presence broadcasts have stopped arriving. Then for each aggregate rate of `--rates` in
//! turn the first `--senders` occupants together send that many groupchat messages per
//! second for `--step-secs`, the body carrying `TAG FROM SEQ SENT_US`; the room reflects each
//! to every occupant, the sender included (§7.4), and each occupant measures its latency.
//! After a step the run waits at most `--drain-secs` for its messages; later ones count as
//! lost (`late`). A step is sustained if its p99 is below `--p99-limit-ms`, each message reached
//! each occupant exactly once, no message was refused and at least 90 % of the target was
//! offered. With `--server-pids` (or `--server-pid`) the CPU of the server processes (a
//! cluster's, summed) is read around each step and its drain, and divided by the messages
//! delivered.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashSet;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::chatstep::{
    delivered_per_sec, met_the_bar, sustainable, Pacer, Phase, StepPlan, StepRun, Stepper,
    STEP_SHIFT,
};
use crate::conn::Failure;
use crate::markdown::{ms, table};
use crate::presence::wait_ready;
use crate::probe;
use crate::ramp::{join_users, login_all, stopped, tally, End, Plan, Session};
use crate::report::{Distribution, Outcome};
use crate::svg::{bar_chart, Labels};
use crate::system::{cpu_percent, cpu_time_of, cpu_us_per};
use crate::xml;

const NS_MUC: &str = "http://jabber.org/protocol/muc";
const NS_MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
/// Message ids are `g SEQ . TAG` ([`probe::bounced_seq`] reads them back from errors).
const ID_PREFIX: char = 'g';
/// The creator's wait for its own presence and for the instant room's result.
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);
/// After the joins, the steps start once no stanza came for this long (or after the most).
const SETTLE_QUIET: Duration = Duration::from_millis(500);
const SETTLE_MAX: Duration = Duration::from_secs(30);

pub struct MucPlan {
    /// The room's bare JID.
    pub room: String,
    pub steps: StepPlan,
    /// Upper bound on all users joining.
    pub setup: Duration,
    /// Server processes whose CPU is summed (a cluster's nodes).
    pub server_pids: Vec<u32>,
    /// The occupants that send: the first `senders` users (the others only receive), so a
    /// low rate in a large room is still a steady pace rather than a few random senders.
    pub senders: u32,
}

#[derive(Default)]
struct StepCounters {
    sent: AtomicU64,
    /// Deliveries the messages sent should give: one per occupant, the sender included.
    expected: AtomicU64,
    /// Of those, received before the end of the step's drain.
    accounted: AtomicU64,
    /// Received slower than the p99 limit (to stop early).
    slow: AtomicU64,
}

struct Shared {
    room: String,
    tag: String,
    epoch: Instant,
    /// Users whose own presence came back from the room.
    ready: AtomicU64,
    /// Occupants when the steps start (each message's expected deliveries).
    occupants: AtomicU64,
    steps: Vec<StepCounters>,
    /// Steps whose drain is over: their messages arriving now are late.
    closed: AtomicUsize,
    p99_limit_us: u64,
    /// Groupchat messages of other runs (or without our marker).
    stale: AtomicU64,
    /// Stanzas received while joining: the steps start once they stop coming.
    inbound: AtomicU64,
}

#[derive(Default, Clone)]
struct Received {
    to_others: u64,
    to_self: u64,
    duplicates: u64,
    late: u64,
    /// Our messages refused by the room (`type='error'`).
    errors: u64,
    latencies_us: Vec<u64>,
    last_us: u64,
}

impl Received {
    fn add(&mut self, r: Received) {
        self.to_others += r.to_others;
        self.to_self += r.to_self;
        self.duplicates += r.duplicates;
        self.late += r.late;
        self.errors += r.errors;
        self.latencies_us.extend(r.latencies_us);
        self.last_us = self.last_us.max(r.last_us);
    }
}

/// The scenario's own part of the summary (JSON `muc`).
#[derive(Debug, Serialize)]
pub struct MucSummary {
    pub room: String,
    /// The room was created by this run (status 201) and made an instant room.
    pub created: bool,
    pub occupants: u64,
    /// Occupants that sent (the others only received).
    pub senders: u64,
    pub not_ready: u64,
    pub setup_secs: f64,
    pub step_secs: u64,
    pub drain_secs: u64,
    pub p99_limit_ms: f64,
    pub sent: u64,
    pub expected: u64,
    /// Messages received in time: by the other occupants plus the sender's own copy.
    pub delivered: u64,
    pub delivered_to_self: u64,
    pub lost: u64,
    pub late: u64,
    pub duplicates: u64,
    pub errors: u64,
    pub stale: u64,
    pub latency_ms: Distribution,
    pub steps: Vec<MucStep>,
    /// The highest target rate sustained, messages/s (0: none).
    pub sustainable_rate: u32,
    pub sustainable_delivered_per_sec: f64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub server_pids: Vec<u32>,
    /// Server CPU over all steps and drains per delivered message, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_delivery: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct MucStep {
    /// Aggregate messages/s wanted.
    pub target_rate: u32,
    pub sent: u64,
    pub offered_per_sec: f64,
    pub expected: u64,
    pub delivered: u64,
    pub delivered_to_self: u64,
    /// `delivered` over the step, or to its last delivery if that came later.
    pub delivered_per_sec: f64,
    pub lost: u64,
    pub late: u64,
    pub duplicates: u64,
    pub errors: u64,
    pub drain_waited_secs: f64,
    pub latency_ms: Distribution,
    pub generator_cpu_percent: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_secs: Option<f64>,
    /// Server CPU per delivered message (one occupant's copy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_delivery: Option<f64>,
    /// Server CPU per message sent (its whole fan-out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_message: Option<f64>,
    pub sustained: bool,
}

struct MucStepRun {
    run: StepRun,
    server_cpu: Option<Duration>,
}

/// The CPU time of `pids` together (`None` without any).
fn server_cpu(pids: &[u32]) -> anyhow::Result<Option<Duration>> {
    if pids.is_empty() {
        return Ok(None);
    }
    let mut total = Duration::ZERO;
    for &pid in pids {
        total += cpu_time_of(pid)?;
    }
    Ok(Some(total))
}

/// The join presence (§7.2.2) of `nick`, asking for no history (§7.2.15).
fn join(room: &str, nick: &str) -> String {
    format!(
        "<presence to='{}/{}'><x xmlns='{NS_MUC}'><history maxstanzas='0'/></x></presence>",
        xml::escape(room),
        xml::escape(nick)
    )
}

/// Whether `el` is the room's presence for our own nick: `Ok(true)` our presence in the
/// room (§7.2.3), `Err` a refusal (§7.2.6 and after: `type='error'`).
fn own_presence(el: &str, occupant_jid: &str) -> Result<bool, Failure> {
    if xml::name(el) != "presence" || xml::attr(el, "from").as_deref() != Some(occupant_jid) {
        return Ok(false);
    }
    match xml::attr(el, "type").as_deref() {
        Some("error") => Err(Failure::Protocol(format!("join refused: {el}"))),
        Some("unavailable") => Err(Failure::Protocol(format!("left the room: {el}"))),
        _ => Ok(true),
    }
}

/// Whether the room's presence `el` has status `code` in its `#user` `<x/>`.
fn has_status(el: &str, code: &str) -> bool {
    xml::children(el)
        .into_iter()
        .filter(|c| xml::name(c) == "x")
        .flat_map(xml::children)
        .any(|s| xml::name(s) == "status" && xml::attr(s, "code").as_deref() == Some(code))
}

/// The first user: join, and if the room is new (201) make it an instant room (§10.1.2).
async fn create(session: &mut Session, shared: &Shared, nick: &str) -> Result<bool, Failure> {
    let occupant = format!("{}/{nick}", shared.room);
    session.conn.send(&join(&shared.room, nick)).await?;
    let created = tokio::time::timeout(CREATE_TIMEOUT, async {
        loop {
            let el = session.conn.next_element().await?;
            if own_presence(&el, &occupant)? {
                return Ok::<bool, Failure>(has_status(&el, "201"));
            }
        }
    })
    .await
    .map_err(|_| Failure::Timeout)??;
    if created {
        session
            .conn
            .send(&format!(
                "<iq type='set' id='muc-create' to='{}'><query xmlns='{NS_MUC_OWNER}'>\
                 <x xmlns='jabber:x:data' type='submit'/></query></iq>",
                xml::escape(&shared.room)
            ))
            .await?;
        tokio::time::timeout(CREATE_TIMEOUT, async {
            loop {
                let el = session.conn.next_element().await?;
                if xml::name(&el) == "iq" && xml::attr(&el, "id").as_deref() == Some("muc-create") {
                    return match xml::attr(&el, "type").as_deref() {
                        Some("result") => Ok(()),
                        _ => Err(Failure::Protocol(format!("instant room refused: {el}"))),
                    };
                }
            }
        })
        .await
        .map_err(|_| Failure::Timeout)??;
    }
    shared.ready.fetch_add(1, Ordering::Relaxed);
    Ok(created)
}

pub async fn run(plan: &Plan, mp: MucPlan) -> anyhow::Result<(Outcome, MucSummary)> {
    // Fails early, before anyone logs in, if a server's stat cannot be read.
    server_cpu(&mp.server_pids)?;
    let ramp = login_all(plan).await;
    let shared = Arc::new(Shared {
        room: mp.room.clone(),
        tag: probe::run_tag('m'),
        epoch: Instant::now(),
        ready: AtomicU64::new(0),
        occupants: AtomicU64::new(0),
        steps: mp
            .steps
            .rates
            .iter()
            .map(|_| StepCounters::default())
            .collect(),
        closed: AtomicUsize::new(0),
        p99_limit_us: mp.steps.p99_limit.as_micros() as u64,
        stale: AtomicU64::new(0),
        inbound: AtomicU64::new(0),
    });
    let users = ramp.sessions.len() as u64;
    let mut sessions = ramp.sessions.into_iter();
    let mut created = false;
    let mut early_ends = Vec::new();
    let mut first = sessions.next();
    if let Some(s) = first.as_mut() {
        let nick = session_nick(s);
        match create(s, &shared, &nick).await {
            Ok(c) => created = c,
            Err(failure) => {
                eprintln!("  the first user could not set up {}: {failure}", mp.room);
                if let Some(s) = first.take() {
                    early_ends.push(s.end(Some(failure), plan.close_grace).await);
                }
            }
        }
    }
    let (go, go_rx) = watch::channel(None::<()>);
    let (phase_tx, phase_rx) = watch::channel(None::<Phase>);
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let sends = |s: &Session| s.index - plan.first < mp.senders;
    if let Some(s) = first {
        let sender = sends(&s);
        tasks.spawn(user(
            s,
            true,
            sender,
            shared.clone(),
            go_rx.clone(),
            phase_rx.clone(),
            stop_rx.clone(),
            plan.close_grace,
        ));
    }
    for s in sessions {
        let sender = sends(&s);
        tasks.spawn(user(
            s,
            false,
            sender,
            shared.clone(),
            go_rx.clone(),
            phase_rx.clone(),
            stop_rx.clone(),
            plan.close_grace,
        ));
    }
    eprintln!("  {users} users joining {}", mp.room);
    let (ready, setup_secs) = wait_ready(&shared.ready, users, mp.setup).await;
    shared.occupants.store(ready, Ordering::Relaxed);
    // N joins broadcast about N²/2 presences; the last ones are still on their way when the
    // last occupant is in. Wait (at most SETTLE_MAX) until nothing came for SETTLE_QUIET.
    let settle = Instant::now();
    let mut last = shared.inbound.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    while settle.elapsed() < SETTLE_MAX && quiet_since.elapsed() < SETTLE_QUIET {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = shared.inbound.load(Ordering::Relaxed);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
    }
    let settle_secs = settle.elapsed().as_secs_f64();
    eprintln!(
        "  {ready}/{users} occupants after {setup_secs:.2} s{}, quiet after {settle_secs:.2} s more; {} steps of {} s at {:?} messages/s",
        if created { " (room created)" } else { "" },
        mp.steps.rates.len(),
        mp.steps.step.as_secs(),
        mp.steps.rates
    );
    let _ = go.send(Some(()));

    let mut ran: Vec<MucStepRun> = Vec::new();
    let mut stepper = Stepper::new(&mp.steps, phase_tx, shared.epoch, &shared.closed);
    for (k, &rate) in mp.steps.rates.iter().enumerate() {
        let senders = ready.min(u64::from(mp.senders)).max(1);
        let interval = Duration::from_secs_f64(senders as f64 / f64::from(rate.max(1)));
        let before = server_cpu(&mp.server_pids)?;
        let c = &shared.steps[k];
        let run = stepper
            .run(k, interval, || {
                c.accounted.load(Ordering::Relaxed) >= c.expected.load(Ordering::Relaxed)
            })
            .await;
        let after = server_cpu(&mp.server_pids)?;
        let server = before.zip(after).map(|(b, a)| a.saturating_sub(b));
        let (sent, expected) = (
            c.sent.load(Ordering::Relaxed),
            c.expected.load(Ordering::Relaxed),
        );
        let accounted = c.accounted.load(Ordering::Relaxed);
        let slow = c.slow.load(Ordering::Relaxed);
        eprintln!(
            "  step {rate}/s: {sent} sent, {accounted}/{expected} delivered, {slow} over {} ms, drain {:.2} s, gen CPU {:.0} %{}",
            mp.steps.p99_limit.as_millis(),
            run.waited.as_secs_f64(),
            cpu_percent(run.cpu, run.wall),
            server.map_or(String::new(), |s| format!(", server CPU {:.2} s", s.as_secs_f64()))
        );
        ran.push(MucStepRun {
            run,
            server_cpu: server,
        });
        if stepper.should_stop(k, mp.steps.rates.len(), accounted, expected, slow) {
            break;
        }
    }
    let _ = stop.send(true);

    let mut per_step = vec![Received::default(); mp.steps.rates.len()];
    let mut ends = join_users(tasks, |received: Vec<Received>| {
        for (total, r) in per_step.iter_mut().zip(received) {
            total.add(r);
        }
    })
    .await;
    ends.extend(early_ends);
    let (dropped, close) = tally(ends);
    let summary = summarize(
        &mp, &shared, created, ran, per_step, ready, users, setup_secs,
    );
    Ok((Outcome::sessions(ramp.summary, dropped, close), summary))
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    mp: &MucPlan,
    shared: &Shared,
    created: bool,
    ran: Vec<MucStepRun>,
    mut per_step: Vec<Received>,
    ready: u64,
    users: u64,
    setup_secs: f64,
) -> MucSummary {
    let step_secs = mp.steps.step.as_secs_f64();
    let limit_ms = mp.steps.p99_limit.as_secs_f64() * 1000.0;
    let mut steps = Vec::new();
    let mut all = Received::default();
    let (mut sent_all, mut expected_all, mut lost_all) = (0, 0, 0);
    let mut server_all: Option<Duration> = None;
    for (k, MucStepRun { run, server_cpu }) in ran.into_iter().enumerate() {
        let r = std::mem::take(&mut per_step[k]);
        let c = &shared.steps[k];
        let rate = mp.steps.rates[k];
        let sent = c.sent.load(Ordering::Relaxed);
        let expected = c.expected.load(Ordering::Relaxed);
        // One copy per message to its sender, the rest to the other occupants.
        let lost = expected.saturating_sub(sent).saturating_sub(r.to_others)
            + sent.saturating_sub(r.to_self);
        let delivered = r.to_others + r.to_self;
        let latency = Distribution::from_micros(r.latencies_us.clone());
        let offered = sent as f64 / step_secs;
        let sustained = lost == 0
            && r.errors == 0
            && r.duplicates == 0
            && met_the_bar(delivered, latency.p99, limit_ms, offered, rate);
        if let Some(cpu) = server_cpu {
            server_all = Some(server_all.unwrap_or_default() + cpu);
        }
        sent_all += sent;
        expected_all += expected;
        lost_all += lost;
        steps.push(MucStep {
            target_rate: rate,
            sent,
            offered_per_sec: offered,
            expected,
            delivered,
            delivered_to_self: r.to_self,
            delivered_per_sec: delivered_per_sec(delivered, run.begun, r.last_us, step_secs),
            lost,
            late: r.late,
            duplicates: r.duplicates,
            errors: r.errors,
            drain_waited_secs: run.waited.as_secs_f64(),
            latency_ms: latency,
            generator_cpu_percent: cpu_percent(run.cpu, run.wall),
            server_cpu_secs: server_cpu.map(|d| d.as_secs_f64()),
            server_cpu_us_per_delivery: server_cpu.map(|d| cpu_us_per(d, delivered)),
            server_cpu_us_per_message: server_cpu.map(|d| cpu_us_per(d, sent)),
            sustained,
        });
        all.add(r);
    }
    let (sustainable_rate, sustainable_delivered_per_sec) = sustainable(
        steps
            .iter()
            .map(|s| (s.sustained, s.target_rate, s.delivered_per_sec)),
    );
    let delivered = all.to_others + all.to_self;
    MucSummary {
        room: mp.room.clone(),
        created,
        occupants: ready,
        senders: ready.min(u64::from(mp.senders)),
        not_ready: users - ready,
        setup_secs,
        step_secs: mp.steps.step.as_secs(),
        drain_secs: mp.steps.drain.as_secs(),
        p99_limit_ms: limit_ms,
        sent: sent_all,
        expected: expected_all,
        delivered,
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
        server_pids: mp.server_pids.clone(),
        server_cpu_us_per_delivery: server_all.map(|d| cpu_us_per(d, delivered)),
    }
}

/// One occupant: join (the creator has already), then send while a step runs and receive
/// until told to stop. One not in the room when the steps start leaves.
#[allow(clippy::too_many_arguments)]
async fn user(
    mut session: Session,
    joined: bool,
    sender: bool,
    shared: Arc<Shared>,
    mut go: watch::Receiver<Option<()>>,
    phase_rx: watch::Receiver<Option<Phase>>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) -> (End, Vec<Received>) {
    let mut received = vec![Received::default(); shared.steps.len()];
    let failure = match enter(&mut session, joined, &shared, &mut go).await {
        Err(failure) => Some(failure),
        Ok(()) => exchange(
            &mut session,
            sender,
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

/// Join the room and wait for the go; `Err` if not in the room by then.
async fn enter(
    session: &mut Session,
    mut joined: bool,
    shared: &Shared,
    go: &mut watch::Receiver<Option<()>>,
) -> Result<(), Failure> {
    let nick = session_nick(session);
    let occupant = format!("{}/{nick}", shared.room);
    if !joined {
        session.conn.send(&join(&shared.room, &nick)).await?;
    }
    loop {
        if go.borrow_and_update().is_some() {
            return if joined {
                Ok(())
            } else {
                Err(Failure::Timeout)
            };
        }
        tokio::select! {
            changed = go.changed() => {
                if changed.is_err() {
                    return Err(Failure::Timeout);
                }
            }
            // Read on once in: the later joins' presence (§7.2.3) must not wait in the
            // socket for the first step.
            el = session.conn.next_element() => {
                shared.inbound.fetch_add(1, Ordering::Relaxed);
                if !joined && own_presence(&el?, &occupant)? {
                    joined = true;
                    shared.ready.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The nick of a session: `u<index>`, unique per user.
fn session_nick(session: &Session) -> String {
    format!("u{}", session.index)
}

async fn exchange(
    session: &mut Session,
    sender: bool,
    shared: &Shared,
    phase_rx: watch::Receiver<Option<Phase>>,
    stop: &mut watch::Receiver<bool>,
    received: &mut [Received],
) -> Result<(), Failure> {
    let per_message = shared.occupants.load(Ordering::Relaxed);
    let mut seen = FxHashSet::default();
    let mut pacer = Pacer::new(phase_rx);
    let me = session.index;
    loop {
        tokio::select! {
            _ = stopped(stop) => return Ok(()),
            due = pacer.due(|batch, seq| compose(batch, shared, me, seq)), if sender => {
                let c = &shared.steps[due.step];
                c.sent.fetch_add(due.count, Ordering::Relaxed);
                c.expected.fetch_add(due.count * per_message, Ordering::Relaxed);
                if let Err(failure) = session.conn.send(&due.batch).await {
                    c.sent.fetch_sub(due.count, Ordering::Relaxed);
                    c.expected.fetch_sub(due.count * per_message, Ordering::Relaxed);
                    return Err(failure);
                }
            }
            el = session.conn.next_element() => {
                receive(shared, me, &el?, &mut seen, received);
            }
        }
    }
}

/// Append groupchat message `seq` of user `from` to `out` (§7.4).
fn compose(out: &mut String, shared: &Shared, from: u32, seq: u32) {
    let sent_us = shared.epoch.elapsed().as_micros() as u64;
    let _ = write!(
        out,
        "<message to='{}' type='groupchat' id='{ID_PREFIX}{seq}.{}'><body>",
        xml::escape(&shared.room),
        shared.tag
    );
    probe::push_marker(out, &shared.tag, from, seq, sent_us, 0);
    out.push_str("</body></message>");
}

fn receive(
    shared: &Shared,
    me: u32,
    el: &str,
    seen: &mut FxHashSet<(u32, u32)>,
    received: &mut [Received],
) {
    if xml::name(el) != "message" {
        return;
    }
    let step_of = |seq: u32| (seq >> STEP_SHIFT) as usize;
    match xml::attr(el, "type").as_deref() {
        Some("groupchat") => {}
        Some("error") => {
            if let Some(r) = probe::bounced_seq(el, ID_PREFIX, &shared.tag)
                .map(step_of)
                .and_then(|k| received.get_mut(k))
            {
                r.errors += 1;
            }
            return;
        }
        _ => return,
    }
    // The subject (§7.2.16) has no body.
    let Some(body) = xml::child(el, "body") else {
        return;
    };
    let Some((from, seq, sent_us)) = probe::parse_tagged(&xml::text(body), &shared.tag) else {
        shared.stale.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let k = step_of(seq);
    let Some(r) = received.get_mut(k) else {
        return;
    };
    if !seen.insert((from, seq)) {
        r.duplicates += 1;
        return;
    }
    if k < shared.closed.load(Ordering::Relaxed) {
        r.late += 1;
        return;
    }
    if from == me {
        r.to_self += 1;
    } else {
        r.to_others += 1;
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

pub fn print(m: &MucSummary) {
    for s in &m.steps {
        println!(
            "step {}/s: {} sent ({:.0}/s offered), {} of {} delivered ({} to self) = {:.0}/s, {} lost ({} late), {} duplicates, {} errors, drain {:.2} s; {}; server CPU {} µs/delivery, {} µs/message{}",
            s.target_rate, s.sent, s.offered_per_sec, s.delivered, s.expected, s.delivered_to_self,
            s.delivered_per_sec, s.lost, s.late, s.duplicates, s.errors, s.drain_waited_secs,
            s.latency_ms.line(), cpu_cell(s.server_cpu_us_per_delivery),
            cpu_cell(s.server_cpu_us_per_message),
            if s.sustained { "" } else { " (not sustained)" }
        );
    }
    println!(
        "room {} with {} occupants ({} not joined): {} sent, {} of {} delivered ({} to self), {} lost, {} duplicates, {} errors, {} stale; sustained {} messages/s ({:.0} deliveries/s) at p99 < {:.0} ms; server CPU {} µs/delivery",
        m.room, m.occupants, m.not_ready, m.sent, m.delivered, m.expected, m.delivered_to_self,
        m.lost, m.duplicates, m.errors, m.stale, m.sustainable_rate,
        m.sustainable_delivered_per_sec, m.p99_limit_ms, cpu_cell(m.server_cpu_us_per_delivery)
    );
    println!("groupchat latency: {}", m.latency_ms.line());
}

/// The scenario's section of `report.md`.
pub fn sections(m: &MucSummary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Group chat (`{}`)\n\n{} occupants ({} did not join) after {:.2} s{}. Each groupchat \
         message goes to every occupant, the sender included. Steps of {} s, then at most {} s \
         of drain; sustained: p99 < {:.0} ms, nothing lost or duplicated, no error. Latency in \
         milliseconds, server CPU in µs per delivered message.\n",
        m.room,
        m.occupants,
        m.not_ready,
        m.setup_secs,
        if m.created { ", room created" } else { "" },
        m.step_secs,
        m.drain_secs,
        m.p99_limit_ms
    );
    let rows: Vec<Vec<String>> = m
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
                s.duplicates.to_string(),
                s.errors.to_string(),
                ms(s.latency_ms.p50),
                ms(s.latency_ms.p99),
                format!("{:.0}", s.generator_cpu_percent),
                cpu_cell(s.server_cpu_us_per_delivery),
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
            "duplicates",
            "errors",
            "p50",
            "p99",
            "gen CPU %",
            "server µs/delivery",
            "sustained",
        ],
        &rows,
    );
    let _ = writeln!(
        out,
        "Sustained: **{} messages/s** ({:.0} deliveries/s).\n",
        m.sustainable_rate, m.sustainable_delivered_per_sec
    );
    out
}

/// p50/p90/p99 per step.
pub fn charts(m: &MucSummary) -> Vec<(&'static str, String)> {
    if m.steps.is_empty() {
        return Vec::new();
    }
    let categories: Vec<String> = m.steps.iter().map(|s| s.target_rate.to_string()).collect();
    let pick = |f: fn(&Distribution) -> f64| -> Vec<f64> {
        m.steps.iter().map(|s| f(&s.latency_ms)).collect()
    };
    let values = [pick(|d| d.p50), pick(|d| d.p90), pick(|d| d.p99)];
    let labels = Labels {
        title: "groupchat latency per step",
        x: "target rate (messages/s)",
        y: "latency (ms)",
    };
    vec![(
        "muc-latency.svg",
        bar_chart(&labels, &categories, &["p50", "p90", "p99"], &values),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        Shared {
            room: "bench@conference.localhost".into(),
            tag: "m1".into(),
            epoch: Instant::now(),
            ready: AtomicU64::new(0),
            occupants: AtomicU64::new(3),
            steps: vec![StepCounters::default(), StepCounters::default()],
            closed: AtomicUsize::new(0),
            p99_limit_us: 100_000,
            stale: AtomicU64::new(0),
            inbound: AtomicU64::new(0),
        }
    }

    #[test]
    fn messages_round_trip_once_per_occupant() {
        let sh = shared();
        let seq = (1u32 << STEP_SHIFT) | 4;
        let mut m = String::new();
        compose(&mut m, &sh, 2, seq);
        assert_eq!(xml::attr(&m, "type").as_deref(), Some("groupchat"));
        assert_eq!(xml::attr(&m, "to").as_deref(), Some(sh.room.as_str()));
        // What the room reflects: from the sender's occupant JID, with a stanza id.
        let reflected = m.replacen(
            "<message ",
            "<message from='bench@conference.localhost/u2' ",
            1,
        );
        let reflected = reflected.replacen(
            "</message>",
            "<stanza-id xmlns='urn:xmpp:sid:0' id='x' by='bench@conference.localhost'/></message>",
            1,
        );
        let mut seen = FxHashSet::default();
        let mut rec = vec![Received::default(), Received::default()];
        receive(&sh, 3, &reflected, &mut seen, &mut rec);
        receive(&sh, 3, &reflected, &mut seen, &mut rec);
        receive(&sh, 2, &reflected, &mut FxHashSet::default(), &mut rec);
        assert_eq!(
            (rec[1].to_others, rec[1].to_self, rec[1].duplicates),
            (1, 1, 1)
        );
        assert_eq!(sh.steps[1].accounted.load(Ordering::Relaxed), 2);
        // Another run's message, and the subject, are not ours.
        receive(
            &sh,
            3,
            &reflected.replace("m1 2", "m9 2"),
            &mut seen,
            &mut rec,
        );
        assert_eq!(sh.stale.load(Ordering::Relaxed), 1);
        receive(
            &sh,
            3,
            "<message type='groupchat' from='bench@conference.localhost'><subject/></message>",
            &mut seen,
            &mut rec,
        );
        assert_eq!(sh.stale.load(Ordering::Relaxed), 1);
        // A refusal counts against the step of the message it answers.
        let refused = m.replacen("type='groupchat'", "type='error'", 1);
        receive(&sh, 2, &refused, &mut seen, &mut rec);
        assert_eq!(rec[1].errors, 1);
        // After the step's drain, a copy is late.
        sh.closed.store(2, Ordering::Relaxed);
        receive(&sh, 4, &reflected, &mut FxHashSet::default(), &mut rec);
        assert_eq!(rec[1].late, 1);
    }

    #[test]
    fn own_presence_and_status_codes() {
        let me = "bench@conference.localhost/u1";
        let p = "<presence from='bench@conference.localhost/u1' to='user1@localhost/lg'>\
                 <x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='owner' \
                 role='moderator'/><status code='110'/><status code='201'/></x></presence>";
        assert!(matches!(own_presence(p, me), Ok(true)));
        assert!(has_status(p, "201"));
        assert!(!has_status(p, "100"));
        let other = p.replace("/u1'", "/u2'");
        assert!(matches!(own_presence(&other, me), Ok(false)));
        let refused = p.replacen("<presence ", "<presence type='error' ", 1);
        assert!(own_presence(&refused, me).is_err());
        assert!(join("r@c.l", "u1").contains("maxstanzas='0'"));
    }
}
