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

use crate::probe::{self, ChatMessage};
use crate::ramp::{join_users, stopped, tally, End, Plan, Session};
use crate::report::{ChatStepSummary, ChatStepsSummary, ChatSummary, Distribution, Outcome};
use crate::system::{cpu_percent, cpu_us_per, server_cpu, CpuMeter};
use crate::xml;

/// The steps of a stepped run (stepped chat, `pep`).
pub struct StepPlan {
    /// Aggregate events/s offered by all senders together, one step each.
    pub rates: Vec<u32>,
    pub step: Duration,
    pub drain: Duration,
    pub p99_limit: Duration,
    /// Stop after this many consecutive steps that were not sustained (0: run them all).
    pub stop_after: u32,
    /// The nodes' metrics endpoints, read at each step's start and the end of its drain: a
    /// chat step whose messages the archive did not all keep is not sustained.
    pub archive_metrics: Vec<crate::scrape::Endpoint>,
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
/// Before the first step the server must have been this quiet for one [`SETTLE_WINDOW`]: the
/// work logins leave behind (roster and presence of thousands of sessions, the writes they
/// queued) otherwise lands in the first step's latency and CPU per message.
const SETTLE_CPU_SHARE: f64 = 0.05;
const SETTLE_WINDOW: Duration = Duration::from_millis(500);
/// Longest wait for the server to settle; the steps start then whatever it is doing.
const SETTLE_MAX: Duration = Duration::from_secs(30);
const ID_PREFIX: char = 's';

/// What senders do now: send for `step` at one event per `interval`; `None`: pause.
#[derive(Clone, Copy, PartialEq)]
pub(crate) struct Phase {
    pub step: usize,
    pub interval: Duration,
}

/// A step that ran: its start (µs after the epoch), the drain waited, the generator's CPU
/// and wall time while it offered its rate, and the server's CPU from its start to the end of
/// its drain (`None` without server PIDs).
pub(crate) struct StepRun {
    pub begun: u64,
    pub waited: Duration,
    pub cpu: Duration,
    pub wall: Duration,
    pub server_cpu: Option<Duration>,
    /// With archive metrics: messages the archive did not keep from the step's start to the
    /// end of its drain.
    pub not_archived: Option<u64>,
}

impl StepRun {
    /// `, server CPU N s` for a step's progress line (empty without server PIDs).
    pub fn server_note(&self) -> String {
        self.server_cpu.map_or(String::new(), |s| {
            format!(", server CPU {:.2} s", s.as_secs_f64())
        })
    }
}

/// The coordinator of a stepped run (stepped chat, `pep`): tells the senders each step's
/// [`Phase`], waits out its drain, closes it, and decides whether to go on.
pub(crate) struct Stepper<'a> {
    phase_tx: watch::Sender<Option<Phase>>,
    epoch: Instant,
    /// Steps whose drain is over (what arrives for them now is late).
    closed: &'a AtomicUsize,
    /// The server processes whose CPU each step reads.
    server_pids: &'a [u32],
    archive_metrics: Vec<crate::scrape::Endpoint>,
    step: Duration,
    drain: Duration,
    stop_after: u32,
    /// Steps not sustained in a row so far.
    failing: u32,
}

