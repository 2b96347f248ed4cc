//! Scenario `offline-store`: N logged-in senders send `type='chat'` messages with bodies of
//! `--body-bytes` to M recipient accounts that are provisioned but not logged in (the users
//! right after the senders' range), so the server stores every one offline (XEP-0160).
//!
//! Each recipient is fed by one sender (with fewer recipients than senders, each by several).
//! A sender writes in batches of `--batch` messages to one recipient, round-robin over its
//! recipients, each batch followed by a vCard query to that recipient's bare JID: the server
//! answers it on the account's behalf from the same per-user IM state, after the messages
//! sent before it, so the answer acknowledges the batch (every message stored, or bounced).
//! At most `--window` batches per sender are unacknowledged (0: no limit). Stores/s
//! acknowledged are the messages not bounced over the time from the first message to the
//! last answer. With `--metrics URL,...` the nodes'
//! `switchboard_routed_total{destination="offline"}` is read before and during the run as a
//! second figure.
//!
//! Then the recipients log in (initial presence) and count the messages of this run that the
//! server delivers from storage: stored vs delivered, duplicates, lost.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::conn::Failure;
use crate::imreport::{CounterSummary, OfflineStoreSummary, VerifySummary};
use crate::login::Target;
use crate::ramp::{login_all, stopped, tally, End, Plan, Session};
use crate::report::{count, Distribution, Outcome};
use crate::rosterwrites::stanza_error;
use crate::scrape::{self, Endpoint};
use crate::timeline::{note, rate, Progress, Recorder};
use crate::xml;

/// Most messages one run may send in all.
pub const MAX_MESSAGES: u64 = 20_000_000;
const POLL: Duration = Duration::from_millis(20);
/// How often the metrics endpoints are read during the run.
const SCRAPE_EVERY: Duration = Duration::from_millis(250);
/// The counter has settled once it has not moved for this long.
const SETTLED: Duration = Duration::from_secs(1);
/// After every expected message arrived, how long recipients keep counting (duplicates).
const VERIFY_GRACE: Duration = Duration::from_millis(500);
/// Once the recipients are logged in, the verification ends after this long without a
/// delivery (or at `--verify-secs`).
const VERIFY_QUIET: Duration = Duration::from_secs(5);

pub struct OfflinePlan {
    pub recipients: u32,
    /// Messages each sender sends.
    pub messages: u32,
    /// Aggregate messages/s over all senders; `None`: as fast as the sockets take them.
    pub rate: Option<u32>,
    pub body_bytes: usize,
    /// Upper bound on the sending phase.
    pub duration: Duration,
    /// Upper bound on waiting for the vCard answers (and the counter to settle) after it.
    pub drain: Duration,
    /// Upper bound on the recipients' deliveries after they start logging in.
    pub verify: Duration,
    /// The server's per-account cap (`im.max_offline_messages`).
    pub quota: u32,
    pub metrics: Vec<Endpoint>,
    /// Messages to one recipient before the vCard query that acknowledges them.
    pub batch: u32,
    /// Unacknowledged batches per sender at most; 0: no limit.
    pub window: u32,
}

/// Recipient positions (0-based within the M recipients) fed by the sender at `pos` of `senders`.
pub fn recipients_of(pos: u32, senders: u32, recipients: u32) -> Vec<u32> {
    if recipients >= senders {
        (pos..recipients).step_by(senders as usize).collect()
    } else {
        vec![pos % recipients]
    }
}

/// The most messages one recipient gets when `senders` each send `messages` in batches of
/// `batch` round-robin over their recipients.
pub fn per_recipient_max(senders: u32, recipients: u32, messages: u32, batch: u32) -> u64 {
    let (s, r, m, b) = (
        u64::from(senders),
        u64::from(recipients),
        u64::from(messages),
        u64::from(batch.max(1)),
    );
    if s == 0 || r == 0 {
        return 0;
    }
    if r >= s {
        // A sender has at least r / s recipients, each taking every (r / s)-th batch.
        (m.div_ceil(b).div_ceil(r / s) * b).min(m)
    } else {
        s.div_ceil(r) * m
    }
}

