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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashSet;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::chatstep::StepPlan;
use crate::conn::Failure;
use crate::fanout::{
    self, cpu_cell, gather, step_line, step_of, Counters, Exchange, Received, Signals, StepFields,
    Totals,
};
use crate::presence::wait_ready;
use crate::probe;
use crate::ramp::{login_all, tally, Plan, Session};
use crate::report::Outcome;
use crate::system::{cpu_us_per, server_cpu};
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

struct Shared {
    room: String,
    /// The run's tag, epoch, users in the room (`ready`) and step counters.
    fan: Counters,
    /// Occupants when the steps start (each message's expected deliveries).
    occupants: AtomicU64,
    /// Stanzas received while joining: the steps start once they stop coming.
    inbound: AtomicU64,
}

/// The scenario's own part of the summary (JSON `muc`). A "delivery" is one occupant's
/// copy of a groupchat message, the sender's own included.
#[derive(Debug, Serialize)]
pub struct MucSummary {
    pub room: String,
    /// The room was created by this run (status 201) and made an instant room.
    pub created: bool,
    pub occupants: u64,
    /// Occupants that sent (the others only received).
    pub senders: u64,
    pub not_ready: u64,
    #[serde(flatten)]
    pub totals: Totals<MucStep>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub server_pids: Vec<u32>,
    /// Server CPU over all steps and drains per delivered message, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_delivery: Option<f64>,
}

/// The scenario's own fields of a step (`errors`: messages refused by the room).
#[derive(Debug, Serialize)]
pub struct MucStep {
    /// Server CPU per delivered message (one occupant's copy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_delivery: Option<f64>,
    /// Server CPU per message sent (its whole fan-out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_message: Option<f64>,
}

impl StepFields for MucStep {
    fn server_cpu_us_per_delivery(&self) -> Option<f64> {
        self.server_cpu_us_per_delivery
    }
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
    shared.fan.ready.fetch_add(1, Ordering::Relaxed);
    Ok(created)
}