impl<'a> Stepper<'a> {
    pub fn new(
        plan: &StepPlan,
        phase_tx: watch::Sender<Option<Phase>>,
        epoch: Instant,
        closed: &'a AtomicUsize,
        server_pids: &'a [u32],
    ) -> Stepper<'a> {
        Stepper {
            phase_tx,
            epoch,
            closed,
            server_pids,
            archive_metrics: plan.archive_metrics.clone(),
            step: plan.step,
            drain: plan.drain,
            stop_after: plan.stop_after,
            failing: 0,
        }
    }

    /// Wait until the server processes use under [`SETTLE_CPU_SHARE`] of a core over one
    /// [`SETTLE_WINDOW`], at most [`SETTLE_MAX`], and say how long that took (nothing
    /// without server PIDs). Call it once, before the first step.
    pub async fn settle(&self) -> anyhow::Result<()> {
        let start = Instant::now();
        let Some(mut before) = server_cpu(self.server_pids)? else {
            return Ok(());
        };
        loop {
            tokio::time::sleep(SETTLE_WINDOW).await;
            let now = server_cpu(self.server_pids)?.unwrap_or(before);
            let busy = now.saturating_sub(before).as_secs_f64() / SETTLE_WINDOW.as_secs_f64();
            if busy < SETTLE_CPU_SHARE || start.elapsed() >= SETTLE_MAX {
                eprintln!(
                    "  server at {:.0} % of a core after {:.1} s of waiting for it to settle",
                    busy * 100.0,
                    start.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            before = now;
        }
    }

    /// Run step `k`: every sender sends one event per `interval` for the step's length; then
    /// wait at most the drain until `drained()`, and close the step.
    pub async fn run(
        &self,
        k: usize,
        interval: Duration,
        drained: impl Fn() -> bool,
    ) -> anyhow::Result<StepRun> {
        let server_before = server_cpu(self.server_pids)?;
        let archive_before = self.not_archived().await?;
        let begun = self.epoch.elapsed().as_micros() as u64;
        let meter = CpuMeter::start();
        let _ = self.phase_tx.send(Some(Phase { step: k, interval }));
        tokio::time::sleep(self.step).await;
        let _ = self.phase_tx.send(None);
        let (cpu, wall) = (meter.cpu(), meter.wall());
        let ended = Instant::now();
        loop {
            tokio::time::sleep(POLL).await;
            if drained() || ended.elapsed() >= self.drain {
                break;
            }
        }
        let waited = ended.elapsed();
        self.closed.store(k + 1, Ordering::Relaxed);
        let server = server_before
            .zip(server_cpu(self.server_pids)?)
            .map(|(b, a)| a.saturating_sub(b));
        // The archive is written up to its linger (20 ms) after a delivery, and a message it
        // cannot take is counted when it is refused: at the end of the drain it is counted.
        let not_archived = archive_before
            .zip(self.not_archived().await?)
            .map(|(b, a)| (a - b).max(0.0) as u64);
        Ok(StepRun {
            begun,
            waited,
            cpu,
            wall,
            server_cpu: server,
            not_archived,
        })
    }

    /// The archive's refusals so far over the archive metrics endpoints (`None` without).
    async fn not_archived(&self) -> anyhow::Result<Option<f64>> {
        if self.archive_metrics.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            crate::scrape::not_archived(&self.archive_metrics).await?,
        ))
    }

    /// Whether to stop after step `k` of `steps`: `stop_after` steps in a row looked not
    /// sustained (something not accounted for, or 1 % or more slower than the p99 limit).
    pub fn should_stop(
        &mut self,
        k: usize,
        steps: usize,
        accounted: u64,
        expected: u64,
        slow: u64,
    ) -> bool {
        let ok = accounted >= expected && slow * 100 < accounted.max(1);
        self.failing = if ok { 0 } else { self.failing + 1 };
        if self.stop_after > 0 && self.failing >= self.stop_after && k + 1 < steps {
            eprintln!("  {} steps in a row not sustained: stopping", self.failing);
            return true;
        }
        false
    }
}

/// Events of one step that were due, written as one batch.
pub(crate) struct Due {
    pub step: usize,
    pub count: u64,
    pub batch: String,
}

/// One sender's pace through the steps of a stepped run: follows the coordinator's
/// [`Phase`] and hands out the sequence numbers (`step << STEP_SHIFT | n`) that are due.
pub(crate) struct Pacer {
    phase_rx: watch::Receiver<Option<Phase>>,
    phase: Option<Phase>,
    /// Events of the current step so far.
    n: u64,
    next_send: tokio::time::Instant,
    /// False once the coordinator is gone: no more events.
    coordinated: bool,
}

impl Pacer {
    pub fn new(phase_rx: watch::Receiver<Option<Phase>>) -> Pacer {
        Pacer {
            phase_rx,
            phase: None,
            n: 0,
            next_send: tokio::time::Instant::now(),
            coordinated: true,
        }
    }