/// The recipient (position) of message `seq` (1-based) of a sender writing to `mine`.
fn recipient_of(mine: &[u32], batch: u32, seq: u32) -> u32 {
    let k = (seq.saturating_sub(1) / batch.max(1)) as usize;
    mine[k % mine.len()]
}

/// `os RUN FROM SEQ ` padded with `x` to `len` bytes.
pub fn body(run: u32, from: u32, seq: u32, len: usize) -> String {
    let mut b = format!("os {run:08x} {from} {seq} ");
    crate::probe::pad(&mut b, len);
    b
}

/// `(run, from, seq)` of a body made by [`body`].
pub fn parse_body(text: &str) -> Option<(u32, u32, u32)> {
    let mut f = text.split(' ');
    if f.next()? != "os" {
        return None;
    }
    let run = u32::from_str_radix(f.next()?, 16).ok()?;
    let from = f.next()?.parse().ok()?;
    let seq = f.next()?.parse().ok()?;
    Some((run, from, seq))
}

struct Shared {
    target: Arc<Target>,
    run: u32,
    plan: OfflinePlan,
    /// Index of the first recipient account.
    recipient_first: u32,
    epoch: Instant,
    recorder: Arc<Recorder>,
    /// Logged-in senders.
    senders: u32,
    sent: AtomicU64,
    /// µs after the epoch of the last message sent.
    last_sent_us: AtomicU64,
    /// Senders done: answers to all their vCard queries in, or their session ended.
    finished: AtomicU64,
    /// Senders whose sending is over (all sent, halted, or session ended).
    sending_over: AtomicU64,
    barriers: AtomicU64,
    barriers_answered: AtomicU64,
    /// µs after the epoch of the last vCard answer.
    last_barrier_us: AtomicU64,
}

#[derive(Default)]
struct SenderResult {
    /// The sender's user index.
    index: u32,
    bounces: BTreeMap<String, u64>,
    wait_bounces: BTreeMap<String, u64>,
    /// Sequence numbers of this sender's messages that bounced.
    bounced: HashSet<u32>,
    /// Per acknowledged batch: from its first message to the answer.
    batch_us: Vec<u64>,
    /// vCard queries answered with a `type='wait'` error, by condition.
    barrier_refusals: BTreeMap<String, u64>,
    /// The acknowledged batches' messages, as (first seq, count).
    acked: Vec<(u32, u32)>,
    /// Per recipient (position) written to: messages sent and not bounced.
    accepted_to: Vec<(u32, u64)>,
}

impl SenderResult {
    /// Fill `accepted_to` from the `seq` messages sent to `mine` in batches of `batch`.
    fn tally_recipients(&mut self, mine: &[u32], batch: u32, seq: u32) {
        if mine.is_empty() {
            return;
        }
        let mut per: HashMap<u32, u64> = HashMap::new();
        for s in 1..=seq {
            if !self.bounced.contains(&s) {
                *per.entry(recipient_of(mine, batch, s)).or_default() += 1;
            }
        }
        self.accepted_to = per.into_iter().collect();
    }

    /// Messages of acknowledged batches that were not bounced.
    fn acked_messages(&self) -> u64 {
        self.acked
            .iter()
            .map(|&(first, n)| {
                let bounced = (first..first + n)
                    .filter(|s| self.bounced.contains(s))
                    .count();
                u64::from(n) - bounced as u64
            })
            .sum()
    }
}

