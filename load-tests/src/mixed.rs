//! Scenario `mixed`: the traffic of a mobile carrier's users. All users log in; then each one,
//! independently, sends a chat message to a random other user of the run, changes its
//! presence (away and available in turn) and reconnects (closes its stream, or for
//! `--drop-percent` of them drops the TCP connection, then logs in again after a random
//! pause), each on average once per its interval: the gaps are exponential (a Poisson
//! process per user and kind of event), the first one too. A session that began with a
//! reconnect lasts at least `--min-pause-ms` (`--reconnect-interval-secs` on average): a
//! phone that just got its network back keeps it for a moment. No event starts after
//! `--duration-secs`; then the run waits at most `--drain-secs` for the messages in flight
//! and the users still logging in again.
//!
//! A message to a user who is away is stored by the server and delivered when that user is
//! back: it counts as delivered *late* (it carries a delay stamp, or was sent before the
//! recipient's current session began), with its latency apart from the on-time deliveries.
//! Bodies are `mRUN FROM SEQ SENT_US` padded to `--body-bytes` and ids `xSEQ.mRUN`; messages
//! of other runs (stored while their recipient was away and delivered now) and bounces of
//! them count as `stale`.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::chat::{login_chatters, other_peer};
use crate::conn::{Connection, Failure};
use crate::login::{Target, RESOURCE};
use crate::mixedreport::{
    Messages, MixedPoint, MixedSummary, Online, Presences, Reconnects, Schedule,
};
use crate::probe::{self, ChatMessage};
use crate::ramp::{stopped, tally, timed_login, End, Plan, Session};
use crate::report::{count, Distribution, Outcome};
use crate::system::{cpu_us_per, CpuMeter};
use crate::timeline::{note, rate, Point, Progress, Recorder};
use crate::xml;

pub struct MixedPlan {
    /// Mean time between two messages of one user; `None`: no messages.
    pub message_interval: Option<Duration>,
    /// Mean time between two presence changes of one user; `None`: none.
    pub presence_interval: Option<Duration>,
    /// Mean time from a login to the user's next reconnect; `None`: no reconnects.
    pub reconnect_interval: Option<Duration>,
    pub body_bytes: usize,
    /// Share of reconnects that drop the TCP connection instead of closing the stream.
    pub drop_percent: u8,
    /// The pause away before logging in again is uniform in `pause_min..=pause_max`.
    pub pause_min: Duration,
    pub pause_max: Duration,
    /// No event starts after this.
    pub duration: Duration,
    /// Longest wait after `duration` for messages in flight and users logging in again.
    pub drain: Duration,
}

/// Most events of one kind a run may plan (users × duration / interval).
pub const MAX_EVENTS: f64 = 20_000_000.0;
/// How often the coordinator samples the sessions online and checks for the end.
const POLL: Duration = Duration::from_millis(20);
const ID_PREFIX: char = 'x';
/// Logins a user tries after a disconnect (each after a pause) before it gives up.
const LOGIN_ATTEMPTS: u32 = 5;
/// An exponential gap is cut at this many times its mean (it would be longer once in e^50).
const MAX_GAP_FACTOR: f64 = 50.0;

struct Shared {
    target: Arc<Target>,
    login_timeout: Duration,
    close_grace: Duration,
    plan: MixedPlan,
    /// First field of this run's message bodies: `m` and the run's random id.
    tag: String,
    /// The users logged in at the start: the recipients.
    peers: Vec<u32>,
    /// Timestamps in bodies are µs after this instant.
    epoch: Instant,
    deadline: tokio::time::Instant,
    /// Logins in progress at once (`--concurrency`).
    permits: Semaphore,
    sent: AtomicU64,
    /// Distinct deliveries plus bounces: when it reaches `sent`, nothing is in flight.
    accounted: AtomicU64,
    presences: AtomicU64,
    online: AtomicU64,
    /// Users between a disconnect and their next login (or giving up).
    away: AtomicU64,
    reconnects: AtomicU64,
    /// Per second: deliveries (`ok`; on-time ones with their latency) and bounces.
    deliveries: Arc<Recorder>,
    /// Per second: logins after a disconnect, successful and failed.
    logins: Arc<Recorder>,
    /// Per second: presence changes sent.
    presence_changes: Arc<Recorder>,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// When the next event with mean gap `mean` is due, if before the deadline.
    fn next(&self, mean: Option<Duration>) -> Option<tokio::time::Instant> {
        self.due_in(exponential(mean?))
    }

