//! The s2s manager: one per node, on the main arbiter. It owns the table of outbound links
//! (one per local domain and remote domain), starts a link task when a stanza or a dialback
//! verification needs one, and forgets it when the task ends.
//!
//! Everything it holds is bounded (`limits`): each link's queue by bytes
//! (`s2s.max_queue_bytes`, beyond it `resource-constraint` bounces), the links resolving,
//! connecting or negotiating at once (`s2s.max_connecting_links`; more wait in a FIFO of
//! `s2s.max_waiting_links`, beyond which they are refused), and the table of recently
//! failed links (`s2s.max_failed_links`, entries expire). So a flood of stanzas to many
//! distinct remote domains, or of dialback requests naming them, cannot open unbounded
//! connections and DNS lookups.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use proto::error::StanzaErrorCondition;
use proto::s2s::DialbackOutcome;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::limits::{self, ExpiringSet, LinkQueue, Reserve};
use super::messages::{LinkClosed, LinkUp, VerifyDialback};
use super::outbound::{self, LinkCmd};
use super::S2sShared;
use crate::log_throttle::LogThrottle;
use crate::router::messages::SendRemote;

/// How long an inbound stream waits for the authoritative server's answer.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(30);
/// After a link failed to come up, stanzas for that peer bounce at once for this long
/// instead of each presence update dialling a dead server again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);
/// How often expired failed-link entries are swept (they are also dropped when met).
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// A limit that trips in a flood logs at most once per this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

type Key = (String, String);

struct Link {
    tx: mpsc::UnboundedSender<LinkCmd>,
    generation: u64,
    queue: Arc<LinkQueue>,
    /// The receiving end while the link waits for a connecting slot (its task not started).
    parked: Option<mpsc::UnboundedReceiver<LinkCmd>>,
}

pub struct S2sManager {
    shared: Arc<S2sShared>,
    links: HashMap<Key, Link>,
    /// Pairs whose last link failed, until when they are not retried.
    failed: ExpiringSet<Key>,
    next_generation: u64,
    /// Generations of the link tasks that are running and not yet authenticated.
    connecting: HashSet<u64>,
    /// Links waiting for a connecting slot, first come first served: (key, generation).
    waiting: VecDeque<(Key, u64)>,
    waiting_log: LogThrottle,
    queue_full_log: LogThrottle,
    total_full_log: LogThrottle,
    refused_log: LogThrottle,
    evicted_log: LogThrottle,
}

impl S2sManager {
    pub fn new(shared: Arc<S2sShared>) -> S2sManager {
        let max_failed = shared.settings.max_failed_links;
        S2sManager {
            shared,
            links: HashMap::new(),
            failed: ExpiringSet::new(max_failed),
            next_generation: 1,
            connecting: HashSet::new(),
            waiting: VecDeque::new(),
            waiting_log: LogThrottle::new(LOG_INTERVAL),
            queue_full_log: LogThrottle::new(LOG_INTERVAL),
            total_full_log: LogThrottle::new(LOG_INTERVAL),
            refused_log: LogThrottle::new(LOG_INTERVAL),
            evicted_log: LogThrottle::new(LOG_INTERVAL),
        }
    }

    /// Answer `cmd` with an error instead of carrying it: a bounce for a stanza (messages
    /// and IQ requests; presence and errors are dropped), an error outcome for a dialback
    /// verification.
    fn refuse(&self, cmd: LinkCmd, cond: StanzaErrorCondition) {
        match cmd {
            LinkCmd::Stanza(stanza) => outbound::bounce(&self.shared, &stanza, cond),
            LinkCmd::Verify { reply, .. } => {
                let _ = reply.send(DialbackOutcome::Error(cond));
            }
        }
    }

