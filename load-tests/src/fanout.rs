//! What the stepped fan-out scenarios (`muc`, `pep`) share: one event sent gives several
//! copies (to every occupant of a room, to every contact), each measured by its receiver.
//!
//! [`Counters`] are the run's counters shared by the users and the coordinator (per step:
//! sent, expected, accounted, slow); [`Signals`] what the coordinator tells the users;
//! [`user`] and [`Exchange`] a user's task and its part of the steps (send what is due,
//! hand out what arrives), [`Counters::count`] its counting of one copy into its
//! [`Received`]; [`Counters::run_steps`] the coordinator's loop over the steps with the
//! server's CPU read around each step and its drain; [`Counters::totals`] the summary of the
//! steps ([`Totals`], [`Step`]) that both scenarios put in their JSON, parameterised by their
//! own per-step fields; and the report's step line, table, sustained line and latency
//! chart. What differs (how a user gets ready, what an event is and how its copies look, the
//! words of the report) stays in the scenarios.

use std::fmt::Write;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustc_hash::FxHashSet;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::chatstep::{
    delivered_per_sec, met_the_bar, sustainable, Due, Pacer, Phase, StepPlan, StepRun, Stepper,
    STEP_SHIFT,
};
use crate::conn::{Connection, Failure};
use crate::markdown::{ms, table};
use crate::probe;
use crate::ramp::{join_users, stopped, End, Session};
use crate::report::Distribution;
use crate::svg::{bar_chart, Labels};
use crate::system::{cpu_percent, cpu_us_per};

#[derive(Default)]
pub(crate) struct StepCounters {
    /// Events sent (groupchat messages, publishes, presence changes).
    pub sent: AtomicU64,
    /// Copies the events sent should give: one per receiver, the sender's own included.
    pub expected: AtomicU64,
    /// Of those, received before the end of the step's drain.
    pub accounted: AtomicU64,
    /// Received slower than the p99 limit (to stop early).
    pub slow: AtomicU64,
}

/// The counters of one fan-out run, shared by its users and its coordinator.
pub(crate) struct Counters {
    /// This run's marker in every event ([`probe::run_tag`]).
    pub tag: String,
    pub epoch: Instant,
    /// Users ready for the steps (in the room, contacts set up).
    pub ready: AtomicU64,
    pub steps: Vec<StepCounters>,
    /// Steps whose drain is over: their copies arriving now are late.
    pub closed: AtomicUsize,
    pub p99_limit_us: u64,
    /// Copies of other runs' events (or without our marker).
    pub stale: AtomicU64,
}

/// The step an event's sequence number belongs to (`step << STEP_SHIFT | n`).
pub(crate) fn step_of(seq: u32) -> usize {
    (seq >> STEP_SHIFT) as usize
}

/// What one user received, per step.
#[derive(Default, Clone)]
pub(crate) struct Received {
    /// Copies of other users' events.
    pub to_others: u64,
    /// Copies of the user's own events.
    pub to_self: u64,
    pub duplicates: u64,
    pub late: u64,
    /// Events answered with a result (`pep` publishes; 0 where events get no answer).
    pub acked: u64,
    /// Events refused or answered with an error.
    pub errors: u64,
    pub latencies_us: Vec<u64>,
    pub last_us: u64,
}

impl Received {
    pub fn add(&mut self, r: Received) {
        self.to_others += r.to_others;
        self.to_self += r.to_self;
        self.duplicates += r.duplicates;
        self.late += r.late;
        self.acked += r.acked;
        self.errors += r.errors;
        self.latencies_us.extend(r.latencies_us);
        self.last_us = self.last_us.max(r.last_us);
    }
}

/// The coordinator's side of what it tells the users.
pub(crate) struct Coordinator {
    /// Every user is ready: the steps begin.
    pub go: watch::Sender<Option<()>>,
    /// Each step's pace ([`Stepper`]).
    pub phase: watch::Sender<Option<Phase>>,
    pub stop: watch::Sender<bool>,
}

/// A user's side of what the coordinator tells it.
#[derive(Clone)]
pub(crate) struct Signals {
    pub go: watch::Receiver<Option<()>>,
    pub phase: watch::Receiver<Option<Phase>>,
    pub stop: watch::Receiver<bool>,
}

