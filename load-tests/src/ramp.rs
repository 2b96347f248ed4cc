//! Logging many users in with bounded concurrency, and ending their sessions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinError, JoinSet};

use crate::conn::{Connection, Failure};
use crate::login::{login_as, Target, RESOURCE};
use crate::report::{count, CloseSummary, Distribution, LoginSummary};

/// Who logs in and how fast.
pub struct Plan {
    pub target: Arc<Target>,
    /// Index of the first user (`user<first>`).
    pub first: u32,
    pub users: u32,
    /// Logins in progress at once.
    pub concurrency: usize,
    pub login_timeout: Duration,
    /// How long a closing session waits for the server's `</stream:stream>`.
    pub close_grace: Duration,
}

/// A logged-in user.
pub struct Session {
    pub index: u32,
    pub conn: Connection,
}

pub struct Ramp {
    pub sessions: Vec<Session>,
    pub summary: LoginSummary,
}

impl Ramp {
    /// Close every session gracefully (for a scenario that cannot go on); `stop` is sent.
    pub async fn release(
        self,
        stop: &watch::Sender<bool>,
        stopped: &watch::Receiver<bool>,
        grace: Duration,
    ) {
        let _ = stop.send(true);
        for s in self.sessions {
            s.hold(stopped.clone(), grace).await;
        }
    }
}

type Attempt = (u32, Result<Connection, Failure>, Duration);

struct Collector {
    sessions: Vec<Session>,
    failures: BTreeMap<String, u64>,
    latencies_us: Vec<u64>,
    done: u32,
    users: u32,
}

impl Collector {
    fn add(&mut self, joined: Result<Attempt, JoinError>) {
        self.done += 1;
        match joined {
            Ok((index, Ok(conn), took)) => {
                self.latencies_us.push(took.as_micros() as u64);
                self.sessions.push(Session { index, conn });
            }
            Ok((_, Err(failure), _)) => count(&mut self.failures, failure),
            Err(e) => count(&mut self.failures, format!("internal: {e}")),
        }
        let step = (self.users / 10).max(1);
        if self.done.is_multiple_of(step) || self.done == self.users {
            eprintln!(
                "  {}/{} logins finished, {} failed",
                self.done,
                self.users,
                self.done as usize - self.sessions.len()
            );
        }
    }
}

/// Log users `first..first+users` in, at most `concurrency` at a time.
pub async fn login_all(plan: &Plan) -> Ramp {
    let permits = Arc::new(Semaphore::new(plan.concurrency));
    let mut tasks = JoinSet::new();
    let mut collector = Collector {
        sessions: Vec::with_capacity(plan.users as usize),
        failures: BTreeMap::new(),
        latencies_us: Vec::with_capacity(plan.users as usize),
        done: 0,
        users: plan.users,
    };
    let start = Instant::now();
    for index in plan.first..plan.first + plan.users {
        // The semaphore is never closed, so this only waits for a free slot.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (target, login_timeout) = (plan.target.clone(), plan.login_timeout);
        tasks.spawn(async move {
            let _permit = permit;
            let (result, took) = timed_login(&target, login_timeout, index, RESOURCE).await;
            (index, result, took)
        });
        while let Some(joined) = tasks.try_join_next() {
            collector.add(joined);
        }
    }
    while let Some(joined) = tasks.join_next().await {
        collector.add(joined);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let succeeded = collector.sessions.len() as u64;
    collector.sessions.sort_by_key(|s| s.index);
    Ramp {
        sessions: collector.sessions,
        summary: LoginSummary {
            succeeded,
            failed: collector.failures.values().sum(),
            failures: collector.failures,
            elapsed_secs: elapsed,
            rate_per_sec: if elapsed > 0.0 {
                succeeded as f64 / elapsed
            } else {
                0.0
            },
            latency_ms: Distribution::from_micros(collector.latencies_us),
        },
    }
}

/// Log user `index` in binding `resource`, failing with `timeout` after `limit`; the result
/// and how long it took.
pub async fn timed_login(
    target: &Target,
    limit: Duration,
    index: u32,
    resource: &str,
) -> (Result<Connection, Failure>, Duration) {
    let began = Instant::now();
    let result = tokio::time::timeout(limit, login_as(target, index, resource))
        .await
        .unwrap_or(Err(Failure::Timeout));
    (result, began.elapsed())
}

/// How a session ended.
pub enum End {
    /// We closed it; `clean` if the server answered with `</stream:stream>`.
    Closed { clean: bool },
    /// The server or the network ended it first.
    Dropped(Failure),
}

impl Session {
    /// Read and discard what the server sends until `stop` turns true, then close.
    pub async fn hold(mut self, mut stop: watch::Receiver<bool>, grace: Duration) -> End {
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => break,
                el = self.conn.next_element() => {
                    if let Err(failure) = el {
                        return End::Dropped(failure);
                    }
                }
            }
        }
        End::Closed {
            clean: self.conn.close(grace).await,
        }
    }
}

impl Session {
    /// End a user's session: dropped by `failure`, or else closed by us.
    pub async fn end(self, failure: Option<Failure>, grace: Duration) -> End {
        match failure {
            Some(failure) => End::Dropped(failure),
            None => End::Closed {
                clean: self.conn.close(grace).await,
            },
        }
    }
}

/// Resolves once `stop` is true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Dropped sessions by reason, and how the others closed.
pub fn tally(ends: impl IntoIterator<Item = End>) -> (BTreeMap<String, u64>, CloseSummary) {
    let mut dropped = BTreeMap::new();
    let mut close = CloseSummary::default();
    for end in ends {
        match end {
            End::Closed { clean: true } => close.clean += 1,
            End::Closed { clean: false } => close.unclean += 1,
            End::Dropped(failure) => count(&mut dropped, failure),
        }
    }
    (dropped, close)
}

/// Wait for every user task, each giving how its session ended and what it measured, which
/// goes to `absorb`; a task that panicked counts as dropped.
pub async fn join_users<T: 'static>(
    mut tasks: JoinSet<(End, T)>,
    mut absorb: impl FnMut(T),
) -> Vec<End> {
    let mut ends = Vec::with_capacity(tasks.len());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((end, measured)) => {
                ends.push(end);
                absorb(measured);
            }
            Err(e) => ends.push(End::Dropped(Failure::Protocol(format!("internal: {e}")))),
        }
    }
    ends
}

/// Wait for every task; a task that panicked counts as dropped.
pub async fn join_ends(mut tasks: JoinSet<End>) -> Vec<End> {
    let mut ends = Vec::with_capacity(tasks.len());
    while let Some(joined) = tasks.join_next().await {
        ends.push(
            joined.unwrap_or_else(|e| End::Dropped(Failure::Protocol(format!("internal: {e}")))),
        );
    }
    ends
}
