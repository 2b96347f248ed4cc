//! Scenario `chat`: every logged-in user sends M messages, one every interval, each to a
//! random other user of the run (with `cross_node_only`, one connected to another server);
//! receivers count them, detect duplicates and measure latency from the send timestamp in the
//! body (`lg FROM SEQ SENT_US` padded with `x` to `--body-bytes`).
//!
//! With `--carbons` every user also has a second session (resource `lg-carbons`) that
//! enabled Message Carbons (XEP-0280): each message then also costs the server a `<sent/>`
//! carbon to the sender's second session and a `<received/>` one to the recipient's. With
//! `--server-pid` the server's CPU time over the exchange is reported per delivered message,
//! so the two runs can be compared.
//!
//! With `--flaky-percent P` a share of the users enable resumable stream management
//! (XEP-0198) and, every `--flaky-every-secs` or so, drop their TCP connection without
//! closing the stream, as a phone losing its network does; each then resumes its session on
//! the next server of the target (another node of a cluster), sends again the messages the
//! server had not acknowledged (§4) and receives what the server retransmits. The receivers'
//! `lost` and `duplicates` say whether the server kept its promise.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::conn::Failure;
use crate::login::Target;
use crate::probe::{self, ChatMessage};
use crate::ramp::{login_all, stopped, tally, timed_login, End, Plan, Ramp, Session};
use crate::report::{
    CarbonsSummary, ChatSummary, Distribution, FlakySummary, Outcome, ServerCpuSummary,
};
use crate::system::{cpu_time_of, cpu_us_per, CpuMeter};
use crate::xml;

pub struct ChatPlan {
    pub messages: u32,
    pub interval: Duration,
    /// The whole exchange (sending and waiting for deliveries) stops after this.
    pub duration: Duration,
    /// Recipients are only users connected to another of the target's servers.
    pub cross_node_only: bool,
    /// `--rates`: stepped aggregate rates instead of `messages` at `interval`.
    pub steps: Option<crate::chatstep::StepPlan>,
    /// Length of every message body.
    pub body_bytes: usize,
    /// `--carbons`: a second session per user with carbons enabled.
    pub carbons: bool,
    /// `--sm`: stream management (XEP-0198) enabled on every session, `<r/>` answered.
    pub sm: bool,
    /// `--flaky-percent`: users that drop their connection and resume now and then.
    pub flaky: Option<FlakyPlan>,
    /// `--server-pid`: the server process whose CPU time is measured.
    pub server_pid: Option<u32>,
}

/// `chat --flaky-percent`: which users drop their connection, and how often.
#[derive(Clone, Copy)]
pub struct FlakyPlan {
    /// Share of the users, in percent (1..=100).
    pub percent: u32,
    /// Mean time between two drops of one user (uniformly 0.5x to 1.5x).
    pub every: Duration,
}

impl FlakyPlan {
    /// Whether the user at `pos` among the peers is flaky: an even spread, `percent` of
    /// every hundred.
    fn picks(&self, pos: usize) -> bool {
        (pos as u64 * u64::from(self.percent)) % 100 < u64::from(self.percent)
    }

    fn next_drop(&self) -> tokio::time::Instant {
        let every = self.every.as_micros().max(2) as u64;
        let wait = rand::thread_rng().gen_range(every / 2..every + every / 2);
        tokio::time::Instant::now() + Duration::from_micros(wait)
    }
}

/// Ask for the server's `<a/>` after this many messages (XEP-0198 §4), so that the queue of
/// messages to send again after a resumption stays short.
const ACK_REQUEST_EVERY: u32 = 8;

/// The resource of each user's second session with `--carbons`.
const CARBONS_RESOURCE: &str = "lg-carbons";
const CARBONS_ENABLE: &str =
    "<iq type='set' id='lg-carbons-on'><enable xmlns='urn:xmpp:carbons:2'/></iq>";

/// How often the coordinator checks whether every message has arrived.
const POLL: Duration = Duration::from_millis(20);
const ID_PREFIX: char = 'm';

