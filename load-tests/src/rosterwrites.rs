//! Scenario `roster-writes`: every logged-in user adds new contacts to its roster with
//! `jabber:iq:roster` set IQs (RFC 6121 §2.3), each a new item `w<RUN>.<SEQ>@<domain>`, with at
//! most `--outstanding` sets in flight per user. Either as fast as that window allows for
//! `--duration-secs`, or in steps of aggregate target rates (`--rates`, each for
//! `--step-secs`, then at most `--drain-secs` waiting for the replies in flight).
//!
//! A write counts when its `type='result'` arrives; errors are counted by condition, those of
//! `type='wait'` (retryable, e.g. no leader for the data yet) apart. The latency is the IQ
//! round trip. Roster pushes the server sends for each change are answered with a result,
//! as a client must.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::imreport::{IqStepSummary, RosterWritesSummary};
use crate::ramp::{join_users, login_all, stopped, tally, End, Plan, Session};
use crate::report::{count, Distribution, Outcome};
use crate::timeline::{note, Progress, Recorder};
use crate::xml;

pub const NS_ROSTER: &str = "jabber:iq:roster";
/// Most writes one run may send in all.
pub const MAX_WRITES: u64 = 20_000_000;
/// Most steps of `--rates`.
pub const MAX_STEPS: usize = 100;
const POLL: Duration = Duration::from_millis(10);

pub struct RosterPlan {
    /// Sets in flight per user.
    pub outstanding: u32,
    /// Aggregate writes/s per step; `None`: as fast as the window allows.
    pub rates: Vec<Option<u32>>,
    pub step: Duration,
    pub drain: Duration,
    /// Upper bound on all steps together (drains excluded); a step is cut at it.
    pub duration: Duration,
    /// Domain of the contacts added (never contacted: a roster set sends nothing out).
    pub contact_domain: String,
}

/// `100,200,max`: aggregate target rates, `max` for as fast as the window allows.
pub fn parse_rates(list: &str) -> anyhow::Result<Vec<Option<u32>>> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim) {
        if part.eq_ignore_ascii_case("max") {
            out.push(None);
            continue;
        }
        let rate: u32 = part
            .parse()
            .map_err(|_| anyhow::anyhow!("rate {part:?} is neither a number nor \"max\""))?;
        anyhow::ensure!(
            (1..=1_000_000).contains(&rate),
            "rates must be between 1 and 1000000 per second (or \"max\")"
        );
        out.push(Some(rate));
    }
    anyhow::ensure!(
        !out.is_empty() && out.len() <= MAX_STEPS,
        "--rates needs 1 to {MAX_STEPS} entries"
    );
    Ok(out)
}

#[derive(Default)]
struct StepCounters {
    sent: AtomicU64,
    /// Results and errors that arrived before the end of the step's drain.
    answered: AtomicU64,
}

/// What users should do now: write for `step`, paced at one set per `interval` or as fast
/// as the window allows (`None`).
#[derive(Clone, Copy, PartialEq)]
struct Phase {
    step: usize,
    interval: Option<Duration>,
}

struct Shared {
    run: u32,
    contact_domain: String,
    outstanding: usize,
    steps: Vec<StepCounters>,
    /// Steps whose drain is over: replies for them now are late.
    closed: AtomicUsize,
    recorder: Arc<Recorder>,
    /// Time base for `last_us`.
    epoch: Instant,
    pushes: AtomicU64,
    /// Writes sent in all steps, bounded by [`MAX_WRITES`].
    total_sent: AtomicU64,
}

#[derive(Default, Clone)]
struct Received {
    acked: u64,
    errors: BTreeMap<String, u64>,
    wait_errors: BTreeMap<String, u64>,
    late: u64,
    latencies_us: Vec<u64>,
    /// When the last result of the step arrived, µs after the epoch.
    last_us: u64,
}