    /// Hand `cmd` to the link for (`local`, `remote`), starting one if there is none (or
    /// the one we know has just ended).
    fn send(&mut self, local: &str, remote: &str, cmd: LinkCmd, ctx: &mut Context<Self>) {
        let key = (local.to_string(), remote.to_string());
        let weight = cmd.weight();
        let cmd = match self.links.get(&key) {
            Some(link) => match link.queue.try_reserve(weight) {
                Reserve::Accepted => match link.tx.send(cmd) {
                    Ok(()) => return,
                    // The task has ended; what it reserved dies with its queue.
                    Err(mpsc::error::SendError(cmd)) => cmd,
                },
                Reserve::RefusedTotal => {
                    if let Some(suppressed) = self.total_full_log.tick() {
                        tracing::warn!(
                            local,
                            remote,
                            queued_bytes = self.shared.queue_budget.used(),
                            max_total_queue_bytes = self.shared.settings.max_total_queue_bytes,
                            suppressed,
                            "s2s link queues full (s2s.max_total_queue_bytes): bouncing with resource-constraint"
                        );
                    }
                    limits::count("total_queue_bytes");
                    self.refuse(cmd, StanzaErrorCondition::ResourceConstraint);
                    return;
                }
                Reserve::Refused { tripped } => {
                    // A link at its bound may trip again as soon as it drained to the
                    // low-water mark: one line per interval over all links is enough.
                    if tripped && self.queue_full_log.tick().is_some() {
                        tracing::warn!(
                            local,
                            remote,
                            queued_bytes = link.queue.bytes(),
                            max_queue_bytes = self.shared.settings.max_queue_bytes,
                            "s2s link queue full (the peer reads slower than we send): bouncing with \
                             resource-constraint and pausing the inbound streams from the peer until it drains"
                        );
                    }
                    limits::count("link_queue_bytes");
                    self.refuse(cmd, StanzaErrorCondition::ResourceConstraint);
                    return;
                }
            },
            None => cmd,
        };
        if self.failed.contains(&key, Instant::now()) {
            self.refuse(cmd, StanzaErrorCondition::RemoteServerNotFound);
            return;
        }
        let settings = &self.shared.settings;
        let start_now = self.connecting.len() < settings.max_connecting_links;
        if !start_now && self.waiting.len() >= settings.max_waiting_links {
            if let Some(suppressed) = self.refused_log.tick() {
                tracing::warn!(
                    local,
                    remote,
                    connecting = self.connecting.len(),
                    waiting = self.waiting.len(),
                    suppressed,
                    "s2s: too many links coming up (s2s.max_connecting_links and \
                     s2s.max_waiting_links reached): refusing with resource-constraint"
                );
            }
            limits::count("waiting_links");
            self.refuse(cmd, StanzaErrorCondition::ResourceConstraint);
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let generation = self.next_generation;
        self.next_generation += 1;
        let queue = Arc::new(LinkQueue::new(
            remote,
            settings.max_queue_bytes,
            self.shared.backpressure.clone(),
            self.shared.queue_budget.clone(),
        ));
        if queue.try_reserve(weight) != Reserve::Accepted {
            // An empty queue takes any one command: only the node's budget can refuse.
            limits::count("total_queue_bytes");
            self.refuse(cmd, StanzaErrorCondition::ResourceConstraint);
            return;
        }
        // A fresh channel's receiver is alive: this send cannot fail.
        let _ = tx.send(cmd);
        let parked = if start_now {
            self.spawn_link(&key, generation, queue.clone(), rx, ctx);
            None
        } else {
            if let Some(suppressed) = self.waiting_log.tick() {
                tracing::info!(
                    local,
                    remote,
                    connecting = self.connecting.len(),
                    waiting = self.waiting.len() + 1,
                    suppressed,
                    "s2s: s2s.max_connecting_links links are coming up: this one waits for a slot"
                );
            }
            limits::count("connecting_links");
            self.waiting.push_back((key.clone(), generation));
            Some(rx)
        };
        self.links.insert(
            key,
            Link {
                tx,
                generation,
                queue,
                parked,
            },
        );
    }

    fn spawn_link(
        &mut self,
        key: &Key,
        generation: u64,
        queue: Arc<LinkQueue>,
        rx: mpsc::UnboundedReceiver<LinkCmd>,
        ctx: &mut Context<Self>,
    ) {
        let (local, remote) = key;
        tracing::debug!(local, remote, generation, "opening s2s link");
        self.connecting.insert(generation);
        actix_rt::spawn(outbound::run(
            self.shared.clone(),
            local.clone(),
            remote.clone(),
            rx,
            queue,
            ctx.address(),
            generation,
        ));
    }

    /// A connecting slot was freed: start the links that wait for one.
    fn start_waiting(&mut self, ctx: &mut Context<Self>) {
        while self.connecting.len() < self.shared.settings.max_connecting_links {
            let Some((key, generation)) = self.waiting.pop_front() else {
                return;
            };
            let Some(link) = self.links.get_mut(&key) else {
                continue;
            };
            if link.generation != generation {
                continue;
            }
            let Some(rx) = link.parked.take() else {
                continue;
            };
            let queue = link.queue.clone();
            self.spawn_link(&key, generation, queue, rx, ctx);
        }
    }
}

impl Actor for S2sManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(PRUNE_EVERY, |this, _| this.failed.prune(Instant::now()));
    }
}

