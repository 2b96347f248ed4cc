//! Scenario `chat --rates`: stepped chat. All users log in; then for each target rate in turn
//! the users together offer that many messages per second for `--step-secs` (each user
//! `rate / users` per second, from a random offset, to random other logged-in users, full
//! JID addressing), then stop sending and wait at most `--drain-secs` for the step's messages
//! still in flight. A message belongs to the step it was sent in, whenever it arrives before
//! the end of that step's drain; later arrivals count as lost (`late`). A step is sustained
//! if its p99 latency is below `--p99-limit-ms`, nothing was lost or bounced and at least
//! 90 % of the target was offered; the sustainable rate is the highest sustained step.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use rustc_hash::FxHashSet;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::conn::Failure;
use crate::probe::{self, ChatMessage};
use crate::ramp::{stopped, tally, End, Plan, Session};
use crate::report::{ChatStepSummary, ChatStepsSummary, ChatSummary, Distribution, Outcome};
use crate::system::{cpu_percent, cpu_us_per, CpuMeter};
use crate::xml;

pub struct StepPlan {
    pub rates: Vec<u32>,
    pub step: Duration,
    pub drain: Duration,
    pub p99_limit: Duration,
    /// Stop after this many consecutive steps that were not sustained (0: run them all).
    pub stop_after: u32,
}

/// Sequence numbers carry the step: `step << STEP_SHIFT | n`.
/// Most messages of one user written at once when several are due.
pub(crate) const MAX_BATCH: u64 = 32;
pub(crate) const STEP_SHIFT: u32 = 25;
/// Most messages one user may send in one step (n < 2^25).
pub const MAX_PER_USER_STEP: u64 = 1 << STEP_SHIFT;
/// Most messages a stepped run may send in all.
pub const MAX_MESSAGES: u64 = 20_000_000;
/// Offered below this share of the target, a step is not counted as sustained.
pub(crate) const MIN_OFFERED: f64 = 0.9;
const POLL: Duration = Duration::from_millis(10);
const ID_PREFIX: char = 's';

#[derive(Default)]
struct StepCounters {
    sent: AtomicU64,
    /// Distinct deliveries plus bounces before the end of the drain.
    accounted: AtomicU64,
    /// Deliveries slower than the p99 limit (to decide early whether to go on).
    slow: AtomicU64,
}

/// What senders should do now: send for `step` at one message per `interval`, or pause.
#[derive(Clone, Copy, PartialEq)]
struct Phase {
    step: usize,
    interval: Duration,
}

struct Shared {
    /// Every logged-in user's full JID, by position: formatted once, not per message.
    jids: Vec<String>,
    /// This run's marker tag ([`probe::run_tag`]).
    tag: String,
    epoch: Instant,
    steps: Vec<StepCounters>,
    /// Steps whose drain is over: their messages arriving now are late.
    closed: AtomicUsize,
    p99_limit_us: u64,
    body_bytes: usize,
}

/// A step that ran: its start (µs after the epoch), the drain waited, and the generator's
/// CPU and wall time while it offered its rate.
struct StepRun {
    begun: u64,
    waited: Duration,
    cpu: Duration,
    wall: Duration,
}

#[derive(Default, Clone)]
struct Received {
    unique: u64,
    duplicates: u64,
    bounced: u64,
    late: u64,
    latencies_us: Vec<u64>,
    last_us: u64,
}