struct Shared {
    target: Arc<Target>,
    plan: ChatPlan,
    /// Indices of the logged-in users, the possible recipients.
    peers: Vec<u32>,
    /// With `cross_node_only`: per server, the peers connected to any other server.
    elsewhere: Vec<Vec<u32>>,
    /// Send timestamps in bodies are microseconds since this instant.
    epoch: Instant,
    /// This run's marker tag ([`probe::run_tag`]).
    tag: String,
    sent: AtomicU64,
    /// Messages sent to a user connected to another server than the sender.
    cross_node: AtomicU64,
    /// Distinct deliveries plus bounces: when it reaches `sent`, nothing is in flight.
    accounted: AtomicU64,
    /// Users that will send no more (all sent, or their session ended).
    senders_done: AtomicU64,
    /// `--carbons`: carbons received by the second sessions, by kind.
    sent_carbons: AtomicU64,
    received_carbons: AtomicU64,
}

#[derive(Default)]
struct Received {
    unique: u64,
    duplicates: u64,
    bounced: u64,
    latencies_us: Vec<u64>,
    /// When the last distinct message arrived, µs after the epoch.
    last_us: u64,
    /// `--flaky-percent`: this user was flaky (per user; the run counts flaky users), and
    /// what its drops gave.
    flaky: bool,
    drops: u64,
    resumed: u64,
    resumed_elsewhere: u64,
    resume_failed: u64,
    resent: u64,
    resume_us: Vec<u64>,
}

impl Received {
    /// Add one user's counts to the run's.
    fn add(&mut self, user: Received) {
        self.unique += user.unique;
        self.duplicates += user.duplicates;
        self.bounced += user.bounced;
        self.latencies_us.extend(user.latencies_us);
        self.last_us = self.last_us.max(user.last_us);
        self.drops += user.drops;
        self.resumed += user.resumed;
        self.resumed_elsewhere += user.resumed_elsewhere;
        self.resume_failed += user.resume_failed;
        self.resent += user.resent;
        self.resume_us.extend(user.resume_us);
    }
}

/// Log every user in; the sessions, their indexes, and the stop signal they hold on.
/// Fewer than two sessions cannot chat: they are closed again and that is an error.
pub(crate) async fn login_chatters(
    plan: &Plan,
) -> anyhow::Result<(Ramp, Vec<u32>, watch::Sender<bool>, watch::Receiver<bool>)> {
    let ramp = login_all(plan).await;
    let peers: Vec<u32> = ramp.sessions.iter().map(|s| s.index).collect();
    let (stop, stopped) = watch::channel(false);
    if peers.len() < 2 {
        ramp.release(&stop, &stopped, plan.close_grace).await;
        anyhow::bail!(
            "chat needs at least two logged-in users, got {}",
            peers.len()
        );
    }
    Ok((ramp, peers, stop, stopped))
}