impl Handler<SendRemote> for S2sManager {
    type Result = ();

    fn handle(&mut self, msg: SendRemote, ctx: &mut Context<Self>) {
        let local = msg.from.domain().to_string();
        if !self.shared.policy.domains.contains(&local) {
            // Only our own users' stanzas leave through us.
            tracing::debug!(from = %msg.from, to = %msg.to, "not relaying a stanza between remote domains");
            return;
        }
        let remote = msg.to.domain().to_string();
        self.send(&local, &remote, LinkCmd::Stanza(msg.stanza), ctx);
    }
}

impl Handler<VerifyDialback> for S2sManager {
    type Result = ResponseFuture<DialbackOutcome>;

    fn handle(&mut self, msg: VerifyDialback, ctx: &mut Context<Self>) -> Self::Result {
        let (reply, answer) = oneshot::channel();
        self.send(
            &msg.receiving,
            &msg.originating,
            LinkCmd::Verify {
                id: msg.stream_id,
                key: msg.key,
                reply,
            },
            ctx,
        );
        Box::pin(async move {
            match tokio::time::timeout(VERIFY_TIMEOUT, answer).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => DialbackOutcome::Error(StanzaErrorCondition::RemoteServerNotFound),
                Err(_) => DialbackOutcome::Error(StanzaErrorCondition::RemoteServerTimeout),
            }
        })
    }
}

impl Handler<LinkUp> for S2sManager {
    type Result = ();

    fn handle(&mut self, msg: LinkUp, ctx: &mut Context<Self>) {
        if self.connecting.remove(&msg.generation) {
            self.start_waiting(ctx);
        }
    }
}

impl Handler<LinkClosed> for S2sManager {
    type Result = ();

    fn handle(&mut self, msg: LinkClosed, ctx: &mut Context<Self>) {
        let key = (msg.local, msg.remote);
        if self
            .links
            .get(&key)
            .is_some_and(|l| l.generation == msg.generation)
        {
            self.links.remove(&key);
            if msg.failed {
                let now = Instant::now();
                if self.failed.insert(key, now + RETRY_AFTER_FAILURE, now) {
                    limits::count("failed_links_evicted");
                    if let Some(suppressed) = self.evicted_log.tick() {
                        tracing::warn!(
                            max_failed_links = self.shared.settings.max_failed_links,
                            suppressed,
                            "s2s: too many unreachable domains remembered: forgot the oldest"
                        );
                    }
                }
            }
        }
        if self.connecting.remove(&msg.generation) {
            self.start_waiting(ctx);
        }
    }
}