pub async fn run(plan: &Plan, sp: StepPlan, body_bytes: usize) -> anyhow::Result<Outcome> {
    let (ramp, peers, stop, stopped_rx) = crate::chat::login_chatters(plan).await?;
    let users = peers.len() as u64;
    let shared = Arc::new(Shared {
        jids: peers.iter().map(|&i| plan.target.full_jid(i)).collect(),
        tag: probe::run_tag('c'),
        epoch: Instant::now(),
        steps: sp.rates.iter().map(|_| StepCounters::default()).collect(),
        closed: AtomicUsize::new(0),
        p99_limit_us: sp.p99_limit.as_micros() as u64,
        body_bytes,
    });
    let (phase_tx, phase_rx) = watch::channel(None::<Phase>);
    let mut tasks = JoinSet::new();
    for (pos, session) in ramp.sessions.into_iter().enumerate() {
        tasks.spawn(converse(
            session,
            pos,
            shared.clone(),
            phase_rx.clone(),
            stopped_rx.clone(),
            plan.close_grace,
        ));
    }
    eprintln!(
        "  {users} users, steps of {} s at {:?} messages/s, drain up to {} s",
        sp.step.as_secs(),
        sp.rates,
        sp.drain.as_secs()
    );
    let start = Instant::now();
    let exchange = CpuMeter::start();
    // Per step run: start µs after the epoch, drain waited, generator CPU and wall time.
    let mut ran: Vec<StepRun> = Vec::new();
    let mut failing = 0u32;
    for (k, &rate) in sp.rates.iter().enumerate() {
        let interval = Duration::from_secs_f64(users as f64 / f64::from(rate));
        let begun = shared.epoch.elapsed().as_micros() as u64;
        let meter = CpuMeter::start();
        let _ = phase_tx.send(Some(Phase { step: k, interval }));
        tokio::time::sleep(sp.step).await;
        let _ = phase_tx.send(None);
        let (cpu, wall) = (meter.cpu(), meter.wall());
        let ended = Instant::now();
        let counters = &shared.steps[k];
        loop {
            tokio::time::sleep(POLL).await;
            let done =
                counters.accounted.load(Ordering::Relaxed) >= counters.sent.load(Ordering::Relaxed);
            if done || ended.elapsed() >= sp.drain {
                break;
            }
        }
        let waited = ended.elapsed();
        shared.closed.store(k + 1, Ordering::Relaxed);
        ran.push(StepRun {
            begun,
            waited,
            cpu,
            wall,
        });
        let sent = counters.sent.load(Ordering::Relaxed);
        let accounted = counters.accounted.load(Ordering::Relaxed);
        let slow = counters.slow.load(Ordering::Relaxed);
        let ok = accounted >= sent && slow * 100 < accounted.max(1);
        eprintln!(
            "  step {rate}/s: {sent} sent, {accounted} accounted for, {slow} over {} ms, drain {:.2} s, gen CPU {:.0} %",
            sp.p99_limit.as_millis(),
            waited.as_secs_f64(),
            cpu_percent(cpu, wall)
        );
        failing = if ok { 0 } else { failing + 1 };
        if sp.stop_after > 0 && failing >= sp.stop_after && k + 1 < sp.rates.len() {
            eprintln!("  {failing} steps in a row not sustained: stopping");
            break;
        }
    }
    let elapsed = start.elapsed();
    let exchange_cpu = exchange.cpu();
    let _ = stop.send(true);

    let mut per_step = vec![Received::default(); sp.rates.len()];
    let mut ends = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((end, received)) => {
                ends.push(end);
                for (total, r) in per_step.iter_mut().zip(received) {
                    total.unique += r.unique;
                    total.duplicates += r.duplicates;
                    total.bounced += r.bounced;
                    total.late += r.late;
                    total.latencies_us.extend(r.latencies_us);
                    total.last_us = total.last_us.max(r.last_us);
                }
            }
            Err(e) => ends.push(End::Dropped(Failure::Protocol(format!("internal: {e}")))),
        }
    }
    let (dropped, close) = tally(ends);

    let step_secs = sp.step.as_secs_f64();
    let limit_ms = sp.p99_limit.as_secs_f64() * 1000.0;
    let mut steps = Vec::new();
    let mut all_latencies = Vec::new();
    let (mut sent_all, mut received_all, mut dup_all, mut bounced_all) = (0, 0, 0, 0);
    let mut last_all = 0u64;
    for (k, run) in ran.into_iter().enumerate() {
        let StepRun { begun, waited, .. } = run;
        let r = std::mem::take(&mut per_step[k]);
        let rate = sp.rates[k];
        let sent = shared.steps[k].sent.load(Ordering::Relaxed);
        let lost = sent.saturating_sub(r.unique + r.bounced);
        let delivering = (r.last_us.saturating_sub(begun) as f64 / 1e6).max(step_secs);
        let latency = Distribution::from_micros(r.latencies_us.clone());
        let offered = sent as f64 / step_secs;
        let sustained = lost == 0
            && r.bounced == 0
            && r.unique > 0
            && latency.p99 < limit_ms
            && offered >= MIN_OFFERED * f64::from(rate);
        sent_all += sent;
        received_all += r.unique;
        dup_all += r.duplicates;
        bounced_all += r.bounced;
        last_all = last_all.max(r.last_us);
        all_latencies.extend(r.latencies_us);
        steps.push(ChatStepSummary {
            target_rate: rate,
            sent,
            offered_per_sec: offered,
            received: r.unique,
            delivered_per_sec: r.unique as f64 / delivering,
            lost,
            late: r.late,
            duplicates: r.duplicates,
            bounced: r.bounced,
            drain_waited_secs: waited.as_secs_f64(),
            latency_ms: latency,
            generator_cpu_secs: run.cpu.as_secs_f64(),
            generator_cpu_percent: cpu_percent(run.cpu, run.wall),
            sustained,
        });
    }
    let best = steps
        .iter()
        .filter(|s| s.sustained)
        .max_by_key(|s| s.target_rate);
    let (sustainable_rate, sustainable_delivered_per_sec) =
        best.map_or((0, 0.0), |s| (s.target_rate, s.delivered_per_sec));
    let delivering = Duration::from_micros(last_all)
        .saturating_sub(start.saturating_duration_since(shared.epoch));
    Ok(Outcome {
        login: ramp.summary,
        chat: Some(ChatSummary {
            messages_per_user: 0,
            interval_ms: 0,
            body_bytes,
            cross_node_only: false,
            sent: sent_all,
            cross_node: 0,
            received: received_all,
            lost: sent_all.saturating_sub(received_all + bounced_all),
            duplicates: dup_all,
            bounced: bounced_all,
            elapsed_secs: elapsed.as_secs_f64(),
            last_delivery_secs: delivering.as_secs_f64(),
            received_per_sec: received_all as f64 / delivering.as_secs_f64().max(1e-6),
            latency_ms: Distribution::from_micros(all_latencies),
            generator_cpu_secs: exchange_cpu.as_secs_f64(),
            generator_cpu_us_per_message: cpu_us_per(exchange_cpu, received_all),
            carbons: None,
            flaky: None,
            server_cpu: None,
            stepped: Some(ChatStepsSummary {
                step_secs: sp.step.as_secs(),
                drain_secs: sp.drain.as_secs(),
                p99_limit_ms: limit_ms,
                steps,
                sustainable_rate,
                sustainable_delivered_per_sec,
            }),
        }),
        dropped,
        close,
        ..Outcome::default()
    })
}