    /// When a session that just began ends (the user reconnects), if before the deadline:
    /// after at least `pause_min` (a phone that got its network back keeps it a moment),
    /// `reconnect_interval` after the login on average.
    fn next_session_end(&self) -> Option<tokio::time::Instant> {
        let mean = self.plan.reconnect_interval?;
        let floor = self.plan.pause_min.min(mean);
        self.due_in(floor + exponential(mean - floor))
    }

    fn due_in(&self, after: Duration) -> Option<tokio::time::Instant> {
        let at = tokio::time::Instant::now() + after;
        (at < self.deadline).then_some(at)
    }
}

/// An exponential gap with the given mean (cut at [`MAX_GAP_FACTOR`] means).
fn exponential(mean: Duration) -> Duration {
    let u: f64 = rand::thread_rng().gen();
    let factor = (-(1.0 - u).ln()).min(MAX_GAP_FACTOR);
    mean.mul_f64(factor)
}

#[derive(Default)]
struct UserResult {
    delivered: u64,
    late: u64,
    duplicates: u64,
    bounced: u64,
    stale: u64,
    latencies_us: Vec<u64>,
    late_latencies_us: Vec<u64>,
    /// µs after the epoch of the last distinct delivery.
    last_us: u64,
    reconnects: u64,
    reconnect_failures: BTreeMap<String, u64>,
    reconnect_latencies_us: Vec<u64>,
    abrupt: u64,
    /// Users that could not log in again after [`LOGIN_ATTEMPTS`] tries.
    gave_up: u64,
    ends: Vec<End>,
}

/// One simulated user across its sessions.
struct User {
    index: u32,
    /// Position in the peers, so it does not pick itself as a recipient.
    pos: usize,
    seen: HashSet<(u32, u32)>,
    /// When the current session's login started, µs after the epoch: a message sent before
    /// it reaches this session late (the user was away, or closing its previous session).
    session_began_us: u64,
    r: UserResult,
}

impl User {
    fn new(index: u32, pos: usize) -> User {
        User {
            index,
            pos,
            seen: HashSet::new(),
            session_began_us: 0,
            r: UserResult::default(),
        }
    }

    fn receive(&mut self, shared: &Shared, el: &str) {
        if xml::name(el) != "message" {
            return;
        }
        if xml::attr(el, "type").as_deref() == Some("error") {
            if probe::bounced_seq(el, ID_PREFIX, &shared.tag).is_none() {
                self.r.stale += 1;
                return;
            }
            self.r.bounced += 1;
            shared.accounted.fetch_add(1, Ordering::Relaxed);
            shared.deliveries.failed();
            return;
        }
        let Some(body) = xml::child(el, "body").map(xml::text) else {
            return;
        };
        let Some((from, seq, sent_us)) = probe::parse_tagged(&body, &shared.tag) else {
            self.r.stale += 1;
            return;
        };
        if !self.seen.insert((from, seq)) {
            self.r.duplicates += 1;
            return;
        }
        shared.accounted.fetch_add(1, Ordering::Relaxed);
        let now_us = shared.now_us();
        let latency_us = now_us.saturating_sub(sent_us);
        self.r.delivered += 1;
        self.r.last_us = now_us;
        if xml::child(el, "delay").is_some() || sent_us < self.session_began_us {
            self.r.late += 1;
            self.r.late_latencies_us.push(latency_us);
            shared.deliveries.event();
        } else {
            self.r.latencies_us.push(latency_us);
            shared.deliveries.ok(Duration::from_micros(latency_us));
        }
    }

    fn message(&self, shared: &Shared, seq: u32) -> String {
        ChatMessage {
            to: &shared.target.full_jid(other_peer(&shared.peers, self.pos)),
            id_prefix: ID_PREFIX,
            tag: &shared.tag,
            from: self.index,
            seq,
            sent_us: shared.now_us(),
            body_len: shared.plan.body_bytes,
        }
        .stanza()
    }

