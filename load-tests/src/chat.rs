//! Scenario `chat`: every logged-in user sends M messages, one every interval, each to a
//! random other user of the run (with `cross_node_only`, one connected to another server);
//! receivers count them, detect duplicates and measure latency from the send timestamp in the
//! body (`lg FROM SEQ SENT_US` padded with `x` to `--body-bytes`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::conn::Failure;
use crate::login::Target;
use crate::probe::{self, ChatMessage};
use crate::ramp::{login_all, stopped, tally, End, Plan, Ramp, Session};
use crate::report::{ChatSummary, Distribution, Outcome};
use crate::system::{cpu_us_per, CpuMeter};
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
}

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
}

#[derive(Default)]
struct Received {
    unique: u64,
    duplicates: u64,
    bounced: u64,
    latencies_us: Vec<u64>,
    /// When the last distinct message arrived, µs after the epoch.
    last_us: u64,
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
        return crate::chatstep::run(plan, steps, chat.body_bytes).await;
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
    });
    let users = ramp.sessions.len() as u64;
    eprintln!(
        "  {users} users sending {} messages each",
        shared.plan.messages
    );
    let start = Instant::now();
    let cpu = CpuMeter::start();
    let deadline = start + shared.plan.duration;
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
        if all_sent
            && shared.accounted.load(Ordering::Relaxed) >= shared.sent.load(Ordering::Relaxed)
        {
            break;
        }
    }
    let elapsed = start.elapsed();
    let exchange_cpu = cpu.cpu();
    let _ = stop.send(true);

    let mut total = Received::default();
    let mut ends = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((end, received)) => {
                ends.push(end);
                total.unique += received.unique;
                total.duplicates += received.duplicates;
                total.bounced += received.bounced;
                total.latencies_us.extend(received.latencies_us);
                total.last_us = total.last_us.max(received.last_us);
            }
            Err(e) => ends.push(End::Dropped(Failure::Protocol(format!("internal: {e}")))),
        }
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
        }),
        dropped,
        close,
        ..Outcome::default()
    })
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
                next_send += plan.interval;
                if seq == plan.messages {
                    sending = false;
                    shared.senders_done.fetch_add(1, Ordering::Relaxed);
                }
            }
            el = session.conn.next_element() => match el {
                Ok(el) => receive(&shared, &el, &mut seen, &mut received),
                Err(failure) => break Some(failure),
            }
        }
    };
    match failure {
        Some(failure) => {
            if sending {
                shared.senders_done.fetch_add(1, Ordering::Relaxed);
            }
            (End::Dropped(failure), received)
        }
        None => {
            let clean = session.conn.close(grace).await;
            (End::Closed { clean }, received)
        }
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
