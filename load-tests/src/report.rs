//! The run's summary: printed for people, written as JSON for scripts.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::timeline::Point;

#[derive(Debug, Serialize)]
pub struct Summary {
    pub scenario: &'static str,
    pub server: String,
    pub tls: String,
    pub mech: String,
    pub users: u32,
    #[serde(flatten)]
    pub generator: GeneratorCpu,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The generator's own CPU over the whole scenario (logins, the measured part, closing).
#[derive(Debug, Default, Serialize)]
pub struct GeneratorCpu {
    /// User plus system CPU time of the generator process.
    pub generator_cpu_secs: f64,
    pub generator_wall_secs: f64,
    /// `generator_cpu_secs / generator_wall_secs × 100`: 100 is one core busy.
    pub generator_cpu_percent: f64,
    /// Cores the generator may use (its runtime's worker threads): the percentage's ceiling
    /// is 100 × this.
    pub generator_cores: usize,
}

/// What a scenario measured.
#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    pub login: LoginSummary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<IdleSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat: Option<ChatSummary>,
    /// Scenario `login`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storm: Option<StormSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence: Option<PresenceSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub churn: Option<ChurnSummary>,
    /// Sessions lost after login (server closed, stream error...), by reason.
    pub dropped: BTreeMap<String, u64>,
    pub close: CloseSummary,
    /// Per second of the measured phase: logins (`login`, `churn`) or deliveries
    /// (`presence`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<Point>,
}

impl Outcome {
    /// Only the logins and how the sessions ended: for a scenario that reports its own
    /// figures in a part of the summary of its own.
    pub fn sessions(
        login: LoginSummary,
        dropped: BTreeMap<String, u64>,
        close: CloseSummary,
    ) -> Outcome {
        Outcome {
            login,
            dropped,
            close,
            ..Outcome::default()
        }
    }
}

#[derive(Debug, Serialize)]
pub struct StormSummary {
    pub step_secs: u64,
    pub steps: Vec<StepSummary>,
}

#[derive(Debug, Serialize)]
pub struct StepSummary {
    pub target_rate: u32,
    pub attempts: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    /// From the step's start to its last login finishing.
    pub elapsed_secs: f64,
    pub achieved_per_sec: f64,
    pub latency_ms: Distribution,
}

#[derive(Debug, Serialize)]
pub struct PresenceSummary {
    pub group_size: u32,
    /// `protocol` (subscribed by the run) or `provisioned` (imported before the run).
    pub rosters: &'static str,
    pub changes: u32,
    pub interval_ms: u64,
    /// Users whose roster showed every contact of their group with subscription `both`.
    pub ready: u64,
    /// Users still waiting for a subscription when the setup time ran out.
    pub not_ready: u64,
    pub setup_secs: f64,
    /// Presence changes sent.
    pub sent: u64,
    /// Deliveries expected: each change times the sender's logged-in contacts.
    pub expected: u64,
    /// Distinct (sender, change) deliveries to contacts of the sender's group.
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub elapsed_secs: f64,
    pub deliveries_per_sec: f64,
    /// From sending the change to its receipt at each contact.
    pub latency_ms: Distribution,
    /// Bytes of XML the sessions received during the exchange (after TLS), for inactive
    /// sessions including what the server flushed after their final `<active/>`.
    pub bytes_received: u64,
    /// `--csi-inactive-percent`: sessions that told the server they were inactive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csi: Option<CsiSummary>,
}

/// `presence --csi-inactive-percent`: what inactive sessions (XEP-0352) received compared
/// with active ones. Deliveries to inactive sessions are not in `expected`/`delivered`
/// (the server holds and coalesces them); they are counted here.
#[derive(Debug, Serialize)]
pub struct CsiSummary {
    pub inactive_percent: u32,
    pub inactive_sessions: u64,
    pub active_sessions: u64,
    pub bytes_received_active: u64,
    pub bytes_received_inactive: u64,
    /// Mean bytes received per active session during the exchange.
    pub bytes_per_active_session: f64,
    /// Mean bytes received per inactive session during the exchange.
    pub bytes_per_inactive_session: f64,
    /// Presence changes that reached inactive sessions: while inactive (the server flushed
    /// what it held: a bound was reached) and after the `<active/>` each inactive session
    /// sends at the end (the latest change per contact, as held).
    pub delivered_to_inactive: u64,
}