    /// Wait until events are due, then write every one that is, `compose(batch, seq)` each,
    /// into one batch: a generator that fell behind catches up with one system call, not
    /// one per event. Cancel-safe (its state changes only between awaits), so it can be a
    /// branch of the sender's `select!`; pending for ever once the coordinator is gone.
    pub async fn due(&mut self, mut compose: impl FnMut(&mut String, u32)) -> Due {
        loop {
            tokio::select! {
                changed = self.phase_rx.changed(), if self.coordinated => {
                    if changed.is_err() {
                        self.phase = None;
                        self.coordinated = false;
                        continue;
                    }
                    let now_phase = *self.phase_rx.borrow_and_update();
                    if let Some(p) = now_phase {
                        if self.phase.map(|q| q.step) != Some(p.step) {
                            self.n = 0;
                            let offset = rand::thread_rng()
                                .gen_range(0..p.interval.as_micros().max(1) as u64);
                            self.next_send =
                                tokio::time::Instant::now() + Duration::from_micros(offset);
                        }
                    }
                    self.phase = now_phase;
                }
                _ = tokio::time::sleep_until(self.next_send),
                    if self.phase.is_some() && !self.phase_rx.has_changed().unwrap_or(true) => {
                    let Some(p) = self.phase else { continue };
                    let mut batch = String::new();
                    let mut count = 0;
                    let now = tokio::time::Instant::now();
                    while self.next_send <= now && count < MAX_BATCH {
                        if self.n >= MAX_PER_USER_STEP - 1 {
                            self.phase = None;
                            break;
                        }
                        let seq = ((p.step as u32) << STEP_SHIFT) | self.n as u32;
                        self.n += 1;
                        compose(&mut batch, seq);
                        count += 1;
                        self.next_send += p.interval;
                    }
                    if count > 0 {
                        return Due { step: p.step, count, batch };
                    }
                }
                else => std::future::pending::<()>().await,
            }
        }
    }
}

/// Delivered per second over a step of `step_secs` begun at `begun_us`, or up to its last
/// delivery at `last_us` if that came later.
pub(crate) fn delivered_per_sec(
    delivered: u64,
    begun_us: u64,
    last_us: u64,
    step_secs: f64,
) -> f64 {
    delivered as f64 / (last_us.saturating_sub(begun_us) as f64 / 1e6).max(step_secs)
}

/// Whether a step met the bar, besides losing nothing and failing nothing: something
/// delivered, p99 below the limit and at least [`MIN_OFFERED`] of the target offered.
pub(crate) fn met_the_bar(
    delivered: u64,
    p99_ms: f64,
    limit_ms: f64,
    offered_per_sec: f64,
    rate: u32,
) -> bool {
    delivered > 0 && p99_ms < limit_ms && offered_per_sec >= MIN_OFFERED * f64::from(rate)
}

/// The highest target rate sustained and what it delivered per second (0: none), from
/// each step's (sustained, target rate, delivered/s).
pub(crate) fn sustainable(steps: impl Iterator<Item = (bool, u32, f64)>) -> (u32, f64) {
    steps
        .filter(|s| s.0)
        .max_by_key(|s| s.1)
        .map_or((0, 0.0), |s| (s.1, s.2))
}

