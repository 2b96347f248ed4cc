//! Scenario `churn`: users that come and go like mobile clients. Each user logs in, stays
//! online for a random pause, disconnects (closing the stream, or with `--drop-percent`
//! just dropping the TCP connection), stays away for another random pause, and repeats for
//! `--cycles` cycles or until `--duration-secs` has passed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::ramp::{tally, timed_login, End, Plan};
use crate::report::{count, ChurnSummary, Distribution, LoginSummary, Outcome};
use crate::timeline::{rate, Progress, Recorder};

pub struct ChurnPlan {
    pub cycles: u32,
    /// Online and offline pauses are uniform in `pause_min..=pause_max`.
    pub pause_min: Duration,
    pub pause_max: Duration,
    /// Share of disconnects that drop the TCP connection instead of closing the stream.
    pub drop_percent: u8,
    /// No login starts after this.
    pub duration: Duration,
}

#[derive(Default)]
struct UserResult {
    latencies_us: Vec<u64>,
    failures: BTreeMap<String, u64>,
    reconnects: u64,
    abrupt: u64,
    ends: Vec<End>,
}

struct Shared {
    plan: Plan,
    churn: ChurnPlan,
    permits: Semaphore,
    recorder: Arc<Recorder>,
    deadline: tokio::time::Instant,
}

pub async fn run(plan: Plan, churn: ChurnPlan) -> anyhow::Result<Outcome> {
    let recorder = Recorder::new();
    let progress = Progress::start("logins", recorder.clone());
    let started = Instant::now();
    let shared = Arc::new(Shared {
        permits: Semaphore::new(plan.concurrency),
        deadline: tokio::time::Instant::now() + churn.duration,
        plan,
        churn,
        recorder: recorder.clone(),
    });
    let mut tasks = JoinSet::new();
    for index in shared.plan.first..shared.plan.first + shared.plan.users {
        tasks.spawn(user(index, shared.clone()));
    }
    let mut total = UserResult::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(r) => {
                total.latencies_us.extend(r.latencies_us);
                for (reason, n) in r.failures {
                    *total.failures.entry(reason).or_default() += n;
                }
                total.reconnects += r.reconnects;
                total.abrupt += r.abrupt;
                total.ends.extend(r.ends);
            }
            Err(e) => count(&mut total.failures, format!("internal: {e}")),
        }
    }
    progress.finish().await;
    let elapsed = started.elapsed();
    let logins = total.latencies_us.len() as u64;
    let (dropped, close) = tally(total.ends);
    let c = &shared.churn;
    Ok(Outcome {
        login: LoginSummary {
            succeeded: logins,
            failed: total.failures.values().sum(),
            failures: total.failures,
            elapsed_secs: elapsed.as_secs_f64(),
            rate_per_sec: rate(logins, elapsed),
            latency_ms: Distribution::from_micros(total.latencies_us),
        },
        churn: Some(ChurnSummary {
            cycles: c.cycles,
            pause_min_ms: c.pause_min.as_millis() as u64,
            pause_max_ms: c.pause_max.as_millis() as u64,
            drop_percent: c.drop_percent,
            reconnects: total.reconnects,
            elapsed_secs: elapsed.as_secs_f64(),
            logins_per_sec: rate(logins, elapsed),
            reconnects_per_sec: rate(total.reconnects, elapsed),
            abrupt: total.abrupt,
        }),
        timeline: recorder.series(),
        dropped,
        close,
        ..Outcome::default()
    })
}

fn pause(c: &ChurnPlan) -> Duration {
    let (min, max) = (
        c.pause_min.as_micros() as u64,
        c.pause_max.as_micros() as u64,
    );
    Duration::from_micros(rand::thread_rng().gen_range(min..=max))
}

/// Sleep for `d`, or until the deadline if that comes first.
async fn sleep_bounded(d: Duration, deadline: tokio::time::Instant) {
    tokio::time::sleep_until((tokio::time::Instant::now() + d).min(deadline)).await;
}

async fn user(index: u32, shared: Arc<Shared>) -> UserResult {
    let (plan, churn) = (&shared.plan, &shared.churn);
    let mut result = UserResult::default();
    let mut logged_in_before = false;
    // Start at a random point of a pause, so the users do not move in lockstep.
    sleep_bounded(pause(churn), shared.deadline).await;
    for cycle in 0..churn.cycles {
        if tokio::time::Instant::now() >= shared.deadline {
            break;
        }
        let Ok(permit) = shared.permits.acquire().await else {
            break;
        };
        let resource = format!("lg{cycle}");
        let (login, took) = timed_login(&plan.target, plan.login_timeout, index, &resource).await;
        drop(permit);
        match login {
            Ok(mut conn) => {
                shared.recorder.ok(took);
                result.latencies_us.push(took.as_micros() as u64);
                if logged_in_before {
                    result.reconnects += 1;
                }
                logged_in_before = true;
                let online = tokio::time::sleep_until(
                    (tokio::time::Instant::now() + pause(churn)).min(shared.deadline),
                );
                tokio::pin!(online);
                let lost = loop {
                    tokio::select! {
                        _ = &mut online => break None,
                        el = conn.next_element() => if let Err(failure) = el {
                            break Some(failure);
                        }
                    }
                };
                let abrupt = rand::thread_rng().gen_range(0..100) < churn.drop_percent;
                match lost {
                    Some(failure) => result.ends.push(End::Dropped(failure)),
                    None if abrupt => {
                        // Like a phone losing its network: no </stream:stream>, just gone.
                        drop(conn);
                        result.abrupt += 1;
                    }
                    None => {
                        let clean = conn.close(plan.close_grace).await;
                        result.ends.push(End::Closed { clean });
                    }
                }
            }
            Err(failure) => {
                shared.recorder.failed();
                count(&mut result.failures, failure);
            }
        }
        if cycle + 1 < churn.cycles {
            sleep_bounded(pause(churn), shared.deadline).await;
        }
    }
    result
}