pub async fn run(plan: &Plan, mp: MucPlan) -> anyhow::Result<(Outcome, MucSummary)> {
    // Fails early, before anyone logs in, if a server's stat cannot be read.
    server_cpu(&mp.server_pids)?;
    let ramp = login_all(plan).await;
    let shared = Arc::new(Shared {
        room: mp.room.clone(),
        fan: Counters::new('m', &mp.steps),
        occupants: AtomicU64::new(0),
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
    let (coordinator, signals) = fanout::signals();
    let mut tasks = JoinSet::new();
    let (steps, grace) = (mp.steps.rates.len(), plan.close_grace);
    // The first user is in the room already (or gone).
    let users_joined = first.map(|s| (s, true)).into_iter();
    for (s, joined) in users_joined.chain(sessions.map(|s| (s, false))) {
        let sender = s.index - plan.first < mp.senders;
        let (shared, signals) = (shared.clone(), signals.clone());
        tasks.spawn(fanout::user(s, steps, grace, move |s, r| {
            Box::pin(occupy(s, joined, sender, shared, signals, r))
        }));
    }
    eprintln!("  {users} users joining {}", mp.room);
    let (ready, setup_secs) = wait_ready(&shared.fan.ready, users, mp.setup).await;
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
    let _ = coordinator.go.send(Some(()));

    let senders = ready.min(u64::from(mp.senders));
    let ran = shared
        .fan
        .run_steps(
            &mp.steps,
            coordinator.phase,
            &mp.server_pids,
            senders,
            "delivered",
            |_, _| true,
        )
        .await?;
    let _ = coordinator.stop.send(true);

    let (mut ends, per_step) = gather(tasks, mp.steps.rates.len()).await;
    ends.extend(early_ends);
    let (dropped, close) = tally(ends);
    // Each message reaches each occupant exactly once: a duplicate fails the step too.
    let totals = shared.fan.totals(
        &mp.steps,
        ran,
        per_step,
        setup_secs,
        true,
        |_, cpu, sent, delivered| MucStep {
            server_cpu_us_per_delivery: cpu.map(|d| cpu_us_per(d, delivered)),
            server_cpu_us_per_message: cpu.map(|d| cpu_us_per(d, sent)),
        },
    );
    let summary = MucSummary {
        room: mp.room.clone(),
        created,
        occupants: ready,
        senders,
        not_ready: users - ready,
        server_pids: mp.server_pids.clone(),
        server_cpu_us_per_delivery: totals.server_cpu_us_per_delivery(),
        totals,
    };
    Ok((Outcome::sessions(ramp.summary, dropped, close), summary))
}

/// One occupant: join (the creator has already), then send while a step runs (if a
/// `sender`) and receive until told to stop. One not in the room when the steps start leaves.
async fn occupy(
    session: &mut Session,
    joined: bool,
    sender: bool,
    shared: Arc<Shared>,
    mut signals: Signals,
    received: &mut [Received],
) -> Result<(), Failure> {
    let shared = &*shared;
    enter(session, joined, shared, &mut signals.go).await?;
    let per_message = shared.occupants.load(Ordering::Relaxed);
    let mut exchange = Exchange::new(&signals, sender, per_message);
    let me = session.index;
    while let Some(el) = exchange
        .next(&shared.fan, session, |out, seq| {
            compose(out, shared, me, seq)
        })
        .await?
    {
        receive(shared, me, &el, &mut exchange.seen, received);
    }
    Ok(())
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
                    shared.fan.ready.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The nick of a session: `u<index>`, unique per user.
fn session_nick(session: &Session) -> String {
    format!("u{}", session.index)
}

/// Append groupchat message `seq` of user `from` to `out` (§7.4).
fn compose(out: &mut String, shared: &Shared, from: u32, seq: u32) {
    let sent_us = shared.fan.epoch.elapsed().as_micros() as u64;
    let _ = write!(
        out,
        "<message to='{}' type='groupchat' id='{ID_PREFIX}{seq}.{}'><body>",
        xml::escape(&shared.room),
        shared.fan.tag
    );
    probe::push_marker(out, &shared.fan.tag, from, seq, sent_us, 0);
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
    match xml::attr(el, "type").as_deref() {
        Some("groupchat") => {}
        Some("error") => {
            if let Some(r) = probe::bounced_seq(el, ID_PREFIX, &shared.fan.tag)
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
    if let Some(marker) = shared.fan.parse(&xml::text(body)) {
        shared.fan.count(me, marker, seen, received);
    }
}

pub fn print(m: &MucSummary) {
    let t = &m.totals;
    for s in &t.steps {
        let copies = format!("delivered ({} to self)", s.delivered_to_self);
        let cpu = format!(
            "{} µs/delivery, {} µs/message",
            cpu_cell(s.own.server_cpu_us_per_delivery),
            cpu_cell(s.own.server_cpu_us_per_message)
        );
        println!("{}", step_line(s, &copies, "errors", &cpu));
    }
    println!(
        "room {} with {} occupants ({} not joined): {} sent, {} of {} delivered ({} to self), {} lost, {} duplicates, {} errors, {} stale; sustained {} messages/s ({:.0} deliveries/s) at p99 < {:.0} ms; server CPU {} µs/delivery",
        m.room, m.occupants, m.not_ready, t.sent, t.delivered, t.expected, t.delivered_to_self,
        t.lost, t.duplicates, t.errors, t.stale, t.sustainable_rate,
        t.sustainable_delivered_per_sec, t.p99_limit_ms, cpu_cell(m.server_cpu_us_per_delivery)
    );
    println!("groupchat latency: {}", t.latency_ms.line());
}

/// The scenario's section of `report.md`.
pub fn sections(m: &MucSummary) -> String {
    let t = &m.totals;
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
        t.setup_secs,
        if m.created { ", room created" } else { "" },
        t.step_secs,
        t.drain_secs,
        t.p99_limit_ms
    );
    fanout::steps_section(&mut out, t, true, ("messages", "delivery", "deliveries"));
    out
}

/// p50/p90/p99 per step.
pub fn charts(m: &MucSummary) -> Vec<(&'static str, String)> {
    fanout::latency_chart(
        &m.totals.steps,
        "muc-latency.svg",
        "groupchat latency per step",
        "target rate (messages/s)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chatstep::STEP_SHIFT;

    fn shared() -> Shared {
        Shared {
            room: "bench@conference.localhost".into(),
            fan: Counters::for_test("m1", 2),
            occupants: AtomicU64::new(3),
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
        assert_eq!(sh.fan.steps[1].accounted.load(Ordering::Relaxed), 2);
        // Another run's message, and the subject, are not ours.
        receive(
            &sh,
            3,
            &reflected.replace("m1 2", "m9 2"),
            &mut seen,
            &mut rec,
        );
        assert_eq!(sh.fan.stale.load(Ordering::Relaxed), 1);
        receive(
            &sh,
            3,
            "<message type='groupchat' from='bench@conference.localhost'><subject/></message>",
            &mut seen,
            &mut rec,
        );
        assert_eq!(sh.fan.stale.load(Ordering::Relaxed), 1);
        // A refusal counts against the step of the message it answers.
        let refused = m.replacen("type='groupchat'", "type='error'", 1);
        receive(&sh, 2, &refused, &mut seen, &mut rec);
        assert_eq!(rec[1].errors, 1);
        // After the step's drain, a copy is late.
        sh.fan.closed.store(2, Ordering::Relaxed);
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
