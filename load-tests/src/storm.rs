//! Scenario `login`: a login storm at stepped rates. Each step opens connections at its
//! target rate for a fixed time; every connection logs in (bind, presence) and closes at
//! once. Reports, per step, the achieved logins/s, latency percentiles and failures.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::conn::Failure;
use crate::ramp::{tally, timed_login, End, Plan};
use crate::report::{count, Distribution, LoginSummary, Outcome, StepSummary, StormSummary};
use crate::timeline::{note, rate, Progress, Recorder};

pub struct StormPlan {
    /// Target logins per second, one step each.
    pub rates: Vec<u32>,
    pub step: Duration,
}

/// What one connection of the storm did.
struct Attempt {
    login: Result<Duration, Failure>,
    /// When the login finished, from the start of its step.
    finished: Duration,
    end: Option<End>,
}

pub async fn run(plan: &Plan, storm: StormPlan) -> anyhow::Result<Outcome> {
    let recorder = Recorder::new();
    let progress = Progress::start("logins", recorder.clone());
    let permits = Arc::new(Semaphore::new(plan.concurrency));
    let mut steps = Vec::new();
    let mut all_failures = BTreeMap::new();
    let mut all_latencies = Vec::new();
    let mut ends = Vec::new();
    let mut serial = 0u64;
    let started = Instant::now();
    for &target_rate in &storm.rates {
        let attempts = u64::from(target_rate) * storm.step.as_secs();
        let interval = Duration::from_secs(1) / target_rate;
        let step_start = tokio::time::Instant::now();
        let mut tasks = JoinSet::new();
        for k in 0..attempts {
            tokio::time::sleep_until(step_start + interval * k as u32).await;
            // Never closed: this only waits for a slot, which lowers the achieved rate when
            // --concurrency logins are already in progress.
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let index = plan.first + (serial % u64::from(plan.users)) as u32;
            // A resource per connection: two sessions of one user never conflict.
            let resource = format!("lg{serial}");
            serial += 1;
            let target = plan.target.clone();
            let (timeout, grace, recorder) =
                (plan.login_timeout, plan.close_grace, recorder.clone());
            tasks.spawn(async move {
                let (result, took) = timed_login(&target, timeout, index, &resource).await;
                let finished = step_start.elapsed();
                drop(permit);
                match result {
                    Ok(conn) => {
                        recorder.ok(took);
                        let clean = conn.close(grace).await;
                        Attempt {
                            login: Ok(took),
                            finished,
                            end: Some(End::Closed { clean }),
                        }
                    }
                    Err(failure) => {
                        recorder.failed();
                        Attempt {
                            login: Err(failure),
                            finished,
                            end: None,
                        }
                    }
                }
            });
        }
        let mut step = StepBuilder::default();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(attempt) => {
                    step.last_finished = step.last_finished.max(attempt.finished);
                    match attempt.login {
                        Ok(took) => step.latencies_us.push(took.as_micros() as u64),
                        Err(failure) => count(&mut step.failures, failure),
                    }
                    ends.extend(attempt.end);
                }
                Err(e) => count(&mut step.failures, format!("internal: {e}")),
            }
        }
        for (reason, n) in &step.failures {
            *all_failures.entry(reason.clone()).or_default() += n;
        }
        all_latencies.extend_from_slice(&step.latencies_us);
        let summary = step.finish(target_rate, attempts, storm.step);
        note(&format!(
            "  step {target_rate}/s: {} ok, {} failed, achieved {:.0} logins/s, p99 {:.1} ms",
            summary.succeeded, summary.failed, summary.achieved_per_sec, summary.latency_ms.p99
        ));
        steps.push(summary);
    }
    progress.finish().await;
    let elapsed = started.elapsed();
    let succeeded = all_latencies.len() as u64;
    let (dropped, close) = tally(ends);
    Ok(Outcome {
        login: LoginSummary {
            succeeded,
            failed: all_failures.values().sum(),
            failures: all_failures,
            elapsed_secs: elapsed.as_secs_f64(),
            rate_per_sec: rate(succeeded, elapsed),
            latency_ms: Distribution::from_micros(all_latencies),
        },
        storm: Some(StormSummary {
            step_secs: storm.step.as_secs(),
            steps,
        }),
        timeline: recorder.series(),
        dropped,
        close,
        ..Outcome::default()
    })
}

#[derive(Default)]
struct StepBuilder {
    latencies_us: Vec<u64>,
    failures: BTreeMap<String, u64>,
    last_finished: Duration,
}

impl StepBuilder {
    /// The achieved rate is over the step's nominal length, or longer if its logins took
    /// longer to finish.
    fn finish(self, target_rate: u32, attempts: u64, step: Duration) -> StepSummary {
        let succeeded = self.latencies_us.len() as u64;
        let elapsed = self.last_finished.max(step);
        StepSummary {
            target_rate,
            attempts,
            succeeded,
            failed: self.failures.values().sum(),
            failures: self.failures,
            elapsed_secs: elapsed.as_secs_f64(),
            achieved_per_sec: rate(succeeded, elapsed),
            latency_ms: Distribution::from_micros(self.latencies_us),
        }
    }
}

/// `100,200,400` → the steps' target rates.
pub fn parse_rates(spec: &str) -> anyhow::Result<Vec<u32>> {
    let rates = spec
        .split(',')
        .map(str::trim)
        .map(|r| {
            r.parse::<u32>()
                .ok()
                .filter(|r| (1..=1_000_000).contains(r))
                .ok_or_else(|| {
                    anyhow::anyhow!("--rates: {r:?} is not a rate between 1 and 1000000")
                })
        })
        .collect::<anyhow::Result<Vec<u32>>>()?;
    anyhow::ensure!(rates.len() <= 100, "--rates: at most 100 steps");
    Ok(rates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rates("100, 200,400").unwrap(), [100, 200, 400]);
        assert!(parse_rates("").is_err());
        assert!(parse_rates("0").is_err());
        assert!(parse_rates("10,x").is_err());
        assert_eq!(parse_rates("200000").unwrap(), [200_000]);
        assert!(parse_rates("2000000").is_err());
    }

    #[test]
    fn step_rate_is_over_the_step_or_the_time_to_the_last_login() {
        let step = StepBuilder {
            latencies_us: vec![1000, 3000],
            failures: BTreeMap::from([("timeout".to_string(), 1)]),
            last_finished: Duration::from_millis(500),
        };
        let s = step.finish(10, 3, Duration::from_millis(250));
        assert_eq!((s.succeeded, s.failed, s.achieved_per_sec), (2, 1, 4.0));
        assert_eq!(s.latency_ms.p50, 1.0);
        let slow = StepBuilder {
            latencies_us: vec![1000; 4],
            failures: BTreeMap::new(),
            last_finished: Duration::from_millis(900),
        };
        assert_eq!(
            slow.finish(4, 4, Duration::from_secs(1)).achieved_per_sec,
            4.0
        );
    }
}