    /// Log in again after a pause, up to [`LOGIN_ATTEMPTS`] times; `None` if every attempt
    /// failed or the run ended first.
    async fn come_back(
        &mut self,
        shared: &Shared,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Connection> {
        let plan = &shared.plan;
        for _ in 0..LOGIN_ATTEMPTS {
            let pause = rand::thread_rng().gen_range(plan.pause_min..=plan.pause_max);
            let permit = tokio::select! {
                _ = stopped(stop) => return None,
                permit = async {
                    tokio::time::sleep(pause).await;
                    shared.permits.acquire().await
                } => permit.ok()?,
            };
            self.session_began_us = shared.now_us();
            let login = timed_login(&shared.target, shared.login_timeout, self.index, RESOURCE);
            let (result, took) = tokio::select! {
                _ = stopped(stop) => return None,
                done = login => done,
            };
            drop(permit);
            match result {
                Ok(conn) => {
                    shared.logins.ok(took);
                    shared.reconnects.fetch_add(1, Ordering::Relaxed);
                    self.r.reconnects += 1;
                    self.r.reconnect_latencies_us.push(took.as_micros() as u64);
                    return Some(conn);
                }
                Err(failure) => {
                    shared.logins.failed();
                    count(&mut self.r.reconnect_failures, failure);
                }
            }
        }
        self.r.gave_up += 1;
        None
    }
}

/// What wakes a user up.
enum Wake {
    Stop,
    Message,
    Presence,
    Reconnect,
    Lost(Failure),
}

/// Sleep until `at`, or forever for `None`.
async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn user(
    session: Session,
    pos: usize,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> UserResult {
    let plan = &shared.plan;
    let mut u = User::new(session.index, pos);
    let mut conn = session.conn;
    let mut next_message = shared.next(plan.message_interval);
    let mut next_presence = shared.next(plan.presence_interval);
    let mut next_reconnect = shared.next(plan.reconnect_interval);
    let (mut seq, mut changes) = (0u32, 0u32);
    loop {
        let wake = tokio::select! {
            _ = stopped(&mut stop) => Wake::Stop,
            _ = until(next_message) => Wake::Message,
            _ = until(next_presence) => Wake::Presence,
            _ = until(next_reconnect) => Wake::Reconnect,
            el = conn.next_element() => match el {
                Ok(el) => {
                    u.receive(&shared, &el);
                    continue;
                }
                Err(failure) => Wake::Lost(failure),
            },
        };
        // An event due while the user was away fires when it is back, unless the run's
        // events are over by then.
        if !matches!(wake, Wake::Stop | Wake::Lost(_))
            && tokio::time::Instant::now() >= shared.deadline
        {
            (next_message, next_presence, next_reconnect) = (None, None, None);
            continue;
        }
        let sent = match wake {
            Wake::Stop => {
                let clean = conn.close(shared.close_grace).await;
                u.r.ends.push(End::Closed { clean });
                shared.online.fetch_sub(1, Ordering::Relaxed);
                return u.r;
            }
            Wake::Message => {
                seq += 1;
                next_message = shared.next(plan.message_interval);
                let sent = conn.send(&u.message(&shared, seq)).await;
                if sent.is_ok() {
                    shared.sent.fetch_add(1, Ordering::Relaxed);
                }
                sent
            }
            Wake::Presence => {
                changes += 1;
                next_presence = shared.next(plan.presence_interval);
                let show = if changes % 2 == 1 {
                    "<show>away</show>"
                } else {
                    ""
                };
                let status = probe::format(u.index, changes, shared.now_us());
                let change = format!("<presence>{show}<status>{status}</status></presence>");
                let sent = conn.send(&change).await;
                if sent.is_ok() {
                    shared.presences.fetch_add(1, Ordering::Relaxed);
                    shared.presence_changes.event();
                }
                sent
            }
            Wake::Reconnect | Wake::Lost(_) => Ok(()),
        };
        let leave = match (wake, sent) {
            (_, Err(failure)) | (Wake::Lost(failure), _) => Some(Err(failure)),
            (Wake::Reconnect, _) => Some(Ok(())),
            _ => None,
        };
        let Some(leave) = leave else {
            continue;
        };
        shared.online.fetch_sub(1, Ordering::Relaxed);
        shared.away.fetch_add(1, Ordering::Relaxed);
        match leave {
            Err(failure) => u.r.ends.push(End::Dropped(failure)),
            Ok(()) if rand::thread_rng().gen_range(0..100) < plan.drop_percent => {
                // Like a phone losing its network: no </stream:stream>, just gone.
                drop(conn);
                u.r.abrupt += 1;
            }
            Ok(()) => {
                let clean = conn
                    .close_reading(shared.close_grace, |el| u.receive(&shared, el))
                    .await;
                u.r.ends.push(End::Closed { clean });
            }
        }
        let back = u.come_back(&shared, &mut stop).await;
        shared.away.fetch_sub(1, Ordering::Relaxed);
        match back {
            Some(c) => {
                next_reconnect = shared.next_session_end();
                conn = c;
                shared.online.fetch_add(1, Ordering::Relaxed);
            }
            None => return u.r,
        }
    }
}

/// Sessions online, sampled: the last value of each second, and the extremes.
struct OnlineSamples {
    start: Instant,
    per_sec: Vec<u64>,
    /// The latest sample (at first, the count at the start).
    last: u64,
    min: u64,
    max: u64,
}

impl OnlineSamples {
    fn new(start: Instant, now: u64) -> OnlineSamples {
        OnlineSamples {
            start,
            per_sec: Vec::new(),
            last: now,
            min: now,
            max: now,
        }
    }

    fn sample(&mut self, online: u64) {
        let second = self.start.elapsed().as_secs() as usize;
        if self.per_sec.len() <= second {
            // Seconds without a sample keep the value before them.
            self.per_sec.resize(second + 1, self.last);
        }
        self.per_sec[second] = online;
        self.last = online;
        self.min = self.min.min(online);
        self.max = self.max.max(online);
    }
}

/// The per-second series of the run, merged by second.
fn merge(
    deliveries: &[Point],
    logins: &[Point],
    presences: &[Point],
    online: &[u64],
) -> Vec<MixedPoint> {
    let len = deliveries
        .len()
        .max(logins.len())
        .max(presences.len())
        .max(online.len());
    let at = |series: &[Point], i: usize| series.get(i).map_or((0, 0), |p| (p.ok, p.failed));
    let mut last_online = online.first().copied().unwrap_or(0);
    (0..len)
        .map(|i| {
            let d = deliveries.get(i);
            last_online = online.get(i).copied().unwrap_or(last_online);
            MixedPoint {
                t: i as f64,
                delivered: at(deliveries, i).0,
                bounced: at(deliveries, i).1,
                p50_ms: d.map_or(0.0, |p| p.p50_ms),
                p99_ms: d.map_or(0.0, |p| p.p99_ms),
                presences: at(presences, i).0,
                logins_ok: at(logins, i).0,
                logins_failed: at(logins, i).1,
                online: last_online,
            }
        })
        .collect()
}

pub async fn run(plan: &Plan, mixed: MixedPlan) -> anyhow::Result<(Outcome, MixedSummary)> {
    let (ramp, peers, stop, stopped_rx) = login_chatters(plan).await?;
    let users = peers.len() as u64;
    let deliveries = Recorder::new();
    let shared = Arc::new(Shared {
        target: plan.target.clone(),
        login_timeout: plan.login_timeout,
        close_grace: plan.close_grace,
        tag: probe::run_tag('m'),
        peers,
        epoch: Instant::now(),
        deadline: tokio::time::Instant::now() + mixed.duration,
        plan: mixed,
        permits: Semaphore::new(plan.concurrency),
        sent: AtomicU64::new(0),
        accounted: AtomicU64::new(0),
        presences: AtomicU64::new(0),
        online: AtomicU64::new(users),
        away: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        deliveries: deliveries.clone(),
        logins: Recorder::new(),
        presence_changes: Recorder::new(),
    });
    let p = &shared.plan;
    let every = |mean: Option<Duration>| {
        mean.map_or("never".to_string(), |m| {
            format!("every {:.3} s", m.as_secs_f64())
        })
    };
    eprintln!(
        "  {users} users for {} s, each on average: a message {}, a presence change {}, a reconnect {}",
        p.duration.as_secs(),
        every(p.message_interval),
        every(p.presence_interval),
        every(p.reconnect_interval)
    );
    let status = shared.clone();
    let progress = Progress::start_with(
        "deliveries",
        deliveries.clone(),
        Box::new(move || {
            format!(
                ", {} online, {} reconnects",
                status.online.load(Ordering::Relaxed),
                status.reconnects.load(Ordering::Relaxed)
            )
        }),
    );
    let cpu = CpuMeter::start();
    let mut tasks = JoinSet::new();
    for (pos, session) in ramp.sessions.into_iter().enumerate() {
        tasks.spawn(user(session, pos, shared.clone(), stopped_rx.clone()));
    }
    let mut online = OnlineSamples::new(shared.epoch, users);
    while tokio::time::Instant::now() < shared.deadline {
        tokio::time::sleep(POLL).await;
        online.sample(shared.online.load(Ordering::Relaxed));
    }
    let draining = Instant::now();
    while draining.elapsed() < shared.plan.drain {
        tokio::time::sleep(POLL).await;
        online.sample(shared.online.load(Ordering::Relaxed));
        let in_flight =
            shared.accounted.load(Ordering::Relaxed) < shared.sent.load(Ordering::Relaxed);
        if !in_flight && shared.away.load(Ordering::Relaxed) == 0 {
            break;
        }
    }
    let drain_waited = draining.elapsed();
    let (exchange_cpu, elapsed) = (cpu.cpu(), cpu.wall());
    let online_end = shared.online.load(Ordering::Relaxed);
    let _ = stop.send(true);
    note(&format!(
        "  events over; drain {:.2} s; closing {online_end} sessions",
        drain_waited.as_secs_f64()
    ));

    let mut total = UserResult::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(r) => {
                total.delivered += r.delivered;
                total.late += r.late;
                total.duplicates += r.duplicates;
                total.bounced += r.bounced;
                total.stale += r.stale;
                total.latencies_us.extend(r.latencies_us);
                total.late_latencies_us.extend(r.late_latencies_us);
                total.last_us = total.last_us.max(r.last_us);
                total.reconnects += r.reconnects;
                for (reason, n) in r.reconnect_failures {
                    *total.reconnect_failures.entry(reason).or_default() += n;
                }
                total
                    .reconnect_latencies_us
                    .extend(r.reconnect_latencies_us);
                total.abrupt += r.abrupt;
                total.gave_up += r.gave_up;
                total.ends.extend(r.ends);
            }
            Err(e) => total
                .ends
                .push(End::Dropped(Failure::Protocol(format!("internal: {e}")))),
        }
    }
    progress.finish().await;
    let (dropped, close) = tally(total.ends);
    let sent = shared.sent.load(Ordering::Relaxed);
    let p = &shared.plan;
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    let timeline = merge(
        &shared.deliveries.series(),
        &shared.logins.series(),
        &shared.presence_changes.series(),
        &online.per_sec,
    );
    let summary = MixedSummary {
        schedule: Schedule {
            duration_secs: p.duration.as_secs(),
            drain_secs: p.drain.as_secs(),
            message_interval_secs: secs(p.message_interval),
            presence_interval_secs: secs(p.presence_interval),
            reconnect_interval_secs: secs(p.reconnect_interval),
            body_bytes: p.body_bytes,
            drop_percent: p.drop_percent,
            pause_min_ms: p.pause_min.as_millis() as u64,
            pause_max_ms: p.pause_max.as_millis() as u64,
        },
        users,
        elapsed_secs: elapsed.as_secs_f64(),
        drain_waited_secs: drain_waited.as_secs_f64(),
        messages: Messages {
            sent,
            delivered: total.delivered,
            delivered_late: total.late,
            lost: sent.saturating_sub(total.delivered + total.bounced),
            duplicates: total.duplicates,
            bounced: total.bounced,
            stale: total.stale,
            delivered_per_sec: rate(total.delivered, Duration::from_micros(total.last_us)),
            latency_ms: Distribution::from_micros(total.latencies_us),
            late_latency_ms: Distribution::from_micros(total.late_latencies_us),
        },
        presences: Presences {
            sent: shared.presences.load(Ordering::Relaxed),
        },
        reconnects: Reconnects {
            ok: total.reconnects,
            failed: total.reconnect_failures.values().sum(),
            failures: total.reconnect_failures,
            gave_up: total.gave_up,
            abrupt: total.abrupt,
            per_sec: rate(total.reconnects, elapsed),
            latency_ms: Distribution::from_micros(total.reconnect_latencies_us),
        },
        online: Online {
            start: users,
            min: online.min,
            max: online.max,
            end: online_end,
        },
        generator_cpu_secs: exchange_cpu.as_secs_f64(),
        generator_cpu_us_per_message: cpu_us_per(exchange_cpu, total.delivered),
        timeline,
    };
    Ok((Outcome::sessions(ramp.summary, dropped, close), summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_gaps_have_the_mean_and_a_bound() {
        let mean = Duration::from_millis(100);
        let n = 20_000;
        let gaps: Vec<Duration> = (0..n).map(|_| exponential(mean)).collect();
        let avg = gaps.iter().sum::<Duration>().as_secs_f64() / f64::from(n);
        assert!((0.09..0.11).contains(&avg), "mean {avg}");
        assert!(gaps.iter().all(|g| *g <= mean.mul_f64(MAX_GAP_FACTOR)));
        // Memoryless: about e^-1 of the gaps are longer than the mean.
        let longer = gaps.iter().filter(|g| **g > mean).count() as f64 / f64::from(n);
        assert!((0.33..0.41).contains(&longer), "{longer}");
    }

    #[test]
    fn online_samples_keep_the_last_value_of_each_second() {
        let start = Instant::now() - Duration::from_millis(2500);
        let mut s = OnlineSamples::new(start, 10);
        s.sample(7);
        s.sample(9);
        assert_eq!(s.per_sec, [10, 10, 9]);
        assert_eq!((s.min, s.max), (7, 10));
    }

    #[test]
    fn series_are_merged_by_second() {
        let point = |t: f64, ok, failed| Point {
            t,
            ok,
            failed,
            p50_ms: 1.0,
            p99_ms: 2.0,
        };
        let merged = merge(
            &[point(0.0, 5, 1)],
            &[point(0.0, 0, 0), point(1.0, 2, 1)],
            &[point(0.0, 3, 0)],
            &[20, 18],
        );
        assert_eq!(merged.len(), 2);
        let m = &merged[1];
        assert_eq!(
            (
                m.delivered,
                m.presences,
                m.logins_ok,
                m.logins_failed,
                m.online
            ),
            (0, 0, 2, 1, 18)
        );
        assert_eq!((merged[0].delivered, merged[0].bounced), (5, 1));
        assert_eq!((merged[1].p50_ms, merged[0].p99_ms), (0.0, 2.0));
    }

    #[test]
    fn receiving_classifies_deliveries() {
        let shared = Shared {
            target: Arc::new(crate::login::test_target(&["127.0.0.1:5222"], "user")),
            login_timeout: Duration::from_secs(1),
            close_grace: Duration::from_secs(1),
            plan: MixedPlan {
                message_interval: None,
                presence_interval: None,
                reconnect_interval: None,
                body_bytes: 100,
                drop_percent: 0,
                pause_min: Duration::ZERO,
                pause_max: Duration::ZERO,
                duration: Duration::from_secs(1),
                drain: Duration::from_secs(1),
            },
            tag: "m0000abcd".into(),
            peers: vec![1, 2],
            epoch: Instant::now(),
            deadline: tokio::time::Instant::now(),
            permits: Semaphore::new(1),
            sent: AtomicU64::new(0),
            accounted: AtomicU64::new(0),
            presences: AtomicU64::new(0),
            online: AtomicU64::new(2),
            away: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            deliveries: Recorder::new(),
            logins: Recorder::new(),
            presence_changes: Recorder::new(),
        };
        let mut u = User::new(2, 1);
        let sender = User::new(1, 0);
        let m = sender.message(&shared, 1);
        assert_eq!(xml::attr(&m, "to").as_deref(), Some("user2@localhost/lg"));
        u.receive(&shared, &m);
        u.receive(&shared, &m);
        // Sent before this session began: late.
        u.session_began_us = shared.now_us() + 1_000_000;
        u.receive(&shared, &sender.message(&shared, 2));
        // From storage: delay-stamped.
        u.session_began_us = 0;
        let stored = sender.message(&shared, 3).replace(
            "</message>",
            "<delay xmlns='urn:xmpp:delay' stamp='x'/></message>",
        );
        u.receive(&shared, &stored);
        u.receive(
            &shared,
            "<message type='chat'><body>m00000001 1 9 5 xxx</body></message>",
        );
        u.receive(&shared, "<message type='error' id='x4.m0000abcd'/>");
        // The bounce of an earlier run's message (another tag): stale, not this run's.
        u.receive(&shared, "<message type='error' id='x4.m00000001'/>");
        u.receive(&shared, "<presence/>");
        let r = &u.r;
        assert_eq!(
            (r.delivered, r.late, r.duplicates, r.stale, r.bounced),
            (3, 2, 1, 2, 1)
        );
        assert_eq!((r.latencies_us.len(), r.late_latencies_us.len()), (1, 2));
        assert_eq!(shared.accounted.load(Ordering::Relaxed), 4);
        assert_eq!(shared.deliveries.ok_count(), 3);
    }
}