pub async fn run(plan: &Plan, op: OfflinePlan) -> anyhow::Result<(Outcome, OfflineStoreSummary)> {
    let recipient_first = plan
        .first
        .checked_add(plan.users)
        .filter(|f| f.checked_add(op.recipients).is_some())
        .ok_or_else(|| anyhow::anyhow!("--first + --users + --recipients overflows"))?;
    crate::system::check_open_files(u64::from(plan.users.max(op.recipients)))?;
    anyhow::ensure!(
        u64::from(plan.users) * u64::from(op.messages) <= MAX_MESSAGES,
        "--users × --messages must be at most {MAX_MESSAGES}"
    );
    let planned = per_recipient_max(plan.users, op.recipients, op.messages, op.batch);
    anyhow::ensure!(
        planned <= u64::from(op.quota),
        "{} senders × {} messages over {} recipients puts up to {planned} messages on one \
         recipient, over the server's cap of {} (--offline-quota, the server's \
         im.max_offline_messages): add recipients or raise both",
        plan.users,
        op.messages,
        op.recipients,
        op.quota
    );
    if !op.metrics.is_empty() {
        // Fail before logging anyone in if an endpoint does not answer.
        scrape::offline_routed(&op.metrics).await?;
    }
    let ramp = login_all(plan).await;
    let (stop, stop_rx) = watch::channel(false);
    let senders = ramp.sessions.len() as u32;
    let worst = per_recipient_max(senders, op.recipients, op.messages, op.batch);
    if senders == 0 || worst > u64::from(op.quota) {
        ramp.release(&stop, &stop_rx, plan.close_grace).await;
        if senders == 0 {
            anyhow::bail!("offline-store needs at least one logged-in sender");
        }
        anyhow::bail!(
            "{senders} senders × {} messages over {} recipients puts up to {worst} messages on \
             one recipient, over the server's cap of {} (--offline-quota, the server's \
             im.max_offline_messages): add recipients or raise both",
            op.messages,
            op.recipients,
            op.quota
        );
    }
    let recorder = Recorder::new();
    let shared = Arc::new(Shared {
        target: plan.target.clone(),
        run: rand::thread_rng().gen(),
        plan: op,
        recipient_first,
        epoch: Instant::now(),
        recorder: recorder.clone(),
        senders,
        sent: AtomicU64::new(0),
        last_sent_us: AtomicU64::new(0),
        finished: AtomicU64::new(0),
        sending_over: AtomicU64::new(0),
        barriers: AtomicU64::new(0),
        barriers_answered: AtomicU64::new(0),
        last_barrier_us: AtomicU64::new(0),
    });
    let op = &shared.plan;
    let baseline = match op.metrics.is_empty() {
        true => None,
        false => Some(scrape::offline_routed(&op.metrics).await?),
    };
    let (halt_tx, halt_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for (pos, session) in ramp.sessions.into_iter().enumerate() {
        let mine = recipients_of(pos as u32, senders, op.recipients);
        tasks.spawn(send(
            session,
            mine,
            shared.clone(),
            halt_rx.clone(),
            stop_rx.clone(),
            plan.close_grace,
        ));
    }
    eprintln!(
        "  {senders} senders, {} messages each ({} bytes, batches of {}, {} per sender in flight) to {} offline recipients {}{}..{}{}, {}",
        op.messages,
        op.body_bytes,
        op.batch,
        match op.window {
            0 => "any number".to_string(),
            w => w.to_string(),
        },
        op.recipients,
        plan.target.user_prefix,
        recipient_first,
        plan.target.user_prefix,
        recipient_first + op.recipients - 1,
        op.rate
            .map_or("as fast as possible".into(), |r| format!("{r} messages/s"))
    );
    let progress = Progress::start("stores acknowledged", recorder.clone());
    let start_us = shared.epoch.elapsed().as_micros() as u64;
    let start = Instant::now();
    let mut samples: Vec<(f64, f64)> = Vec::new();
    let mut next_scrape = Instant::now();
    let mut scrape_failures = 0u64;
    let mut sample = |samples: &mut Vec<(f64, f64)>, value: anyhow::Result<f64>| match value {
        Ok(v) => samples.push((start.elapsed().as_secs_f64(), v - baseline.unwrap_or(0.0))),
        Err(e) => {
            scrape_failures += 1;
            if scrape_failures == 1 {
                note(&format!("  metrics: {e:#}"));
            }
        }
    };
    // Sending, bounded by --duration-secs.
    let mut halted = false;
    let mut drain_deadline = None;
    loop {
        tokio::time::sleep(POLL).await;
        if baseline.is_some() && Instant::now() >= next_scrape {
            next_scrape += SCRAPE_EVERY;
            sample(&mut samples, scrape::offline_routed(&op.metrics).await);
        }
        let over = shared.sending_over.load(Ordering::Relaxed) >= u64::from(senders);
        if !halted && (over || start.elapsed() >= op.duration) {
            if !over {
                note("  --duration-secs reached: senders stop");
            }
            let _ = halt_tx.send(true);
            halted = true;
            drain_deadline = Some(Instant::now() + op.drain);
        }
        if shared.finished.load(Ordering::Relaxed) >= u64::from(senders) {
            break;
        }
        if drain_deadline.is_some_and(|d| Instant::now() >= d) {
            note("  --drain-secs reached before every vCard query was answered");
            break;
        }
    }
    let send_secs = Duration::from_micros(
        shared
            .last_sent_us
            .load(Ordering::Relaxed)
            .saturating_sub(start_us),
    )
    .as_secs_f64();
    // The counter: wait until it has settled (not moved for SETTLED), within the drain.
    if let Some(deadline) = drain_deadline.filter(|_| baseline.is_some()) {
        let sent = shared.sent.load(Ordering::Relaxed) as f64;
        let mut last_change = Instant::now();
        let mut last_value = samples.last().map_or(0.0, |s| s.1);
        while Instant::now() < deadline && last_change.elapsed() < SETTLED {
            tokio::time::sleep(SCRAPE_EVERY).await;
            sample(&mut samples, scrape::offline_routed(&op.metrics).await);
            let v = samples.last().map_or(0.0, |s| s.1);
            if v != last_value {
                last_value = v;
                last_change = Instant::now();
            }
            if v >= sent && last_change.elapsed() >= SCRAPE_EVERY {
                break;
            }
        }
    }
    let _ = stop.send(true);
    let mut results = Vec::new();
    let mut ends = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((end, result)) => {
                ends.push(end);
                results.push(result);
            }
            Err(e) => ends.push(End::Dropped(Failure::Protocol(format!("internal: {e}")))),
        }
    }
    progress.finish().await;
    let (dropped, close) = tally(ends);

    let mut bounces = BTreeMap::new();
    let mut wait_bounces = BTreeMap::new();
    let mut bounced_seqs: HashSet<(u32, u32)> = HashSet::new();
    let mut expected_per: HashMap<u32, u64> = HashMap::new();
    let mut barrier_us = Vec::new();
    let mut acked = 0u64;
    let mut barrier_refusals = BTreeMap::new();
    for r in results {
        acked += r.acked_messages();
        for (c, n) in &r.barrier_refusals {
            *barrier_refusals.entry(c.clone()).or_default() += n;
        }
        for (c, n) in r.bounces {
            *bounces.entry(c).or_default() += n;
        }
        for (c, n) in r.wait_bounces {
            *wait_bounces.entry(c).or_default() += n;
        }
        bounced_seqs.extend(r.bounced.into_iter().map(|seq| (r.index, seq)));
        barrier_us.extend(r.batch_us);
        for (pos, n) in r.accepted_to {
            *expected_per.entry(pos).or_default() += n;
        }
    }
    let sent = shared.sent.load(Ordering::Relaxed);
    let bounced: u64 = bounces.values().sum::<u64>() + wait_bounces.values().sum::<u64>();
    let accepted = sent.saturating_sub(bounced);
    let barriers = shared.barriers.load(Ordering::Relaxed);
    let barriers_answered = shared.barriers_answered.load(Ordering::Relaxed);
    let acked_secs = Duration::from_micros(
        shared
            .last_barrier_us
            .load(Ordering::Relaxed)
            .saturating_sub(start_us),
    )
    .as_secs_f64();
    let counter = baseline.map(|_| counter_summary(&op.metrics, &samples, scrape_failures));

    // Verification: the recipients log in and count what the server delivers from storage.
    let verify = verify(plan, &shared, accepted, bounced_seqs, expected_per).await;
    let summary = OfflineStoreSummary {
        senders: u64::from(senders),
        recipients: op.recipients,
        recipient_first,
        messages_per_sender: op.messages,
        target_rate: op.rate,
        body_bytes: op.body_bytes,
        quota: op.quota,
        per_recipient_max: worst,
        sent,
        send_secs,
        offered_per_sec: sent as f64 / send_secs.max(1e-6),
        bounced,
        bounces,
        wait_bounces,
        accepted,
        batch: op.batch,
        window: op.window,
        barriers,
        barriers_answered,
        barrier_refusals,
        acked,
        acked_secs,
        acked_per_sec: acked as f64 / acked_secs.max(1e-6),
        ack_latency_ms: Distribution::from_micros(barrier_us),
        counter,
        verify,
        timeline: recorder.series(),
    };
    Ok((Outcome::sessions(ramp.summary, dropped, close), summary))
}