#[derive(Debug, Serialize)]
pub struct ChurnSummary {
    pub cycles: u32,
    pub pause_min_ms: u64,
    pub pause_max_ms: u64,
    pub drop_percent: u8,
    /// Logins after a user's first (the first counts in `login` too).
    pub reconnects: u64,
    pub elapsed_secs: f64,
    pub logins_per_sec: f64,
    pub reconnects_per_sec: f64,
    /// Sessions ended by dropping the TCP connection without closing the stream.
    pub abrupt: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct LoginSummary {
    pub succeeded: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    /// From the first connect to the last login finishing.
    pub elapsed_secs: f64,
    pub rate_per_sec: f64,
    /// Connect to bound-and-present, successful logins only.
    pub latency_ms: Distribution,
}

#[derive(Debug, Serialize)]
pub struct IdleSummary {
    pub hold_secs: u64,
    /// Sessions still open at the end of the hold.
    pub sessions: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss: Option<RssSummary>,
}

#[derive(Debug, Serialize)]
pub struct RssSummary {
    pub server_pid: u32,
    pub before_kib: u64,
    pub after_login_kib: u64,
    /// At the end of the hold, with all sessions open: the "after" figure.
    pub after_kib: u64,
    /// (after - before) / sessions.
    pub per_session_kib: f64,
}

#[derive(Debug, Serialize)]
pub struct ChatSummary {
    pub messages_per_user: u32,
    pub interval_ms: u64,
    /// Length of every message body.
    pub body_bytes: usize,
    /// Recipients were chosen among users on other servers only.
    pub cross_node_only: bool,
    pub sent: u64,
    /// Sent to a user connected to another `--server` than the sender.
    pub cross_node: u64,
    /// Distinct messages delivered.
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// Returned to the sender as `type='error'`.
    pub bounced: u64,
    pub elapsed_secs: f64,
    /// From the start of the exchange to the last distinct message received.
    pub last_delivery_secs: f64,
    /// `received` over `last_delivery_secs`.
    pub received_per_sec: f64,
    pub latency_ms: Distribution,
    /// The generator's CPU time over the exchange (sending, receiving, waiting for the last
    /// deliveries; logins and closing excluded).
    pub generator_cpu_secs: f64,
    /// `generator_cpu_secs` per delivered message (`received`), in µs: each delivery cost
    /// the generator one send and one receive.
    pub generator_cpu_us_per_message: f64,
    /// Stepped chat (`chat --rates`): one entry per offered rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stepped: Option<ChatStepsSummary>,
    /// `chat --carbons`: each user's second session with carbons (XEP-0280) enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub carbons: Option<CarbonsSummary>,
    /// `chat --flaky`: clients that dropped their connection and resumed (XEP-0198).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flaky: Option<FlakySummary>,
    /// `--server-pid`: the server's CPU time over the exchange.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu: Option<ServerCpuSummary>,
}

/// `chat --carbons`: every delivered message should give two carbons, a `<sent/>` one to
/// the sender's second session and a `<received/>` one to the recipient's.
#[derive(Debug, Serialize)]
pub struct CarbonsSummary {
    /// Second sessions logged in with carbons enabled.
    pub sessions: u64,
    pub sent_carbons: u64,
    pub received_carbons: u64,
    /// Two per message sent (when every user has its second session).
    pub expected: u64,
}

/// `chat --flaky`: the flaky clients' drops and resumptions. `lost` and `duplicates` of the
/// chat summary say whether the server kept its XEP-0198 promise across them.
#[derive(Debug, Serialize)]
pub struct FlakySummary {
    /// Clients that dropped their connection now and then.
    pub clients: u64,
    /// Connections dropped without closing the stream.
    pub drops: u64,
    /// Sessions resumed, and how many of them on another server than the one dropped.
    pub resumed: u64,
    pub resumed_elsewhere: u64,
    /// Resumptions refused or failed (the client's session then ended).
    pub failed: u64,
    /// Messages of ours the server had not acknowledged, sent again after a resumption.
    pub resent: u64,
    /// Connect, TLS, authentication and `<resumed/>`, per resumption.
    pub resume_ms: Distribution,
}

/// The server's CPU time (utime + stime of `/proc/PID/stat`) over the exchange.
#[derive(Debug, Serialize)]
pub struct ServerCpuSummary {
    pub server_pid: u32,
    pub cpu_secs: f64,
    /// `cpu_secs` per distinct delivered message, in µs.
    pub us_per_message: f64,
}

/// `chat --rates`: aggregate offered rates in steps, each followed by a bounded drain.
#[derive(Debug, Serialize)]
pub struct ChatStepsSummary {
    pub step_secs: u64,
    /// Longest wait after a step for its messages still in flight.
    pub drain_secs: u64,
    /// A step is sustained if its p99 is below this, nothing was lost or bounced, and at
    /// least 90 % of its target was offered.
    pub p99_limit_ms: f64,
    pub steps: Vec<ChatStepSummary>,
    /// Target rate of the highest sustained step (0 if none): the sustainable rate.
    pub sustainable_rate: u32,
    /// Delivered messages/s measured in that step.
    pub sustainable_delivered_per_sec: f64,
}

#[derive(Debug, Serialize)]
pub struct ChatStepSummary {
    /// Aggregate messages/s wanted over all users.
    pub target_rate: u32,
    pub sent: u64,
    /// `sent` over the step's length.
    pub offered_per_sec: f64,
    /// Distinct messages of this step delivered before the end of its drain.
    pub received: u64,
    /// `received` over the time from the step's start to its last delivery (at least the
    /// step's length).
    pub delivered_per_sec: f64,
    /// Not delivered by the end of the drain (includes `late`).
    pub lost: u64,
    /// Delivered after the drain (counted lost, not in the latency).
    pub late: u64,
    pub duplicates: u64,
    pub bounced: u64,
    /// Time waited after the step until everything was accounted for (or the drain ran out).
    pub drain_waited_secs: f64,
    pub latency_ms: Distribution,
    /// The generator's CPU time while the step offered its rate (drain excluded).
    pub generator_cpu_secs: f64,
    /// `generator_cpu_secs` over the step's wall time, × 100 (100: one core busy).
    pub generator_cpu_percent: f64,
    /// With `--server-pid`: the server's CPU time from the step's start to the end of its
    /// drain, that over the delivered messages, and over the step's and drain's wall time
    /// (× 100: 100 is one core busy).
    pub server_cpu_secs: Option<f64>,
    pub server_cpu_us_per_message: Option<f64>,
    pub server_cpu_percent: Option<f64>,
    /// With `--archive-metrics`: messages of the step the archive did not keep (a step with
    /// any is not sustained).
    pub not_archived: Option<u64>,
    pub sustained: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct CloseSummary {
    /// The server answered our `</stream:stream>` with its own.
    pub clean: u64,
    pub unclean: u64,
}

/// Percentiles of a set of durations, in milliseconds.
#[derive(Debug, Default, Serialize)]
pub struct Distribution {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Distribution {
    /// From durations in microseconds (sorted here).
    pub fn from_micros(mut values: Vec<u64>) -> Distribution {
        values.sort_unstable();
        let at = |p: f64| -> f64 {
            if values.is_empty() {
                return 0.0;
            }
            // Nearest rank.
            let rank = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len());
            values[rank - 1] as f64 / 1000.0
        };
        Distribution {
            count: values.len() as u64,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: at(1.0),
        }
    }