/// The coordinator's and the users' ends of a run's signals.
pub(crate) fn signals() -> (Coordinator, Signals) {
    let (go, go_rx) = watch::channel(None::<()>);
    let (phase, phase_rx) = watch::channel(None::<Phase>);
    let (stop, stop_rx) = watch::channel(false);
    (
        Coordinator { go, phase, stop },
        Signals {
            go: go_rx,
            phase: phase_rx,
            stop: stop_rx,
        },
    )
}

/// One ready user's side of the steps: sends its events while a step runs and hands out
/// what it receives, until told to stop.
pub(crate) struct Exchange {
    pacer: Pacer,
    stop: watch::Receiver<bool>,
    /// Whether this user sends (a receiver only reads).
    sends: bool,
    /// The copies each event should give (receivers, the sender's own included).
    per_event: u64,
    /// The (from, seq) of the copies received, for [`Counters::count`].
    pub seen: FxHashSet<(u32, u32)>,
}

impl Exchange {
    pub fn new(signals: &Signals, sends: bool, per_event: u64) -> Exchange {
        Exchange {
            pacer: Pacer::new(signals.phase.clone()),
            stop: signals.stop.clone(),
            sends,
            per_event,
            seen: FxHashSet::default(),
        }
    }

    /// The next stanza received (`None` once told to stop), sending meanwhile the events
    /// that are due, `compose(batch, seq)` each.
    pub async fn next(
        &mut self,
        counters: &Counters,
        session: &mut Session,
        mut compose: impl FnMut(&mut String, u32),
    ) -> Result<Option<String>, Failure> {
        loop {
            tokio::select! {
                _ = stopped(&mut self.stop) => return Ok(None),
                due = self.pacer.due(&mut compose), if self.sends => {
                    counters.send_due(&mut session.conn, &due, self.per_event).await?;
                }
                el = session.conn.next_element() => return el.map(Some),
            }
        }
    }
}

/// What a user does once logged in (get ready, then the steps), counting into its own
/// [`Received`] per step.
pub(crate) type UserBody<'a> = Pin<Box<dyn Future<Output = Result<(), Failure>> + Send + 'a>>;

/// One user's task: `body`, then the session ends (with `body`'s failure, if any).
pub(crate) async fn user(
    mut session: Session,
    steps: usize,
    grace: Duration,
    body: impl for<'a> FnOnce(&'a mut Session, &'a mut [Received]) -> UserBody<'a>,
) -> (End, Vec<Received>) {
    let mut received = vec![Received::default(); steps];
    let failure = body(&mut session, &mut received).await.err();
    (session.end(failure, grace).await, received)
}

/// The users' ends and their [`Received`] added up per step, once every user is done.
pub(crate) async fn gather(
    tasks: JoinSet<(End, Vec<Received>)>,
    steps: usize,
) -> (Vec<End>, Vec<Received>) {
    let mut per_step = vec![Received::default(); steps];
    let ends = join_users(tasks, |received: Vec<Received>| {
        for (total, r) in per_step.iter_mut().zip(received) {
            total.add(r);
        }
    })
    .await;
    (ends, per_step)
}

impl Counters {
    /// The counters of a run of `plan`'s steps, its events marked with a tag of `kind`.
    pub fn new(kind: char, plan: &StepPlan) -> Counters {
        Counters {
            tag: probe::run_tag(kind),
            epoch: Instant::now(),
            ready: AtomicU64::new(0),
            steps: plan.rates.iter().map(|_| StepCounters::default()).collect(),
            closed: AtomicUsize::new(0),
            p99_limit_us: plan.p99_limit.as_micros() as u64,
            stale: AtomicU64::new(0),
        }
    }

    /// Counters of `steps` steps with the tag `tag` and a p99 limit of 100 ms.
    #[cfg(test)]
    pub fn for_test(tag: &str, steps: usize) -> Counters {
        Counters {
            tag: tag.into(),
            epoch: Instant::now(),
            ready: AtomicU64::new(0),
            steps: (0..steps).map(|_| StepCounters::default()).collect(),
            closed: AtomicUsize::new(0),
            p99_limit_us: 100_000,
            stale: AtomicU64::new(0),
        }
    }