#[derive(Default)]
struct StepCounters {
    sent: AtomicU64,
    /// Distinct deliveries plus bounces before the end of the drain.
    accounted: AtomicU64,
    /// Deliveries slower than the p99 limit (to decide early whether to go on).
    slow: AtomicU64,
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

#[derive(Default, Clone)]
struct Received {
    unique: u64,
    duplicates: u64,
    bounced: u64,
    late: u64,
    latencies_us: Vec<u64>,
    last_us: u64,
}

impl Received {
    fn add(&mut self, r: Received) {
        self.unique += r.unique;
        self.duplicates += r.duplicates;
        self.bounced += r.bounced;
        self.late += r.late;
        self.latencies_us.extend(r.latencies_us);
        self.last_us = self.last_us.max(r.last_us);
    }
}

/// Stepped chat; with `server_pid`, each step also reports the server's CPU from its start to
/// the end of its drain, per delivered message.
pub async fn run(
    plan: &Plan,
    sp: StepPlan,
    body_bytes: usize,
    server_pid: Option<u32>,
) -> anyhow::Result<Outcome> {
    let server_pids: Vec<u32> = server_pid.into_iter().collect();
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
    let mut stepper = Stepper::new(&sp, phase_tx, shared.epoch, &shared.closed, &server_pids);
    stepper.settle().await?;
    let start = Instant::now();
    let exchange = CpuMeter::start();
    let mut ran: Vec<StepRun> = Vec::new();
    for (k, &rate) in sp.rates.iter().enumerate() {
        let interval = Duration::from_secs_f64(users as f64 / f64::from(rate));
        let counters = &shared.steps[k];
        let run = stepper
            .run(k, interval, || {
                counters.accounted.load(Ordering::Relaxed) >= counters.sent.load(Ordering::Relaxed)
            })
            .await?;
        let sent = counters.sent.load(Ordering::Relaxed);
        let accounted = counters.accounted.load(Ordering::Relaxed);
        let slow = counters.slow.load(Ordering::Relaxed);
        eprintln!(
            "  step {rate}/s: {sent} sent, {accounted} accounted for, {slow} over {} ms, drain {:.2} s, gen CPU {:.0} %{}{}",
            sp.p99_limit.as_millis(),
            run.waited.as_secs_f64(),
            cpu_percent(run.cpu, run.wall),
            run.server_note(),
            run.not_archived
                .map_or(String::new(), |n| format!(", not archived {n}"))
        );
        ran.push(run);
        if stepper.should_stop(k, sp.rates.len(), accounted, sent, slow) {
            break;
        }
    }
    let elapsed = start.elapsed();
    let exchange_cpu = exchange.cpu();
    let _ = stop.send(true);

    let mut per_step = vec![Received::default(); sp.rates.len()];
    let ends = join_users(tasks, |received: Vec<Received>| {
        for (total, r) in per_step.iter_mut().zip(received) {
            total.add(r);
        }
    })
    .await;
    let (dropped, close) = tally(ends);

    let step_secs = sp.step.as_secs_f64();
    let limit_ms = sp.p99_limit.as_secs_f64() * 1000.0;
    let mut steps = Vec::new();
    let mut all_latencies = Vec::new();
    let (mut sent_all, mut received_all, mut dup_all, mut bounced_all) = (0, 0, 0, 0);
    let mut last_all = 0u64;
    for (k, run) in ran.into_iter().enumerate() {
        let StepRun {
            begun,
            waited,
            server_cpu: server,
            not_archived,
            ..
        } = run;
        let r = std::mem::take(&mut per_step[k]);
        let rate = sp.rates[k];
        let sent = shared.steps[k].sent.load(Ordering::Relaxed);
        let lost = sent.saturating_sub(r.unique + r.bounced);
        let latency = Distribution::from_micros(r.latencies_us.clone());
        let offered = sent as f64 / step_secs;
        let sustained = lost == 0
            && r.bounced == 0
            && not_archived.unwrap_or(0) == 0
            && met_the_bar(r.unique, latency.p99, limit_ms, offered, rate);
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
            delivered_per_sec: delivered_per_sec(r.unique, begun, r.last_us, step_secs),
            lost,
            late: r.late,
            duplicates: r.duplicates,
            bounced: r.bounced,
            drain_waited_secs: waited.as_secs_f64(),
            latency_ms: latency,
            generator_cpu_secs: run.cpu.as_secs_f64(),
            generator_cpu_percent: cpu_percent(run.cpu, run.wall),
            server_cpu_secs: server.map(|d| d.as_secs_f64()),
            server_cpu_us_per_message: server.map(|d| cpu_us_per(d, r.unique)),
            server_cpu_percent: server.map(|d| cpu_percent(d, run.wall + waited)),
            not_archived,
            sustained,
        });
    }
    let (sustainable_rate, sustainable_delivered_per_sec) = sustainable(
        steps
            .iter()
            .map(|s| (s.sustained, s.target_rate, s.delivered_per_sec)),
    );
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
    phase_rx: watch::Receiver<Option<Phase>>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) -> (End, Vec<Received>) {
    let mut received = vec![Received::default(); shared.steps.len()];
    let mut seen = FxHashSet::default();
    let mut pacer = Pacer::new(phase_rx);
    let me = session.index;
    let failure = loop {
        tokio::select! {
            _ = stopped(&mut stop) => break None,
            due = pacer.due(|batch, seq| batch.push_str(&compose(&shared, pos, me, seq))) => {
                let counters = &shared.steps[due.step];
                counters.sent.fetch_add(due.count, Ordering::Relaxed);
                if let Err(failure) = session.conn.send(&due.batch).await {
                    counters.sent.fetch_sub(due.count, Ordering::Relaxed);
                    break Some(failure);
                }
            }
            el = session.conn.next_element() => match el {
                Ok(el) => receive(&shared, &el, &mut seen, &mut received),
                Err(failure) => break Some(failure),
            }
        }
    };
    (session.end(failure, grace).await, received)
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