pub async fn run(plan: &Plan, chat: ChatPlan) -> anyhow::Result<Outcome> {
    if let Some(steps) = chat.steps {
        return crate::chatstep::run(plan, steps, chat.body_bytes, chat.server_pid).await;
    }
    let (ramp, peers, stop, stopped) = login_chatters(plan).await?;
    let target = &plan.target;
    let elsewhere: Vec<Vec<u32>> = if chat.cross_node_only {
        (0..target.servers.len())
            .map(|s| {
                let other = |&&p: &&u32| target.server_of(p) != s;
                peers.iter().filter(other).copied().collect()
            })
            .collect()
    } else {
        Vec::new()
    };
    let spread = elsewhere.iter().filter(|e| e.len() < peers.len()).count();
    if chat.cross_node_only && spread < 2 {
        ramp.release(&stop, &stopped, plan.close_grace).await;
        anyhow::bail!("--cross-node-only needs logged-in users on at least two servers");
    }
    let carbon_sessions = if chat.carbons {
        carbon_sessions(plan, &peers).await
    } else {
        Vec::new()
    };
    let shared = Arc::new(Shared {
        target: plan.target.clone(),
        plan: chat,
        peers,
        elsewhere,
        epoch: Instant::now(),
        tag: probe::run_tag('c'),
        sent: AtomicU64::new(0),
        cross_node: AtomicU64::new(0),
        accounted: AtomicU64::new(0),
        senders_done: AtomicU64::new(0),
        sent_carbons: AtomicU64::new(0),
        received_carbons: AtomicU64::new(0),
    });
    let users = ramp.sessions.len() as u64;
    let carbon_users = carbon_sessions.len() as u64;
    eprintln!(
        "  {users} users sending {} messages each",
        shared.plan.messages
    );
    let start = Instant::now();
    let cpu = CpuMeter::start();
    let server_pid = shared.plan.server_pid;
    let server_cpu_before = server_pid.map(cpu_time_of).transpose()?;
    let deadline = start + shared.plan.duration;
    let mut carbon_tasks = JoinSet::new();
    for session in carbon_sessions {
        carbon_tasks.spawn(count_carbons(
            session,
            shared.clone(),
            stopped.clone(),
            plan.close_grace,
        ));
    }
    let mut tasks = JoinSet::new();
    for (pos, session) in ramp.sessions.into_iter().enumerate() {
        let task = converse(
            session,
            pos,
            shared.clone(),
            stopped.clone(),
            plan.close_grace,
        );
        tasks.spawn(task);
    }
    while Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
        let all_sent = shared.senders_done.load(Ordering::Relaxed) == users;
        let sent = shared.sent.load(Ordering::Relaxed);
        // Two carbons per message when every user has a second session.
        let carbons_done = carbon_users < users
            || shared.sent_carbons.load(Ordering::Relaxed)
                + shared.received_carbons.load(Ordering::Relaxed)
                >= 2 * sent;
        if all_sent && shared.accounted.load(Ordering::Relaxed) >= sent && carbons_done {
            break;
        }
    }
    let elapsed = start.elapsed();
    let exchange_cpu = cpu.cpu();
    let server_cpu = match (server_pid, server_cpu_before) {
        (Some(pid), Some(before)) => Some((pid, cpu_time_of(pid)?.saturating_sub(before))),
        _ => None,
    };
    let _ = stop.send(true);

    let mut total = Received::default();
    let mut flaky_clients = 0u64;
    let mut ends = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((end, received)) => {
                ends.push(end);
                flaky_clients += u64::from(received.flaky);
                total.add(received);
            }
            Err(e) => ends.push(End::Dropped(Failure::Protocol(format!("internal: {e}")))),
        }
    }
    while let Some(joined) = carbon_tasks.join_next().await {
        ends.push(
            joined.unwrap_or_else(|e| End::Dropped(Failure::Protocol(format!("internal: {e}")))),
        );
    }
    let (dropped, close) = tally(ends);
    let sent = shared.sent.load(Ordering::Relaxed);
    // Throughput over the time to the last delivery, not to the deadline: a few messages
    // that never arrive must not turn the rate into received / --duration-secs.
    let delivering = Duration::from_micros(total.last_us).saturating_sub(start - shared.epoch);
    Ok(Outcome {
        login: ramp.summary,
        idle: None,
        chat: Some(ChatSummary {
            messages_per_user: shared.plan.messages,
            interval_ms: shared.plan.interval.as_millis() as u64,
            body_bytes: shared.plan.body_bytes,
            cross_node_only: shared.plan.cross_node_only,
            sent,
            cross_node: shared.cross_node.load(Ordering::Relaxed),
            received: total.unique,
            lost: sent.saturating_sub(total.unique + total.bounced),
            duplicates: total.duplicates,
            bounced: total.bounced,
            elapsed_secs: elapsed.as_secs_f64(),
            last_delivery_secs: delivering.as_secs_f64(),
            received_per_sec: total.unique as f64 / delivering.as_secs_f64().max(1e-6),
            latency_ms: Distribution::from_micros(total.latencies_us),
            generator_cpu_secs: exchange_cpu.as_secs_f64(),
            generator_cpu_us_per_message: cpu_us_per(exchange_cpu, total.unique),
            stepped: None,
            carbons: shared.plan.carbons.then(|| CarbonsSummary {
                sessions: carbon_users,
                sent_carbons: shared.sent_carbons.load(Ordering::Relaxed),
                received_carbons: shared.received_carbons.load(Ordering::Relaxed),
                expected: 2 * sent,
            }),
            flaky: shared.plan.flaky.map(|_| FlakySummary {
                clients: flaky_clients,
                drops: total.drops,
                resumed: total.resumed,
                resumed_elsewhere: total.resumed_elsewhere,
                failed: total.resume_failed,
                resent: total.resent,
                resume_ms: Distribution::from_micros(std::mem::take(&mut total.resume_us)),
            }),
            server_cpu: server_cpu.map(|(server_pid, cpu)| ServerCpuSummary {
                server_pid,
                cpu_secs: cpu.as_secs_f64(),
                us_per_message: cpu_us_per(cpu, total.unique),
            }),
        }),
        dropped,
        close,
        ..Outcome::default()
    })
}