/// One user: send while a step runs, receive whatever arrives, until told to stop.
async fn converse(
    mut session: Session,
    pos: usize,
    shared: Arc<Shared>,
    mut phase_rx: watch::Receiver<Option<Phase>>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) -> (End, Vec<Received>) {
    let mut received = vec![Received::default(); shared.steps.len()];
    let mut seen = FxHashSet::default();
    let mut phase: Option<Phase> = None;
    let mut n = 0u64;
    let mut next_send = tokio::time::Instant::now();
    let mut coordinated = true;
    let failure = loop {
        tokio::select! {
            _ = stopped(&mut stop) => break None,
            changed = phase_rx.changed(), if coordinated => {
                if changed.is_err() {
                    // The coordinator is gone: wait for the stop signal only.
                    phase = None;
                    coordinated = false;
                    continue;
                }
                let now_phase = *phase_rx.borrow_and_update();
                if let Some(p) = now_phase {
                    if phase.map(|q| q.step) != Some(p.step) {
                        n = 0;
                        let offset = rand::thread_rng()
                            .gen_range(0..p.interval.as_micros().max(1) as u64);
                        next_send = tokio::time::Instant::now() + Duration::from_micros(offset);
                    }
                }
                phase = now_phase;
            }
            _ = tokio::time::sleep_until(next_send), if phase.is_some() && !phase_rx.has_changed().unwrap_or(true) => {
                let Some(p) = phase else { continue };
                // Every message that is due goes out in one write: a generator that fell
                // behind catches up with one system call, not one per message.
                let mut batch = String::new();
                let mut count = 0;
                let now = tokio::time::Instant::now();
                while next_send <= now && count < MAX_BATCH {
                    if n >= MAX_PER_USER_STEP - 1 {
                        phase = None;
                        break;
                    }
                    let seq = ((p.step as u32) << STEP_SHIFT) | n as u32;
                    n += 1;
                    batch.push_str(&compose(&shared, pos, session.index, seq));
                    count += 1;
                    next_send += p.interval;
                }
                if count == 0 {
                    continue;
                }
                let counters = &shared.steps[p.step];
                counters.sent.fetch_add(count, Ordering::Relaxed);
                if let Err(failure) = session.conn.send(&batch).await {
                    counters.sent.fetch_sub(count, Ordering::Relaxed);
                    break Some(failure);
                }
            }
            el = session.conn.next_element() => match el {
                Ok(el) => receive(&shared, &el, &mut seen, &mut received),
                Err(failure) => break Some(failure),
            }
        }
    };
    match failure {
        Some(failure) => (End::Dropped(failure), received),
        None => {
            let clean = session.conn.close(grace).await;
            (End::Closed { clean }, received)
        }
    }
}

