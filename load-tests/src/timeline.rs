//! Events over time: successes (with their latency) and failures in one-second buckets, for
//! the live progress line, the per-second series in the summary and the plots.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::report::Distribution;

/// Width of a bucket of the series.
const BUCKET: Duration = Duration::from_secs(1);
/// How often the progress line is redrawn.
const REDRAW: Duration = Duration::from_millis(500);

/// Counts events as they happen; shared by the tasks of one scenario.
pub struct Recorder {
    start: Instant,
    ok: AtomicU64,
    failed: AtomicU64,
    buckets: Mutex<Vec<Bucket>>,
}

#[derive(Default)]
struct Bucket {
    ok: u64,
    failed: u64,
    latencies_us: Vec<u64>,
}

/// One second of a run.
#[derive(Debug, Serialize)]
pub struct Point {
    /// Start of the second, from the start of the scenario's measured phase.
    pub t: f64,
    pub ok: u64,
    pub failed: u64,
    /// Latency percentiles of this second's successes, in milliseconds (0 if none).
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            start: Instant::now(),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            buckets: Mutex::new(Vec::new()),
        })
    }

    fn bucket<R>(&self, f: impl FnOnce(&mut Bucket) -> R) -> R {
        let i = (self.start.elapsed().as_micros() / BUCKET.as_micros()) as usize;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() <= i {
            buckets.resize_with(i + 1, Bucket::default);
        }
        f(&mut buckets[i])
    }

    pub fn ok(&self, latency: Duration) {
        self.ok.fetch_add(1, Ordering::Relaxed);
        self.bucket(|b| {
            b.ok += 1;
            b.latencies_us.push(latency.as_micros() as u64);
        });
    }

    /// A success without a latency (e.g. a presence change sent): counted, not in the
    /// percentiles.
    pub fn event(&self) {
        self.ok.fetch_add(1, Ordering::Relaxed);
        self.bucket(|b| b.ok += 1);
    }

    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.bucket(|b| b.failed += 1);
    }

    pub fn ok_count(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// The per-second series so far.
    pub fn series(&self) -> Vec<Point> {
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let d = Distribution::from_micros(b.latencies_us.clone());
                Point {
                    t: (i as u64 * BUCKET.as_secs()) as f64,
                    ok: b.ok,
                    failed: b.failed,
                    p50_ms: d.p50,
                    p99_ms: d.p99,
                }
            })
            .collect()
    }
}

/// More to show on the progress line than the recorder's counts, e.g. ", 1990 online".
pub type Extra = Box<dyn Fn() -> String + Send + Sync>;

/// A `\r` progress line on stderr, redrawn while the run lasts; only on a terminal.
pub struct Progress {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// `what` names the counted events, e.g. "logins" or "deliveries".
    pub fn start(what: &'static str, recorder: Arc<Recorder>) -> Progress {
        Progress::start_with(what, recorder, Box::new(String::new))
    }

    /// [`Progress::start`], with `extra()` appended to the line.
    pub fn start_with(what: &'static str, recorder: Arc<Recorder>, extra: Extra) -> Progress {
        let (stop, mut stopped) = watch::channel(false);
        let task = std::io::stderr().is_terminal().then(|| {
            tokio::spawn(async move {
                let mut last = (0, recorder.elapsed());
                loop {
                    tokio::select! {
                        _ = stopped.wait_for(|s| *s) => break,
                        _ = tokio::time::sleep(REDRAW) => {}
                    }
                    let (ok, failed) = (
                        recorder.ok.load(Ordering::Relaxed),
                        recorder.failed.load(Ordering::Relaxed),
                    );
                    let now = recorder.elapsed();
                    let recent = rate(ok - last.0, now - last.1);
                    last = (ok, now);
                    let line = format!(
                        "  {:.1} s: {ok} {what} ({:.0}/s overall, {recent:.0}/s now), {failed} failed{}",
                        now.as_secs_f64(),
                        rate(ok, now),
                        extra(),
                    );
                    let mut err = std::io::stderr().lock();
                    let _ = write!(err, "\r{line:<78}");
                    let _ = err.flush();
                }
                let _ = write!(std::io::stderr().lock(), "\r{:78}\r", "");
            })
        });
        Progress { stop, task }
    }

    /// Clear the line (waits for the redraw task to finish).
    pub async fn finish(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// A line on stderr that does not run into the progress line: on a terminal, the progress
/// line is cleared first (and redrawn at its next tick).
pub fn note(line: &str) {
    let mut err = std::io::stderr().lock();
    if std::io::stderr().is_terminal() {
        let _ = write!(err, "\r{:78}\r", "");
    }
    let _ = writeln!(err, "{line}");
}

/// Events per second.
pub fn rate(events: u64, over: Duration) -> f64 {
    let secs = over.as_secs_f64();
    if secs > 0.0 {
        events as f64 / secs
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_rates() {
        let rec = Recorder::new();
        rec.ok(Duration::from_millis(2));
        rec.ok(Duration::from_millis(4));
        rec.failed();
        rec.event();
        let series = rec.series();
        assert_eq!(series.len(), 1);
        assert_eq!((series[0].ok, series[0].failed), (3, 1));
        assert_eq!((series[0].p50_ms, series[0].p99_ms), (2.0, 4.0));
        assert_eq!(rec.ok_count(), 3);
        assert_eq!(rate(10, Duration::from_secs(2)), 5.0);
        assert_eq!(rate(10, Duration::ZERO), 0.0);
    }
}