/// `--carbons`: log every user in a second time (resource [`CARBONS_RESOURCE`]) and enable
/// carbons there; users whose second login or enable fails are reported and left out.
async fn carbon_sessions(plan: &Plan, users: &[u32]) -> Vec<Session> {
    let permits = Arc::new(Semaphore::new(plan.concurrency));
    let mut tasks = JoinSet::new();
    for &index in users {
        // The semaphore is never closed, so this only waits for a free slot.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (target, limit) = (plan.target.clone(), plan.login_timeout);
        tasks.spawn(async move {
            let _permit = permit;
            let (conn, _) = timed_login(&target, limit, index, CARBONS_RESOURCE).await;
            let mut conn = conn?;
            conn.send(CARBONS_ENABLE).await?;
            let answer = tokio::time::timeout(limit, async {
                loop {
                    let el = conn.next_element().await?;
                    if xml::name(&el) == "iq"
                        && xml::attr(&el, "id").as_deref() == Some("lg-carbons-on")
                    {
                        return Ok(xml::attr(&el, "type"));
                    }
                }
            })
            .await
            .unwrap_or(Err(Failure::Timeout))?;
            if answer.as_deref() != Some("result") {
                return Err(Failure::Protocol("carbons <enable/> refused".into()));
            }
            Ok(Session { index, conn })
        });
    }
    let mut sessions = Vec::with_capacity(users.len());
    let mut failed = 0u64;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(session)) => sessions.push(session),
            Ok(Err(failure)) => {
                failed += 1;
                eprintln!("  carbons session failed: {failure}");
            }
            Err(e) => {
                failed += 1;
                eprintln!("  carbons session failed: internal: {e}");
            }
        }
    }
    eprintln!(
        "  {} second sessions with carbons enabled, {failed} failed",
        sessions.len()
    );
    sessions
}

/// A second session: count the carbons it gets until told to stop.
async fn count_carbons(
    mut session: Session,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) -> End {
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            el = session.conn.next_element() => match el {
                Ok(el) if xml::name(&el) == "message" => {
                    if xml::child(&el, "sent").is_some() {
                        shared.sent_carbons.fetch_add(1, Ordering::Relaxed);
                    } else if xml::child(&el, "received").is_some() {
                        shared.received_carbons.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(_) => {}
                Err(failure) => return End::Dropped(failure),
            }
        }
    }
    End::Closed {
        clean: session.conn.close(grace).await,
    }
}