fn compose(shared: &Shared, pos: usize, from: u32, seq: u32) -> String {
    ChatMessage {
        to: &shared.jids[crate::chat::other_position(shared.jids.len(), pos)],
        id_prefix: ID_PREFIX,
        tag: &shared.tag,
        from,
        seq,
        sent_us: shared.epoch.elapsed().as_micros() as u64,
        body_len: shared.body_bytes,
    }
    .stanza()
}

fn receive(shared: &Shared, el: &str, seen: &mut FxHashSet<(u32, u32)>, received: &mut [Received]) {
    if xml::name(el) != "message" {
        return;
    }
    let step_of = |seq: u32| (seq >> STEP_SHIFT) as usize;
    let closed = shared.closed.load(Ordering::Relaxed);
    if xml::attr(el, "type").as_deref() == Some("error") {
        // The bounce carries our id when the server keeps it.
        let step = probe::bounced_seq(el, ID_PREFIX, &shared.tag)
            .map(step_of)
            .filter(|&k| k < received.len());
        if let Some(k) = step {
            received[k].bounced += 1;
            if k >= closed {
                shared.steps[k].accounted.fetch_add(1, Ordering::Relaxed);
            }
        }
        return;
    }
    let Some(body) = xml::child(el, "body").map(xml::text) else {
        return;
    };
    let Some((from, seq, sent_us)) = probe::parse_tagged(&body, &shared.tag) else {
        return;
    };
    let k = step_of(seq);
    if k >= received.len() {
        return;
    }
    if !seen.insert((from, seq)) {
        received[k].duplicates += 1;
        return;
    }
    let r = &mut received[k];
    if k < closed {
        r.late += 1;
        return;
    }
    let now_us = shared.epoch.elapsed().as_micros() as u64;
    let latency = now_us.saturating_sub(sent_us);
    r.unique += 1;
    r.latencies_us.push(latency);
    r.last_us = r.last_us.max(now_us);
    let counters = &shared.steps[k];
    counters.accounted.fetch_add(1, Ordering::Relaxed);
    if latency >= shared.p99_limit_us {
        counters.slow.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_carry_the_step() {
        let seq = (7u32 << STEP_SHIFT) | 12345;
        assert_eq!((seq >> STEP_SHIFT) as usize, 7);
        assert_eq!(seq & ((1 << STEP_SHIFT) - 1), 12345);
        // 100 steps fit in the 7 bits left.
        assert!(99u64 << STEP_SHIFT | (MAX_PER_USER_STEP - 1) <= u64::from(u32::MAX));
    }
}