    /// Send the events that are due, counting each as `per_event` copies expected; what
    /// could not be written is not counted.
    pub async fn send_due(
        &self,
        conn: &mut Connection,
        due: &Due,
        per_event: u64,
    ) -> Result<(), Failure> {
        let c = &self.steps[due.step];
        c.sent.fetch_add(due.count, Ordering::Relaxed);
        c.expected
            .fetch_add(due.count * per_event, Ordering::Relaxed);
        if let Err(failure) = conn.send(&due.batch).await {
            c.sent.fetch_sub(due.count, Ordering::Relaxed);
            c.expected
                .fetch_sub(due.count * per_event, Ordering::Relaxed);
            return Err(failure);
        }
        Ok(())
    }

    /// The (from, seq, sent µs) of the marker `text` if it is this run's, else counted stale.
    pub fn parse(&self, text: &str) -> Option<(u32, u32, u64)> {
        let parsed = probe::parse_tagged(text, &self.tag);
        if parsed.is_none() {
            self.stale.fetch_add(1, Ordering::Relaxed);
        }
        parsed
    }

    /// Count the copy of event `seq` of user `from` (sent at `sent_us`) that user `me`
    /// received: a duplicate, late (after its step's drain), or in time with its latency.
    pub fn count(
        &self,
        me: u32,
        (from, seq, sent_us): (u32, u32, u64),
        seen: &mut FxHashSet<(u32, u32)>,
        received: &mut [Received],
    ) {
        let k = step_of(seq);
        let Some(r) = received.get_mut(k) else {
            return;
        };
        if !seen.insert((from, seq)) {
            r.duplicates += 1;
            return;
        }
        if k < self.closed.load(Ordering::Relaxed) {
            r.late += 1;
            return;
        }
        if from == me {
            r.to_self += 1;
        } else {
            r.to_others += 1;
        }
        let now_us = self.epoch.elapsed().as_micros() as u64;
        let latency = now_us.saturating_sub(sent_us);
        r.latencies_us.push(latency);
        r.last_us = r.last_us.max(now_us);
        let c = &self.steps[k];
        c.accounted.fetch_add(1, Ordering::Relaxed);
        if latency >= self.p99_limit_us {
            c.slow.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Run every step of `plan` (until the stepper stops): `senders` users share each
    /// step's rate; a step's drain ends once its copies are all accounted for and
    /// `answered(step, sent)`. The CPU of `server_pids` is read around each step and its
    /// drain; each step's progress goes to stderr, its copies called `copies`.
    #[allow(clippy::too_many_arguments)]
    pub async fn run_steps(
        &self,
        plan: &StepPlan,
        phase_tx: watch::Sender<Option<Phase>>,
        server_pids: &[u32],
        senders: u64,
        copies: &str,
        answered: impl Fn(usize, u64) -> bool,
    ) -> anyhow::Result<Vec<StepRun>> {
        let mut ran = Vec::new();
        let mut stepper = Stepper::new(plan, phase_tx, self.epoch, &self.closed, server_pids);
        stepper.settle().await?;
        for (k, &rate) in plan.rates.iter().enumerate() {
            let interval = Duration::from_secs_f64(senders.max(1) as f64 / f64::from(rate.max(1)));
            let c = &self.steps[k];
            let run = stepper
                .run(k, interval, || {
                    let sent = c.sent.load(Ordering::Relaxed);
                    c.accounted.load(Ordering::Relaxed) >= c.expected.load(Ordering::Relaxed)
                        && answered(k, sent)
                })
                .await?;
            let (sent, expected) = (
                c.sent.load(Ordering::Relaxed),
                c.expected.load(Ordering::Relaxed),
            );
            let accounted = c.accounted.load(Ordering::Relaxed);
            let slow = c.slow.load(Ordering::Relaxed);
            eprintln!(
                "  step {rate}/s: {sent} sent, {accounted}/{expected} {copies}, {slow} over {} ms, drain {:.2} s, gen CPU {:.0} %{}",
                plan.p99_limit.as_millis(),
                run.waited.as_secs_f64(),
                cpu_percent(run.cpu, run.wall),
                run.server_note()
            );
            ran.push(run);
            if stepper.should_stop(k, plan.rates.len(), accounted, expected, slow) {
                break;
            }
        }
        Ok(ran)
    }

    /// The summary of the steps that ran. One copy of each event goes back to its sender,
    /// the rest to the others: what is missing of either is lost. A step is sustained if it
    /// lost nothing, had no error (and, with `no_duplicates`, no duplicate) and met the bar
    /// ([`met_the_bar`]). `own(received, server CPU, sent, delivered)` gives the scenario's
    /// own fields of a step.
    pub fn totals<X>(
        &self,
        plan: &StepPlan,
        ran: Vec<StepRun>,
        mut per_step: Vec<Received>,
        setup_secs: f64,
        no_duplicates: bool,
        own: impl Fn(&Received, Option<Duration>, u64, u64) -> X,
    ) -> Totals<X> {
        let step_secs = plan.step.as_secs_f64();
        let limit_ms = plan.p99_limit.as_secs_f64() * 1000.0;
        let mut steps = Vec::new();
        let mut all = Received::default();
        let (mut sent_all, mut expected_all, mut lost_all) = (0, 0, 0);
        let mut server_all: Option<Duration> = None;
        for (k, run) in ran.into_iter().enumerate() {
            let server_cpu = run.server_cpu;
            let r = std::mem::take(&mut per_step[k]);
            let c = &self.steps[k];
            let rate = plan.rates[k];
            let sent = c.sent.load(Ordering::Relaxed);
            let expected = c.expected.load(Ordering::Relaxed);
            let lost = expected.saturating_sub(sent).saturating_sub(r.to_others)
                + sent.saturating_sub(r.to_self);
            let delivered = r.to_others + r.to_self;
            let latency = Distribution::from_micros(r.latencies_us.clone());
            let offered = sent as f64 / step_secs;
            let sustained = lost == 0
                && r.errors == 0
                && (!no_duplicates || r.duplicates == 0)
                && met_the_bar(delivered, latency.p99, limit_ms, offered, rate);
            if let Some(cpu) = server_cpu {
                server_all = Some(server_all.unwrap_or_default() + cpu);
            }
            sent_all += sent;
            expected_all += expected;
            lost_all += lost;
            steps.push(Step {
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
                own: own(&r, server_cpu, sent, delivered),
                sustained,
            });
            all.add(r);
        }
        let (sustainable_rate, sustainable_delivered_per_sec) = sustainable(
            steps
                .iter()
                .map(|s| (s.sustained, s.target_rate, s.delivered_per_sec)),
        );
        Totals {
            setup_secs,
            step_secs: plan.step.as_secs(),
            drain_secs: plan.drain.as_secs(),
            p99_limit_ms: limit_ms,
            sent: sent_all,
            expected: expected_all,
            delivered: all.to_others + all.to_self,
            delivered_to_self: all.to_self,
            lost: lost_all,
            late: all.late,
            duplicates: all.duplicates,
            errors: all.errors,
            stale: self.stale.load(Ordering::Relaxed),
            latency_ms: Distribution::from_micros(all.latencies_us),
            steps,
            sustainable_rate,
            sustainable_delivered_per_sec,
            server_cpu: server_all,
        }
    }
}

/// The steps' part of a fan-out summary (flattened into JSON `muc` and `pep`).
#[derive(Debug, Serialize)]
pub struct Totals<X> {
    pub setup_secs: f64,
    pub step_secs: u64,
    pub drain_secs: u64,
    pub p99_limit_ms: f64,
    pub sent: u64,
    pub expected: u64,
    /// Copies received in time: by the others plus the sender's own.
    pub delivered: u64,
    pub delivered_to_self: u64,
    pub lost: u64,
    pub late: u64,
    pub duplicates: u64,
    pub errors: u64,
    pub stale: u64,
    pub latency_ms: Distribution,
    pub steps: Vec<Step<X>>,
    /// The highest target rate sustained, events/s (0: none).
    pub sustainable_rate: u32,
    pub sustainable_delivered_per_sec: f64,
    /// The server's CPU over all steps and drains (the scenario reports it per copy).
    #[serde(skip)]
    pub server_cpu: Option<Duration>,
}

impl<X> Totals<X> {
    /// Server CPU over all steps and drains per delivered copy, µs.
    pub fn server_cpu_us_per_delivery(&self) -> Option<f64> {
        self.server_cpu.map(|d| cpu_us_per(d, self.delivered))
    }
}

/// One step of a fan-out run; `own`: the scenario's own fields, flattened in.
#[derive(Debug, Serialize)]
pub struct Step<X> {
    /// Aggregate events/s wanted.
    pub target_rate: u32,
    pub sent: u64,
    pub offered_per_sec: f64,
    pub expected: u64,
    pub delivered: u64,
    pub delivered_to_self: u64,
    /// `delivered` over the step, or to its last copy if that came later.
    pub delivered_per_sec: f64,
    pub lost: u64,
    pub late: u64,
    pub duplicates: u64,
    pub errors: u64,
    pub drain_waited_secs: f64,
    pub latency_ms: Distribution,
    pub generator_cpu_percent: f64,
    /// The server's CPU from the step's start to the end of its drain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_secs: Option<f64>,
    #[serde(flatten)]
    pub own: X,
    pub sustained: bool,
}

/// A scenario's own fields of a step, as the report reads them.
pub trait StepFields {
    /// Server CPU per delivered copy, µs (the table's server column).
    fn server_cpu_us_per_delivery(&self) -> Option<f64>;
}

/// A CPU figure of the report, `–` where the server's CPU was not read.
pub(crate) fn cpu_cell(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.1}"))
}

/// The printed line of step `s`: `copies` says what was delivered ("delivered (N to
/// self)"), `errors` what the errors are, `cpu` the server's CPU per copy (and per event).
pub(crate) fn step_line<X>(s: &Step<X>, copies: &str, errors: &str, cpu: &str) -> String {
    format!(
        "step {}/s: {} sent ({:.0}/s offered), {} of {} {copies} = {:.0}/s, {} lost ({} late), {} duplicates, {} {errors}, drain {:.2} s; {}; server CPU {cpu}{}",
        s.target_rate, s.sent, s.offered_per_sec, s.delivered, s.expected, s.delivered_per_sec,
        s.lost, s.late, s.duplicates, s.errors, s.drain_waited_secs, s.latency_ms.line(),
        if s.sustained { "" } else { " (not sustained)" }
    )
}

/// The report's table of the steps (with a duplicates column if `duplicates`) and the
/// sustained line, in `events` per second and `copies` per second.
pub(crate) fn steps_section<X: StepFields>(
    out: &mut String,
    t: &Totals<X>,
    duplicates: bool,
    (events, copy, copies): (&str, &str, &str),
) {
    let rows: Vec<Vec<String>> = t
        .steps
        .iter()
        .map(|s| {
            let mut row = vec![
                format!("{}/s", s.target_rate),
                s.sent.to_string(),
                format!("{:.0}", s.offered_per_sec),
                format!("{}/{}", s.delivered, s.expected),
                format!("{:.0}", s.delivered_per_sec),
                s.lost.to_string(),
            ];
            if duplicates {
                row.push(s.duplicates.to_string());
            }
            row.extend([
                s.errors.to_string(),
                ms(s.latency_ms.p50),
                ms(s.latency_ms.p99),
                format!("{:.0}", s.generator_cpu_percent),
                cpu_cell(s.own.server_cpu_us_per_delivery()),
                if s.sustained { "yes" } else { "no" }.into(),
            ]);
            row
        })
        .collect();
    let server = format!("server µs/{copy}");
    let mut header = vec![
        "target",
        "sent",
        "offered/s",
        "delivered",
        "delivered/s",
        "lost",
    ];
    if duplicates {
        header.push("duplicates");
    }
    header.extend(["errors", "p50", "p99", "gen CPU %", &server, "sustained"]);
    table(out, &header, &rows);
    let _ = writeln!(
        out,
        "Sustained: **{} {events}/s** ({:.0} {copies}/s).\n",
        t.sustainable_rate, t.sustainable_delivered_per_sec
    );
}

/// The chart `file` of p50/p90/p99 per step (none without steps).
pub(crate) fn latency_chart<X>(
    steps: &[Step<X>],
    file: &'static str,
    title: &'static str,
    x: &'static str,
) -> Vec<(&'static str, String)> {
    if steps.is_empty() {
        return Vec::new();
    }
    let categories: Vec<String> = steps.iter().map(|s| s.target_rate.to_string()).collect();
    let pick = |f: fn(&Distribution) -> f64| -> Vec<f64> {
        steps.iter().map(|s| f(&s.latency_ms)).collect()
    };
    let values = [pick(|d| d.p50), pick(|d| d.p90), pick(|d| d.p99)];
    let labels = Labels {
        title,
        x,
        y: "latency (ms)",
    };
    vec![(
        file,
        bar_chart(&labels, &categories, &["p50", "p90", "p99"], &values),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> StepPlan {
        StepPlan {
            rates: vec![10, 20],
            step: Duration::from_secs(1),
            drain: Duration::from_secs(1),
            p99_limit: Duration::from_millis(100),
            stop_after: 0,
            archive_metrics: Vec::new(),
        }
    }

    fn ran() -> StepRun {
        StepRun {
            begun: 0,
            waited: Duration::ZERO,
            cpu: Duration::ZERO,
            wall: Duration::from_secs(1),
            server_cpu: Some(Duration::from_millis(30)),
            not_archived: None,
        }
    }

    #[test]
    fn copies_count_once_and_late_after_the_drain() {
        let c = Counters::for_test("f1", 2);
        let mut seen = FxHashSet::default();
        let mut rec = vec![Received::default(), Received::default()];
        let seq = (1 << STEP_SHIFT) | 7;
        c.count(3, (3, seq, 0), &mut seen, &mut rec);
        c.count(3, (2, seq, 0), &mut seen, &mut rec);
        c.count(3, (2, seq, 0), &mut seen, &mut rec);
        assert_eq!(
            (rec[1].to_self, rec[1].to_others, rec[1].duplicates),
            (1, 1, 1)
        );
        assert_eq!(c.steps[1].accounted.load(Ordering::Relaxed), 2);
        // A step beyond the run, and one whose drain is over.
        c.count(3, (2, 5 << STEP_SHIFT, 0), &mut seen, &mut rec);
        c.closed.store(2, Ordering::Relaxed);
        c.count(3, (4, seq, 0), &mut seen, &mut rec);
        assert_eq!((rec[1].late, rec[1].latencies_us.len()), (1, 2));
        assert_eq!(c.parse("f9 1 2 3"), None);
        assert_eq!(c.stale.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn totals_count_what_is_lost_and_what_is_sustained() {
        let c = Counters::for_test("f1", 2);
        // Step 0: 10 events to 3 receivers each (the sender's own copy included), all in.
        // Step 1: 20 events, one copy to another receiver missing and one duplicate.
        for (k, sent) in [(0, 10), (1, 20)] {
            c.steps[k].sent.store(sent, Ordering::Relaxed);
            c.steps[k].expected.store(sent * 3, Ordering::Relaxed);
        }
        let received = |to_self: u64, to_others: u64, duplicates: u64| Received {
            to_self,
            to_others,
            duplicates,
            latencies_us: vec![1_000; (to_self + to_others) as usize],
            ..Received::default()
        };
        let own = |r: &Received, cpu: Option<Duration>, sent: u64, delivered: u64| {
            (r.to_others, cpu.map(|d| cpu_us_per(d, delivered)), sent)
        };
        let totals = |per_step: Vec<Received>, no_duplicates: bool| {
            c.totals(
                &plan(),
                vec![ran(), ran()],
                per_step,
                0.5,
                no_duplicates,
                own,
            )
        };
        let t = totals(vec![received(10, 20, 0), received(20, 39, 1)], false);
        assert_eq!((t.sent, t.expected, t.delivered, t.lost), (30, 90, 89, 1));
        assert_eq!(t.steps[0].own, (20, Some(1000.0), 10));
        assert!(t.steps[0].sustained && !t.steps[1].sustained);
        assert_eq!(t.sustainable_rate, 10);
        assert_eq!(t.server_cpu_us_per_delivery(), Some(60_000.0 / 89.0));
        // Without the loss, only a run that counts duplicates as failures fails step 1.
        let no_loss = vec![received(10, 20, 0), received(20, 40, 1)];
        let t = totals(no_loss.clone(), false);
        assert!(t.steps[1].sustained && t.sustainable_rate == 20);
        let t = totals(no_loss, true);
        assert!(!t.steps[1].sustained && t.sustainable_rate == 10);
    }
}