pub async fn run(plan: &Plan, rp: RosterPlan) -> anyhow::Result<(Outcome, RosterWritesSummary)> {
    let ramp = login_all(plan).await;
    let (stop, stop_rx) = watch::channel(false);
    if ramp.sessions.is_empty() {
        ramp.release(&stop, &stop_rx, plan.close_grace).await;
        anyhow::bail!("roster-writes needs at least one logged-in user");
    }
    let users = ramp.sessions.len() as u64;
    let recorder = Recorder::new();
    let shared = Arc::new(Shared {
        run: rand::thread_rng().gen(),
        contact_domain: rp.contact_domain.clone(),
        outstanding: rp.outstanding as usize,
        steps: rp.rates.iter().map(|_| StepCounters::default()).collect(),
        closed: AtomicUsize::new(0),
        recorder: recorder.clone(),
        epoch: Instant::now(),
        pushes: AtomicU64::new(0),
        total_sent: AtomicU64::new(0),
    });
    let (phase_tx, phase_rx) = watch::channel(None::<Phase>);
    let mut tasks = JoinSet::new();
    for session in ramp.sessions {
        tasks.spawn(write(
            session,
            shared.clone(),
            phase_rx.clone(),
            stop_rx.clone(),
            plan.close_grace,
        ));
    }
    let describe: Vec<String> = rp.rates.iter().map(rate_name).collect();
    eprintln!(
        "  {users} users, up to {} roster sets in flight each, steps of {} s at [{}] writes/s, drain up to {} s",
        rp.outstanding,
        rp.step.as_secs(),
        describe.join(", "),
        rp.drain.as_secs()
    );
    let progress = Progress::start("roster writes", recorder.clone());
    let deadline = Instant::now() + rp.duration;
    // Per step run: (start µs after the epoch, its length, drain waited).
    let mut ran: Vec<(u64, Duration, Duration)> = Vec::new();
    for (k, rate) in rp.rates.iter().enumerate() {
        let now = Instant::now();
        if now >= deadline {
            note(&format!(
                "  --duration-secs reached: {} step(s) not run",
                rp.rates.len() - k
            ));
            break;
        }
        let length = rp.step.min(deadline - now);
        let interval = rate.map(|r| Duration::from_secs_f64(users as f64 / f64::from(r)));
        let begun = shared.epoch.elapsed().as_micros() as u64;
        let _ = phase_tx.send(Some(Phase { step: k, interval }));
        tokio::time::sleep(length).await;
        let _ = phase_tx.send(None);
        let ended = Instant::now();
        let counters = &shared.steps[k];
        loop {
            let done =
                counters.answered.load(Ordering::Relaxed) >= counters.sent.load(Ordering::Relaxed);
            if done || ended.elapsed() >= rp.drain {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        let waited = ended.elapsed();
        shared.closed.store(k + 1, Ordering::Relaxed);
        ran.push((begun, length, waited));
        note(&format!(
            "  step {}: {} sent, {} answered, drain {:.2} s",
            rate_name(rate),
            counters.sent.load(Ordering::Relaxed),
            counters.answered.load(Ordering::Relaxed),
            waited.as_secs_f64()
        ));
    }
    let _ = stop.send(true);
    let mut per_step = vec![Received::default(); rp.rates.len()];
    let ends = join_users(tasks, |received: Vec<Received>| {
        for (total, r) in per_step.iter_mut().zip(received) {
            total.acked += r.acked;
            merge(&mut total.errors, r.errors);
            merge(&mut total.wait_errors, r.wait_errors);
            total.late += r.late;
            total.latencies_us.extend(r.latencies_us);
            total.last_us = total.last_us.max(r.last_us);
        }
    })
    .await;
    progress.finish().await;
    let (dropped, close) = tally(ends);

    let mut steps = Vec::new();
    let mut all_latencies = Vec::new();
    let mut errors = BTreeMap::new();
    let mut wait_errors = BTreeMap::new();
    for (k, (begun, length, waited)) in ran.into_iter().enumerate() {
        let r = std::mem::take(&mut per_step[k]);
        let sent = shared.steps[k].sent.load(Ordering::Relaxed);
        let answered = shared.steps[k].answered.load(Ordering::Relaxed);
        let secs = length.as_secs_f64();
        // Over the step's length, or to its last result if that came later (in the drain).
        let acking = (r.last_us.saturating_sub(begun) as f64 / 1e6).max(secs);
        all_latencies.extend_from_slice(&r.latencies_us);
        for (c, n) in &r.errors {
            *errors.entry(c.clone()).or_default() += n;
        }
        for (c, n) in &r.wait_errors {
            *wait_errors.entry(c.clone()).or_default() += n;
        }
        steps.push(IqStepSummary {
            target_rate: rp.rates[k],
            secs,
            sent,
            offered_per_sec: sent as f64 / secs.max(1e-6),
            acked: r.acked,
            acked_per_sec: r.acked as f64 / acking.max(1e-6),
            errors: r.errors,
            wait_errors: r.wait_errors,
            unanswered: sent.saturating_sub(answered),
            late: r.late,
            drain_waited_secs: waited.as_secs_f64(),
            latency_ms: Distribution::from_micros(r.latencies_us),
        });
    }
    let best = steps
        .iter()
        .filter(|s| s.errors.is_empty() && s.acked > 0)
        .max_by(|a, b| a.acked_per_sec.total_cmp(&b.acked_per_sec));
    let summary = RosterWritesSummary {
        outstanding: rp.outstanding,
        step_secs: rp.step.as_secs(),
        drain_secs: rp.drain.as_secs(),
        duration_secs: rp.duration.as_secs(),
        contact_domain: rp.contact_domain,
        sent: steps.iter().map(|s| s.sent).sum(),
        acked: steps.iter().map(|s| s.acked).sum(),
        errors,
        wait_errors,
        unanswered: steps.iter().map(|s| s.unanswered).sum(),
        pushes: shared.pushes.load(Ordering::Relaxed),
        best_acked_per_sec: best.map_or(0.0, |s| s.acked_per_sec),
        latency_ms: Distribution::from_micros(all_latencies),
        steps,
        timeline: recorder.series(),
    };
    Ok((Outcome::sessions(ramp.summary, dropped, close), summary))
}

pub fn rate_name(rate: &Option<u32>) -> String {
    rate.map_or("max".into(), |r| format!("{r}/s"))
}

fn merge(into: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>) {
    for (k, n) in from {
        *into.entry(k).or_default() += n;
    }
}

/// The defined condition of a stanza error (`<error type='...'><CONDITION/>...`) and its type.
pub fn stanza_error(el: &str) -> (String, String) {
    let Some(error) = xml::child(el, "error") else {
        return ("no <error/>".into(), String::new());
    };
    let kind = xml::attr(error, "type").unwrap_or_default();
    let condition = xml::children(error)
        .into_iter()
        .map(xml::name)
        .find(|n| *n != "text")
        .unwrap_or("no condition")
        .to_string();
    (condition, kind)
}

/// The answer a client owes to a roster push (an IQ set from the server), if `el` is one.
pub fn push_reply(el: &str) -> Option<String> {
    if xml::name(el) != "iq" || xml::attr(el, "type").as_deref() != Some("set") {
        return None;
    }
    let query = xml::child(el, "query")?;
    if xml::attr(query, "xmlns").as_deref() != Some(NS_ROSTER) {
        return None;
    }
    let id = xml::attr(el, "id").unwrap_or_default();
    Some(format!("<iq type='result' id='{}'/>", xml::escape(&id)))
}

/// One user: send sets while a step runs (keeping at most `outstanding` in flight), count
/// the replies, answer pushes, until told to stop.
async fn write(
    mut session: Session,
    shared: Arc<Shared>,
    mut phase_rx: watch::Receiver<Option<Phase>>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) -> (End, Vec<Received>) {
    let mut received = vec![Received::default(); shared.steps.len()];
    // id → (sent at, step)
    let mut in_flight: HashMap<u32, (Instant, usize)> = HashMap::new();
    let mut phase: Option<Phase> = None;
    let mut seq = 0u32;
    let mut next_send = tokio::time::Instant::now();
    let mut coordinated = true;
    let failure = loop {
        let window_open = in_flight.len() < shared.outstanding;
        tokio::select! {
            _ = stopped(&mut stop) => break None,
            changed = phase_rx.changed(), if coordinated => {
                if changed.is_err() {
                    phase = None;
                    coordinated = false;
                    continue;
                }
                let now_phase = *phase_rx.borrow_and_update();
                if let Some(p) = now_phase {
                    if phase.map(|q| q.step) != Some(p.step) {
                        // Sets of steps whose drain is over will not count: free their slots.
                        let closed = shared.closed.load(Ordering::Relaxed);
                        in_flight.retain(|_, (_, step)| *step >= closed);
                        next_send = tokio::time::Instant::now();
                        if let Some(interval) = p.interval {
                            let offset = rand::thread_rng()
                                .gen_range(0..interval.as_micros().max(1) as u64);
                            next_send += Duration::from_micros(offset);
                        }
                    }
                }
                phase = now_phase;
            }
            _ = tokio::time::sleep_until(next_send), if phase.is_some() && window_open => {
                let Some(p) = phase else { continue };
                if seq == u32::MAX || shared.total_sent.fetch_add(1, Ordering::Relaxed) >= MAX_WRITES {
                    phase = None;
                    continue;
                }
                seq += 1;
                let iq = format!(
                    "<iq type='set' id='w{seq}'><query xmlns='{NS_ROSTER}'><item jid='w{:08x}.{seq}@{}'/></query></iq>",
                    shared.run,
                    xml::escape(&shared.contact_domain)
                );
                let counters = &shared.steps[p.step];
                counters.sent.fetch_add(1, Ordering::Relaxed);
                in_flight.insert(seq, (Instant::now(), p.step));
                if let Err(failure) = session.conn.send(&iq).await {
                    break Some(failure);
                }
                let now = tokio::time::Instant::now();
                next_send = match p.interval {
                    // Behind by more than a window's worth: the server (or this generator)
                    // cannot keep up; drop the missed slots rather than burst to catch up.
                    Some(interval) => {
                        let next = next_send + interval;
                        now.checked_sub(interval * shared.outstanding as u32)
                            .map_or(next, |floor| next.max(floor))
                    }
                    None => now,
                };
            }
            el = session.conn.next_element() => match el {
                Ok(el) => {
                    if let Some(reply) = push_reply(&el) {
                        shared.pushes.fetch_add(1, Ordering::Relaxed);
                        if let Err(failure) = session.conn.send(&reply).await {
                            break Some(failure);
                        }
                        continue;
                    }
                    answer(&shared, &el, &mut in_flight, &mut received);
                }
                Err(failure) => break Some(failure),
            }
        }
    };
    (session.end(failure, grace).await, received)
}

/// A reply to one of our sets: count it for its step.
fn answer(
    shared: &Shared,
    el: &str,
    in_flight: &mut HashMap<u32, (Instant, usize)>,
    received: &mut [Received],
) {
    if xml::name(el) != "iq" {
        return;
    }
    let Some(seq) =
        xml::attr(el, "id").and_then(|id| id.strip_prefix('w').and_then(|s| s.parse::<u32>().ok()))
    else {
        return;
    };
    let Some((sent_at, k)) = in_flight.remove(&seq) else {
        return;
    };
    let r = &mut received[k];
    if k < shared.closed.load(Ordering::Relaxed) {
        r.late += 1;
        return;
    }
    let took = sent_at.elapsed();
    match xml::attr(el, "type").as_deref() {
        Some("result") => {
            r.acked += 1;
            r.latencies_us.push(took.as_micros() as u64);
            r.last_us = r.last_us.max(shared.epoch.elapsed().as_micros() as u64);
            shared.recorder.ok(took);
        }
        Some("error") => {
            let (condition, kind) = stanza_error(el);
            if kind == "wait" {
                count(&mut r.wait_errors, condition);
            } else {
                count(&mut r.errors, condition);
            }
            shared.recorder.failed();
        }
        _ => return,
    }
    shared.steps[k].answered.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_with_max() {
        assert_eq!(
            parse_rates("100, 200,max").unwrap(),
            [Some(100), Some(200), None]
        );
        assert_eq!(parse_rates("MAX").unwrap(), [None]);
        assert!(parse_rates("0").is_err());
        assert!(parse_rates("fast").is_err());
        assert!(parse_rates("").is_err());
        assert_eq!(rate_name(&None), "max");
        assert_eq!(rate_name(&Some(5)), "5/s");
    }

    #[test]
    fn errors_and_pushes() {
        let err = "<iq type='error' id='w3'><error type='wait'>\
            <resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
            <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>later</text></error></iq>";
        assert_eq!(
            stanza_error(err),
            ("resource-constraint".to_string(), "wait".to_string())
        );
        let err = "<iq type='error' id='w4'><error type='cancel'>\
            <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>no</text>\
            <not-allowed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>";
        assert_eq!(stanza_error(err).0, "not-allowed");
        let push = "<iq type='set' id='push7'><query xmlns='jabber:iq:roster' ver='9'>\
            <item jid='w1.1@bench.example' subscription='none'/></query></iq>";
        assert_eq!(
            push_reply(push).as_deref(),
            Some("<iq type='result' id='push7'/>")
        );
        assert_eq!(push_reply("<iq type='result' id='w1'/>"), None);
        assert_eq!(push_reply("<message><body>x</body></message>"), None);
    }
}