/// One user: send on schedule, receive whatever arrives, until told to stop.
async fn converse(
    mut session: Session,
    pos: usize,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) -> (End, Received) {
    let plan = &shared.plan;
    let mut received = Received::default();
    let mut seen = HashSet::new();
    let mut seq = 0u32;
    let offset = rand::thread_rng().gen_range(0..plan.interval.as_micros().max(1) as u64);
    let mut next_send = tokio::time::Instant::now() + Duration::from_micros(offset);
    let mut sending = plan.messages > 0;
    if !sending {
        shared.senders_done.fetch_add(1, Ordering::Relaxed);
    }
    // XEP-0198: stanzas received since `<enabled/>` (the server counts from its answer on,
    // §4), the `h` of our `<a/>`; None until then.
    let mut handled: Option<u32> = None;
    // `--flaky-percent`: this user resumes after drops. Its session id (`<enabled id/>`),
    // the server it is connected to, when it drops next, and the messages the server has not
    // acknowledged yet (XEP-0198 §4: sent again after a resumption) with the server's last h.
    let flaky = plan.flaky.filter(|f| f.picks(pos));
    received.flaky = flaky.is_some();
    let mut sm_id: Option<String> = None;
    let mut server = shared.target.server_of(session.index);
    let mut next_drop = flaky.map(|f| f.next_drop());
    let mut unacked = Unacked::default();
    if plan.sm || flaky.is_some() {
        let enable = if flaky.is_some() {
            "<enable xmlns='urn:xmpp:sm:3' resume='true'/>"
        } else {
            "<enable xmlns='urn:xmpp:sm:3'/>"
        };
        if let Err(failure) = session.conn.send(enable).await {
            return (End::Dropped(failure), received);
        }
    }
    let failure = loop {
        tokio::select! {
            _ = stopped(&mut stop) => break None,
            _ = tokio::time::sleep_until(next_send), if sending => {
                seq += 1;
                let message = compose(&shared, session.index, pos, seq);
                if let Err(failure) = session.conn.send(&message).await {
                    break Some(failure);
                }
                shared.sent.fetch_add(1, Ordering::Relaxed);
                if flaky.is_some() {
                    unacked.sent.push_back(message);
                    if seq.is_multiple_of(ACK_REQUEST_EVERY) {
                        if let Err(failure) = session.conn.send("<r xmlns='urn:xmpp:sm:3'/>").await {
                            break Some(failure);
                        }
                    }
                }
                next_send += plan.interval;
                if seq == plan.messages {
                    sending = false;
                    shared.senders_done.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ = sleep_until_some(next_drop), if sm_id.is_some() => {
                // The network goes: the connection ends without `</stream:stream>`.
                let Some((f, id)) = flaky.zip(sm_id.as_deref()) else { continue };
                drop(session.conn);
                received.drops += 1;
                let h = handled.unwrap_or(0);
                let began = Instant::now();
                let to = (server + 1) % shared.target.servers.len().max(1);
                let limit = shared.plan.duration;
                let resumed = tokio::time::timeout(
                    limit,
                    crate::login::resume_as(&shared.target, session.index, to, id, h),
                )
                .await
                .unwrap_or(Err(Failure::Timeout));
                match resumed {
                    Ok((conn, server_h)) => {
                        session.conn = conn;
                        received.resumed += 1;
                        received.resumed_elsewhere += u64::from(to != server);
                        received.resume_us.push(began.elapsed().as_micros() as u64);
                        server = to;
                        // What the server handled is acknowledged; the rest goes again.
                        unacked.acknowledged(server_h);
                        for message in &unacked.sent {
                            if let Err(failure) = session.conn.send(message).await {
                                return ended(&shared, sending, failure, received);
                            }
                            received.resent += 1;
                        }
                        next_drop = Some(f.next_drop());
                    }
                    Err(failure) => {
                        received.resume_failed += 1;
                        return ended(&shared, sending, failure, received);
                    }
                }
            }
            el = session.conn.next_element() => match el {
                Ok(el) => {
                    if (plan.sm || flaky.is_some()) && handled.is_none() && el.starts_with("<enabled") {
                        handled = Some(0);
                        sm_id = xml::attr(&el, "id").filter(|_| flaky.is_some());
                        continue;
                    }
                    if el.starts_with("<a ") && flaky.is_some() {
                        if let Some(h) = xml::attr(&el, "h").and_then(|h| h.parse::<u32>().ok()) {
                            unacked.acknowledged(h);
                        }
                        continue;
                    }
                    if let Some(h) = handled.as_mut() {
                        if el.starts_with("<r ") || el.starts_with("<r/") {
                            let ack = format!("<a xmlns='urn:xmpp:sm:3' h='{h}'/>");
                            if let Err(failure) = session.conn.send(&ack).await {
                                break Some(failure);
                            }
                            continue;
                        }
                        if ["<message", "<presence", "<iq"].iter().any(|s| el.starts_with(s)) {
                            *h = h.wrapping_add(1);
                        }
                    }
                    receive(&shared, &el, &mut seen, &mut received)
                }
                Err(failure) => break Some(failure),
            }
        }
    };
    match failure {
        Some(failure) => ended(&shared, sending, failure, received),
        None => {
            // Acknowledge what arrived before closing: the server reroutes what a closed
            // stream left unacknowledged (XEP-0198 §4), which would store it offline again.
            if let Some(h) = handled {
                let _ = session
                    .conn
                    .send(&format!("<a xmlns='urn:xmpp:sm:3' h='{h}'/>"))
                    .await;
            }
            let clean = session.conn.close(grace).await;
            (End::Closed { clean }, received)
        }
    }
}

/// A flaky user's messages the server has not acknowledged yet (XEP-0198 §4), oldest
/// first, and the server's last `h`.
#[derive(Default)]
struct Unacked {
    sent: VecDeque<String>,
    acked: u32,
}

impl Unacked {
    /// The server handled `h` of our stanzas (`<a h/>` or `<resumed h/>`): drop those.
    fn acknowledged(&mut self, h: u32) {
        let done = h.wrapping_sub(self.acked) as usize;
        self.sent.drain(..done.min(self.sent.len()));
        self.acked = h;
    }
}

/// A session that ended before it was told to stop.
fn ended(shared: &Shared, sending: bool, failure: Failure, received: Received) -> (End, Received) {
    if sending {
        shared.senders_done.fetch_add(1, Ordering::Relaxed);
    }
    (End::Dropped(failure), received)
}

/// Sleep until `at`, or forever without one.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Message `seq` from user `from` (at `pos` in the peers) to a random other peer, or with
/// `cross_node_only` to a random peer connected to another server.
fn compose(shared: &Shared, from: u32, pos: usize, seq: u32) -> String {
    let target = &shared.target;
    let recipient = if shared.plan.cross_node_only {
        let elsewhere = &shared.elsewhere[target.server_of(from)];
        elsewhere[rand::thread_rng().gen_range(0..elsewhere.len())]
    } else {
        other_peer(&shared.peers, pos)
    };
    if target.server_of(recipient) != target.server_of(from) {
        shared.cross_node.fetch_add(1, Ordering::Relaxed);
    }
    ChatMessage {
        to: &target.full_jid(recipient),
        id_prefix: ID_PREFIX,
        tag: &shared.tag,
        from,
        seq,
        sent_us: shared.epoch.elapsed().as_micros() as u64,
        body_len: shared.plan.body_bytes,
    }
    .stanza()
}

/// A random peer other than the one at `pos` (`peers` has at least two).
pub(crate) fn other_peer(peers: &[u32], pos: usize) -> u32 {
    peers[other_position(peers.len(), pos)]
}

/// A random position among `count` peers other than `pos` (`count` at least 2).
pub(crate) fn other_position(count: usize, pos: usize) -> usize {
    let mut other = rand::thread_rng().gen_range(0..count - 1);
    if other >= pos {
        other += 1;
    }
    other
}

fn receive(shared: &Shared, el: &str, seen: &mut HashSet<(u32, u32)>, received: &mut Received) {
    if xml::name(el) != "message" {
        return;
    }
    if xml::attr(el, "type").as_deref() == Some("error") {
        if probe::bounced_seq(el, ID_PREFIX, &shared.tag).is_none() {
            return;
        }
        received.bounced += 1;
        shared.accounted.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let Some(body) = xml::child(el, "body").map(xml::text) else {
        return;
    };
    let Some((from, seq, sent_us)) = probe::parse_tagged(&body, &shared.tag) else {
        return;
    };
    if !seen.insert((from, seq)) {
        received.duplicates += 1;
        return;
    }
    received.unique += 1;
    shared.accounted.fetch_add(1, Ordering::Relaxed);
    let now_us = shared.epoch.elapsed().as_micros() as u64;
    received.latencies_us.push(now_us.saturating_sub(sent_us));
    received.last_us = now_us;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flaky_users_are_the_share_asked_for_evenly_spread() {
        for percent in [1, 10, 33, 50, 99, 100] {
            let plan = FlakyPlan {
                percent,
                every: Duration::from_secs(1),
            };
            for window in [0..100, 100..200, 37..137] {
                let picked = window.filter(|&pos| plan.picks(pos)).count();
                assert_eq!(picked, percent as usize, "{percent} %");
            }
        }
    }

    #[test]
    fn acknowledgements_drop_the_oldest_and_wrap_around() {
        let mut u = Unacked {
            sent: (1..=5).map(|i| i.to_string()).collect(),
            acked: u32::MAX - 1,
        };
        u.acknowledged(0); // two handled, across 2^32
        assert_eq!(u.sent, ["3", "4", "5"]);
        u.acknowledged(0); // nothing new
        assert_eq!(u.sent.len(), 3);
        u.acknowledged(10); // more than we hold: everything
        assert!(u.sent.is_empty());
    }

    #[test]
    fn drops_come_between_half_and_one_and_a_half_periods() {
        let plan = FlakyPlan {
            percent: 10,
            every: Duration::from_secs(2),
        };
        for _ in 0..100 {
            let wait = plan.next_drop() - tokio::time::Instant::now();
            assert!(wait <= Duration::from_secs(3), "{wait:?}");
            assert!(wait >= Duration::from_millis(900), "{wait:?}");
        }
    }
}