fn counter_summary(
    endpoints: &[Endpoint],
    samples: &[(f64, f64)],
    failures: u64,
) -> CounterSummary {
    let stored = samples.last().map_or(0.0, |s| s.1);
    // The first sample at the final value: when the last store was routed (± one interval).
    let reached = samples.iter().find(|s| s.1 >= stored).map_or(0.0, |s| s.0);
    // Per-second rates from the samples, for the peak and the chart.
    let mut per_sec = Vec::new();
    let mut prev = (0.0, 0.0);
    for &(t, v) in samples {
        if t - prev.0 >= 1.0 {
            per_sec.push((t, (v - prev.1) / (t - prev.0)));
            prev = (t, v);
        }
    }
    CounterSummary {
        endpoints: endpoints.iter().map(Endpoint::url).collect(),
        stored: stored as u64,
        secs: reached,
        stores_per_sec: if reached > 0.0 { stored / reached } else { 0.0 },
        peak_per_sec: per_sec.iter().map(|p| p.1).fold(0.0, f64::max),
        scrape_failures: failures,
        per_sec,
    }
}

/// A batch of messages to one recipient, acknowledged by the answer to a vCard query.
struct Batch {
    pos: u32,
    first_seq: u32,
    count: u32,
    started: Instant,
}

/// One sender: batches of messages to its recipients in turn, each closed by a vCard query,
/// with at most `window` unacknowledged; on schedule with `--rate`; counts bounces and
/// answers; until told to stop.
async fn send(
    mut session: Session,
    mine: Vec<u32>,
    shared: Arc<Shared>,
    mut halt: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) -> (End, SenderResult) {
    let op = &shared.plan;
    let mut result = SenderResult {
        index: session.index,
        ..SenderResult::default()
    };
    let window = match op.window {
        0 => usize::MAX,
        w => w as usize,
    };
    let interval = op
        .rate
        .map(|r| Duration::from_secs_f64(shared.senders as f64 / f64::from(r)));
    let mut next_send = tokio::time::Instant::now();
    if let Some(i) = interval {
        let offset = rand::thread_rng().gen_range(0..i.as_micros().max(1) as u64);
        next_send += Duration::from_micros(offset);
    }
    let mut seq = 0u32;
    let mut sending = op.messages > 0 && !mine.is_empty();
    if !sending {
        shared.sending_over.fetch_add(1, Ordering::Relaxed);
    }
    let mut open: Option<Batch> = None;
    // Batches whose vCard query is unanswered, by batch number.
    let mut waiting: HashMap<u32, Batch> = HashMap::new();
    let mut batches = 0u32;
    let mut finished = false;
    let failure = loop {
        // Close the open batch when it is full or nothing more will be sent.
        let full = open.as_ref().is_some_and(|b| b.count >= op.batch);
        if full || (!sending && open.is_some()) {
            if let Some(b) = open.take() {
                let iq = format!(
                    "<iq type='get' id='b{batches}' to='{}'><vCard xmlns='vcard-temp'/></iq>",
                    xml::escape(&shared.recipient(b.pos))
                );
                if let Err(f) = session.conn.send(&iq).await {
                    break Some(f);
                }
                shared.barriers.fetch_add(1, Ordering::Relaxed);
                waiting.insert(batches, b);
                batches += 1;
            }
        }
        if !sending && open.is_none() && waiting.is_empty() && !finished {
            finished = true;
            shared.finished.fetch_add(1, Ordering::Relaxed);
        }
        let may_send = sending && (open.is_some() || waiting.len() < window);
        tokio::select! {
            _ = stopped(&mut stop) => break None,
            _ = stopped(&mut halt), if sending => {
                sending = false;
                shared.sending_over.fetch_add(1, Ordering::Relaxed);
            }
            _ = tokio::time::sleep_until(next_send), if may_send => {
                seq += 1;
                let pos = recipient_of(&mine, op.batch, seq);
                let message = format!(
                    "<message to='{}' type='chat' id='o{seq}'><body>{}</body></message>",
                    xml::escape(&shared.recipient(pos)),
                    body(shared.run, session.index, seq, op.body_bytes)
                );
                if let Err(f) = session.conn.send(&message).await {
                    break Some(f);
                }
                let batch = open.get_or_insert_with(|| Batch {
                    pos,
                    first_seq: seq,
                    count: 0,
                    started: Instant::now(),
                });
                batch.count += 1;
                shared.sent.fetch_add(1, Ordering::Relaxed);
                shared
                    .last_sent_us
                    .fetch_max(shared.epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
                let now = tokio::time::Instant::now();
                next_send = match interval {
                    // Behind by more than a window's worth (the window was full): drop the
                    // missed slots rather than burst to catch up.
                    Some(i) => {
                        let next = next_send + i;
                        let lag = i * op.batch.saturating_mul(op.window.max(1));
                        now.checked_sub(lag).map_or(next, |floor| next.max(floor))
                    }
                    None => now,
                };
                if seq >= op.messages {
                    sending = false;
                    shared.sending_over.fetch_add(1, Ordering::Relaxed);
                }
            }
            el = session.conn.next_element() => match el {
                Ok(el) => receive(&shared, &el, &mut result, &mut waiting),
                Err(f) => break Some(f),
            }
        }
    };
    result.tally_recipients(&mine, op.batch, seq);
    match failure {
        Some(failure) => {
            if sending {
                shared.sending_over.fetch_add(1, Ordering::Relaxed);
            }
            if !finished {
                shared.finished.fetch_add(1, Ordering::Relaxed);
            }
            (End::Dropped(failure), result)
        }
        None => {
            let clean = session.conn.close(grace).await;
            (End::Closed { clean }, result)
        }
    }
}

/// A bounce of one of our messages, or the answer to a vCard query (acknowledging a batch).
fn receive(
    shared: &Shared,
    el: &str,
    result: &mut SenderResult,
    waiting: &mut HashMap<u32, Batch>,
) {
    let id = xml::attr(el, "id").unwrap_or_default();
    match xml::name(el) {
        "message" if xml::attr(el, "type").as_deref() == Some("error") => {
            let Some(seq) = id.strip_prefix('o').and_then(|s| s.parse::<u32>().ok()) else {
                return;
            };
            if !result.bounced.insert(seq) {
                return;
            }
            let (condition, kind) = stanza_error(el);
            if kind == "wait" {
                count(&mut result.wait_bounces, condition);
            } else {
                count(&mut result.bounces, condition);
            }
            shared.recorder.failed();
        }
        "iq" => {
            let Some(k) = id.strip_prefix('b').and_then(|s| s.parse::<u32>().ok()) else {
                return;
            };
            let Some(b) = waiting.remove(&k) else {
                return;
            };
            if xml::attr(el, "type").as_deref() == Some("error") {
                let (condition, kind) = stanza_error(el);
                if kind == "wait" {
                    // The server could not reach the account's data in time: the answer says
                    // nothing about the batch, which stays unacknowledged.
                    count(&mut result.barrier_refusals, condition);
                    return;
                }
            }
            let took = b.started.elapsed();
            shared.barriers_answered.fetch_add(1, Ordering::Relaxed);
            shared
                .last_barrier_us
                .fetch_max(shared.epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
            result.batch_us.push(took.as_micros() as u64);
            result.acked.push((b.first_seq, b.count));
            let bounced = (b.first_seq..b.first_seq + b.count)
                .filter(|s| result.bounced.contains(s))
                .count() as u32;
            for _ in bounced..b.count {
                shared.recorder.ok(took);
            }
        }
        _ => {}
    }
}

impl Shared {
    /// The bare JID of the recipient at `pos`.
    fn recipient(&self, pos: u32) -> String {
        format!(
            "{}@{}",
            self.target.username(self.recipient_first + pos),
            self.target.domain
        )
    }
}

#[derive(Default)]
struct Delivered {
    delivered: u64,
    delivered_bounced: u64,
    delayed: u64,
    duplicates: u64,
    stale: u64,
}

/// Log the recipients in and count the messages of this run the server delivers.
async fn verify(
    plan: &Plan,
    shared: &Arc<Shared>,
    accepted: u64,
    bounced: HashSet<(u32, u32)>,
    expected_per: HashMap<u32, u64>,
) -> VerifySummary {
    let op = &shared.plan;
    let rplan = Plan {
        target: plan.target.clone(),
        first: shared.recipient_first,
        users: op.recipients,
        concurrency: plan.concurrency,
        login_timeout: plan.login_timeout,
        close_grace: plan.close_grace,
    };
    eprintln!(
        "  verifying: {} recipients log in, {accepted} stored messages expected",
        op.recipients
    );
    let started = Instant::now();
    // Sessions that logged in early have their messages waiting in their sockets meanwhile.
    let ramp = login_all(&rplan).await;
    let bounced = Arc::new(bounced);
    let delivered = Arc::new(AtomicU64::new(0));
    let last_us = Arc::new(AtomicU64::new(0));
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for session in ramp.sessions {
        let (bounced, delivered, last_us) = (bounced.clone(), delivered.clone(), last_us.clone());
        let (run, mut stop_rx, grace) = (shared.run, stop_rx.clone(), plan.close_grace);
        let epoch = started;
        tasks.spawn(async move {
            let mut session = session;
            let index = session.index;
            let mut counts = Delivered::default();
            let mut seen = HashSet::new();
            let failure = loop {
                tokio::select! {
                    _ = stopped(&mut stop_rx) => break None,
                    el = session.conn.next_element() => match el {
                        Ok(el) => {
                            if xml::name(&el) != "message"
                                || xml::attr(&el, "type").as_deref() == Some("error")
                            {
                                continue;
                            }
                            let Some(text) = xml::child(&el, "body").map(xml::text) else {
                                continue;
                            };
                            match parse_body(&text) {
                                Some((r, from, seq)) if r == run => {
                                    if !seen.insert((from, seq)) {
                                        counts.duplicates += 1;
                                        continue;
                                    }
                                    if xml::child(&el, "delay").is_some() {
                                        counts.delayed += 1;
                                    }
                                    if bounced.contains(&(from, seq)) {
                                        counts.delivered_bounced += 1;
                                    } else {
                                        counts.delivered += 1;
                                        delivered.fetch_add(1, Ordering::Relaxed);
                                    }
                                    last_us.fetch_max(
                                        epoch.elapsed().as_micros() as u64,
                                        Ordering::Relaxed,
                                    );
                                }
                                _ => counts.stale += 1,
                            }
                        }
                        Err(f) => break Some(f),
                    }
                }
            };
            let end = match failure {
                Some(f) => End::Dropped(f),
                None => End::Closed {
                    clean: session.conn.close(grace).await,
                },
            };
            (end, index, counts)
        });
    }
    let deadline = started + op.verify;
    // Every recipient has logged in by now: once nothing has arrived for VERIFY_QUIET, the
    // rest is not coming.
    let (mut seen, mut changed) = (u64::MAX, Instant::now());
    while Instant::now() < deadline && changed.elapsed() < VERIFY_QUIET {
        let now = delivered.load(Ordering::Relaxed);
        if now >= accepted {
            break;
        }
        if now != seen {
            (seen, changed) = (now, Instant::now());
        }
        tokio::time::sleep(POLL).await;
    }
    // Anything still coming after everything expected arrived is a duplicate or stale.
    tokio::time::sleep(VERIFY_GRACE.min(deadline.saturating_duration_since(Instant::now()))).await;
    let waited = started.elapsed();
    let _ = stop.send(true);
    let mut total = Delivered::default();
    let mut ends = Vec::new();
    let mut got_per: HashMap<u32, u64> = HashMap::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((end, index, c)) => {
                ends.push(end);
                got_per.insert(index - shared.recipient_first, c.delivered);
                total.delivered += c.delivered;
                total.delivered_bounced += c.delivered_bounced;
                total.delayed += c.delayed;
                total.duplicates += c.duplicates;
                total.stale += c.stale;
            }
            Err(e) => ends.push(End::Dropped(Failure::Protocol(format!("internal: {e}")))),
        }
    }
    let (dropped, close) = tally(ends);
    let secs = Duration::from_micros(last_us.load(Ordering::Relaxed)).as_secs_f64();
    // Recipients that got fewer of their messages than were stored for them.
    let mut short: Vec<(u32, u64, u64)> = expected_per
        .iter()
        .filter_map(|(&pos, &want)| {
            let got = got_per.get(&pos).copied();
            (got.unwrap_or(0) < want).then_some((pos, got.unwrap_or(0), want))
        })
        .collect();
    short.sort_unstable();
    let target = &shared.target;
    let short_examples = short
        .iter()
        .take(10)
        .map(|&(pos, got, want)| {
            let index = shared.recipient_first + pos;
            let how = if got_per.contains_key(&pos) {
                format!("via server {}", target.server_of(index) + 1)
            } else {
                "not logged in".to_string()
            };
            format!("{}: {got} of {want} ({how})", target.username(index))
        })
        .collect();
    VerifySummary {
        login: ramp.summary,
        expected: accepted,
        delivered: total.delivered,
        delayed: total.delayed,
        duplicates: total.duplicates,
        lost: accepted.saturating_sub(total.delivered),
        delivered_bounced: total.delivered_bounced,
        stale: total.stale,
        recipients_short: short.len() as u64,
        short_examples,
        waited_secs: waited.as_secs_f64(),
        last_delivery_secs: secs,
        delivered_per_sec: rate(total.delivered, Duration::from_secs_f64(secs)),
        dropped,
        close,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_at_their_length() {
        let b = body(0xdead_beef, 42, 7, 100);
        assert_eq!(b.len(), 100);
        assert_eq!(parse_body(&b), Some((0xdead_beef, 42, 7)));
        assert_eq!(parse_body("lg 1 2 3"), None);
        assert_eq!(parse_body("os zz 1 2 x"), None);
    }

    #[test]
    fn recipients_are_shared_out_evenly() {
        // More recipients than senders: each recipient has exactly one sender.
        let all: Vec<u32> = (0..3).flat_map(|p| recipients_of(p, 3, 10)).collect();
        let mut sorted = all.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_eq!(recipients_of(0, 3, 10), [0, 3, 6, 9]);
        assert_eq!(recipients_of(2, 3, 10), [2, 5, 8]);
        // 3 senders over 10: a sender has at least 3 recipients, so at most ceil(100 / 3)
        // one by one, or 4 batches of 10 out of 10.
        assert_eq!(per_recipient_max(3, 10, 100, 1), 34);
        assert_eq!(per_recipient_max(3, 10, 100, 10), 40);
        assert_eq!(per_recipient_max(3, 10, 5, 10), 5);
        // Fewer recipients: several senders each.
        assert_eq!(recipients_of(4, 5, 2), [0]);
        assert_eq!(per_recipient_max(5, 2, 10, 3), 30);
        assert_eq!(per_recipient_max(4, 4, 10, 3), 10);
        assert_eq!(per_recipient_max(0, 4, 10, 3), 0);
        // Batches go to the sender's recipients in turn.
        let mine = [2, 5, 8];
        let to: Vec<u32> = (1..=8).map(|s| recipient_of(&mine, 2, s)).collect();
        assert_eq!(to, [2, 2, 5, 5, 8, 8, 2, 2]);
        let mut r = SenderResult::default();
        r.bounced.insert(3);
        r.tally_recipients(&mine, 2, 7);
        r.accepted_to.sort_unstable();
        assert_eq!(r.accepted_to, [(2, 3), (5, 1), (8, 2)]);
        r.acked = vec![(1, 2), (3, 2)];
        assert_eq!(r.acked_messages(), 3);
    }
}