    pub(crate) fn line(&self) -> String {
        format!(
            "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n={})",
            self.p50, self.p90, self.p99, self.max, self.count
        )
    }
}

/// Add one occurrence of `reason`.
pub fn count(map: &mut BTreeMap<String, u64>, reason: impl ToString) {
    *map.entry(reason.to_string()).or_default() += 1;
}

pub(crate) fn reasons(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    let parts: Vec<String> = map.iter().map(|(r, n)| format!("{n} × {r}")).collect();
    parts.join(", ")
}

impl Summary {
    pub fn print(&self) {
        println!(
            "scenario {} against {} (tls {}, {}), {} users",
            self.scenario, self.server, self.tls, self.mech, self.users
        );
        let o = &self.outcome;
        let l = &o.login;
        println!(
            "logins: {} ok, {} failed in {:.2} s = {:.0} logins/s",
            l.succeeded, l.failed, l.elapsed_secs, l.rate_per_sec
        );
        println!("login latency: {}", l.latency_ms.line());
        println!("login failures: {}", reasons(&l.failures));
        if let Some(idle) = &o.idle {
            println!("sessions: {} held for {} s", idle.sessions, idle.hold_secs);
            match &idle.rss {
                Some(r) => {
                    println!(
                        "server RSS (pid {}): before {} KiB, after login {} KiB, after hold {} KiB",
                        r.server_pid, r.before_kib, r.after_login_kib, r.after_kib
                    );
                    println!("per session: {:.1} KiB", r.per_session_kib);
                }
                None => println!("server RSS: not measured (pass --server-pid)"),
            }
        }
        if let Some(c) = &o.chat {
            println!(
                "messages: {} sent ({} to another server), {} received, {} lost, {} duplicates, {} bounced in {:.2} s; last received at {:.2} s = {:.0} received/s",
                c.sent, c.cross_node, c.received, c.lost, c.duplicates, c.bounced, c.elapsed_secs,
                c.last_delivery_secs, c.received_per_sec
            );
            println!("message latency: {}", c.latency_ms.line());
            println!(
                "message bodies: {} bytes; generator CPU over the exchange: {:.2} s = {:.1} µs per delivered message",
                c.body_bytes, c.generator_cpu_secs, c.generator_cpu_us_per_message
            );
            if let Some(k) = &c.carbons {
                println!(
                    "carbons: {} sessions with carbons enabled; {} sent and {} received carbons of {} expected",
                    k.sessions, k.sent_carbons, k.received_carbons, k.expected
                );
            }
            if let Some(f) = &c.flaky {
                println!(
                    "flaky: {} clients dropped {} connections; {} resumed ({} on another server), {} failed; {} messages sent again",
                    f.clients, f.drops, f.resumed, f.resumed_elsewhere, f.failed, f.resent
                );
                println!("resumption (connect to <resumed/>): {}", f.resume_ms.line());
            }
            match &c.server_cpu {
                Some(s) => println!(
                    "server CPU (pid {}): {:.2} s over the exchange = {:.1} µs per delivered message",
                    s.server_pid, s.cpu_secs, s.us_per_message
                ),
                None => println!("server CPU: not measured (pass --server-pid)"),
            }
            if let Some(st) = &c.stepped {
                for p in &st.steps {
                    println!(
                        "step {}/s for {} s: offered {:.0}/s, delivered {:.0}/s, {} lost ({} late), {} duplicates, {} bounced, drain {:.2} s; {}, p99.9 {:.2} ms; gen CPU {:.0} %{}; {}",
                        p.target_rate, st.step_secs, p.offered_per_sec, p.delivered_per_sec,
                        p.lost, p.late, p.duplicates, p.bounced, p.drain_waited_secs,
                        p.latency_ms.line(), p.latency_ms.p999, p.generator_cpu_percent,
                        match (p.server_cpu_percent, p.server_cpu_us_per_message) {
                            (Some(pc), Some(us)) => format!("; server CPU {pc:.0} %, {us:.1} µs/message"),
                            _ => String::new(),
                        },
                        if p.sustained { "sustained" } else { "NOT sustained" }
                    );
                }
                println!(
                    "sustainable rate (p99 < {} ms, no loss): {} messages/s offered ({:.0} delivered/s)",
                    st.p99_limit_ms, st.sustainable_rate, st.sustainable_delivered_per_sec
                );
            }
        }
        if let Some(st) = &o.storm {
            for p in &st.steps {
                println!(
                    "step {}/s for {} s: {} ok, {} failed, achieved {:.1} logins/s; {}; failures: {}",
                    p.target_rate,
                    st.step_secs,
                    p.succeeded,
                    p.failed,
                    p.achieved_per_sec,
                    p.latency_ms.line(),
                    reasons(&p.failures)
                );
            }
        }
        if let Some(p) = &o.presence {
            println!(
                "subscriptions ({} rosters): {} users ready, {} not ready after {:.2} s (groups of {})",
                p.rosters, p.ready, p.not_ready, p.setup_secs, p.group_size
            );
            println!(
                "presence: {} changes sent, {} of {} deliveries ({} lost, {} duplicates) in {:.2} s = {:.0} deliveries/s",
                p.sent, p.delivered, p.expected, p.lost, p.duplicates, p.elapsed_secs,
                p.deliveries_per_sec
            );
            println!("presence latency: {}", p.latency_ms.line());
            println!("bytes received during the exchange: {}", p.bytes_received);
            if let Some(c) = &p.csi {
                println!(
                    "csi: {} % inactive ({} inactive, {} active sessions); bytes per session: {:.0} inactive vs {:.0} active; {} changes reached inactive sessions",
                    c.inactive_percent, c.inactive_sessions, c.active_sessions,
                    c.bytes_per_inactive_session, c.bytes_per_active_session, c.delivered_to_inactive
                );
            }
        }
        if let Some(c) = &o.churn {
            println!(
                "churn: {} reconnects in {:.2} s = {:.1} reconnects/s ({:.1} logins/s), {} abrupt drops",
                c.reconnects, c.elapsed_secs, c.reconnects_per_sec, c.logins_per_sec, c.abrupt
            );
        }
        println!("dropped after login: {}", reasons(&o.dropped));
        println!(
            "close: {} clean, {} unclean",
            o.close.clean, o.close.unclean
        );
        let g = &self.generator;
        println!(
            "generator CPU: {:.2} s over {:.2} s = {:.0} % of one core (at most {} % on {} cores)",
            g.generator_cpu_secs,
            g.generator_wall_secs,
            g.generator_cpu_percent,
            g.generator_cores * 100,
            g.generator_cores
        );
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let d = Distribution::from_micros((1..=100).rev().map(|ms| ms * 1000).collect());
        assert_eq!(
            (d.count, d.p50, d.p90, d.p99, d.max),
            (100, 50.0, 90.0, 99.0, 100.0)
        );
        let one = Distribution::from_micros(vec![1500]);
        assert_eq!((one.p50, one.p99), (1.5, 1.5));
        assert_eq!(Distribution::from_micros(Vec::new()).count, 0);
    }

    #[test]
    fn reasons_are_counted() {
        let mut m = BTreeMap::new();
        count(&mut m, "timeout");
        count(&mut m, "timeout");
        count(&mut m, "closed by server");
        assert_eq!(reasons(&m), "1 × closed by server, 2 × timeout");
    }
}
