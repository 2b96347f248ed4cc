//! The `mixed` scenario's own part of the summary: its stdout lines, its JSON (under `mixed`)
//! and its sections and charts in `report.md`.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::markdown::{failures, ms, table};
use crate::report::{reasons, Distribution};
use crate::svg::{line_chart, Labels, Series};

#[derive(Debug, Serialize)]
pub struct MixedSummary {
    #[serde(flatten)]
    pub schedule: Schedule,
    /// Users logged in at the start (the run's users and recipients).
    pub users: u64,
    /// From the first event to the end of the drain.
    pub elapsed_secs: f64,
    pub drain_waited_secs: f64,
    pub messages: Messages,
    pub presences: Presences,
    pub reconnects: Reconnects,
    /// Sessions online.
    pub online: Online,
    /// The generator's CPU time from the first event to the end of the drain (logins
    /// again, presence changes and closes included).
    pub generator_cpu_secs: f64,
    /// `generator_cpu_secs` per delivered message, in µs.
    pub generator_cpu_us_per_message: f64,
    pub timeline: Vec<MixedPoint>,
}

/// What every user does, on average.
#[derive(Debug, Serialize)]
pub struct Schedule {
    pub duration_secs: u64,
    pub drain_secs: u64,
    /// Mean gap between two events of one user; `null`: that kind of event is off.
    pub message_interval_secs: Option<f64>,
    pub presence_interval_secs: Option<f64>,
    pub reconnect_interval_secs: Option<f64>,
    pub body_bytes: usize,
    pub drop_percent: u8,
    /// Range of the pause away before logging in again.
    pub pause_min_ms: u64,
    pub pause_max_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct Messages {
    pub sent: u64,
    /// Distinct messages of this run received by the end of the drain (late ones included).
    pub delivered: u64,
    /// Delivered with a delay stamp, or sent before the recipient's current session
    /// began: stored while the recipient was away.
    pub delivered_late: u64,
    /// `sent - delivered - bounced`.
    pub lost: u64,
    pub duplicates: u64,
    pub bounced: u64,
    /// Messages of other runs (or other tools) received.
    pub stale: u64,
    /// `delivered` over the time from the first event to the last delivery.
    pub delivered_per_sec: f64,
    /// Sending to receipt, on-time deliveries only.
    pub latency_ms: Distribution,
    /// Sending to receipt of the late ones (mostly the recipient's time away).
    pub late_latency_ms: Distribution,
}

#[derive(Debug, Serialize)]
pub struct Presences {
    /// Presence changes sent (away and available in turn).
    pub sent: u64,
}

#[derive(Debug, Serialize)]
pub struct Reconnects {
    /// Logins after a disconnect that succeeded.
    pub ok: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    /// Users that failed every login attempt after a disconnect and stayed away.
    pub gave_up: u64,
    /// Disconnects that dropped the TCP connection without closing the stream.
    pub abrupt: u64,
    pub per_sec: f64,
    /// Connect to bound-and-present of the logins after a disconnect.
    pub latency_ms: Distribution,
}

#[derive(Debug, Serialize)]
pub struct Online {
    pub start: u64,
    pub min: u64,
    pub max: u64,
    /// At the end of the drain.
    pub end: u64,
}

/// One second of a `mixed` run.
#[derive(Debug, Serialize)]
pub struct MixedPoint {
    /// Start of the second, from the first event.
    pub t: f64,
    /// Distinct messages delivered (late ones included).
    pub delivered: u64,
    pub bounced: u64,
    /// Latency percentiles of this second's on-time deliveries, in ms (0 if none).
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub presences: u64,
    pub logins_ok: u64,
    pub logins_failed: u64,
    /// Sessions online at the end of the second.
    pub online: u64,
}

fn every(secs: Option<f64>) -> String {
    secs.map_or("never".into(), |s| format!("every {s} s"))
}

fn percentiles(d: &Distribution) -> String {
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms (n={})",
        d.p50, d.p99, d.p999, d.max, d.count
    )
}

pub fn print(m: &MixedSummary) {
    let s = &m.schedule;
    println!(
        "mixed: {} users for {} s, each on average: a message {}, a presence change {}, a reconnect {} ({} % dropped, away {}–{} ms); {:.2} s with the drain ({:.2} s)",
        m.users, s.duration_secs, every(s.message_interval_secs),
        every(s.presence_interval_secs), every(s.reconnect_interval_secs), s.drop_percent,
        s.pause_min_ms, s.pause_max_ms, m.elapsed_secs, m.drain_waited_secs
    );
    let g = &m.messages;
    println!(
        "messages ({}-byte bodies): {} sent, {} delivered ({} late), {} lost, {} duplicates, {} bounced, {} stale = {:.1} delivered/s",
        s.body_bytes, g.sent, g.delivered, g.delivered_late, g.lost, g.duplicates, g.bounced,
        g.stale, g.delivered_per_sec
    );
    println!("message latency (on time): {}", percentiles(&g.latency_ms));
    println!(
        "message latency (late): {}",
        percentiles(&g.late_latency_ms)
    );
    println!("presence changes: {} sent", m.presences.sent);
    let r = &m.reconnects;
    println!(
        "reconnects: {} ok, {} failed ({}), {} gave up, {} abrupt drops = {:.1} reconnects/s; login {}",
        r.ok,
        r.failed,
        reasons(&r.failures),
        r.gave_up,
        r.abrupt,
        r.per_sec,
        percentiles(&r.latency_ms)
    );
    let o = &m.online;
    println!(
        "sessions online: {} at the start, {}–{}, {} at the end",
        o.start, o.min, o.max, o.end
    );
    println!(
        "generator CPU over the events and drain: {:.2} s = {:.1} µs per delivered message",
        m.generator_cpu_secs, m.generator_cpu_us_per_message
    );
}

/// The scenario's sections of `report.md`.
pub fn sections(m: &MixedSummary) -> String {
    let s = &m.schedule;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Mixed traffic\n\n{} users for {} s; each on average sends a message ({} bytes) {}, \
         changes its presence {} and reconnects {} ({} % of them dropping the TCP \
         connection, away {}–{} ms), at exponential intervals. Then at most {} s for the \
         messages in flight (waited {:.2} s). Late: stored while the recipient was away and \
         delivered when it was back. Latency in milliseconds.\n",
        m.users,
        s.duration_secs,
        s.body_bytes,
        every(s.message_interval_secs),
        every(s.presence_interval_secs),
        every(s.reconnect_interval_secs),
        s.drop_percent,
        s.pause_min_ms,
        s.pause_max_ms,
        s.drain_secs,
        m.drain_waited_secs
    );
    let g = &m.messages;
    table(
        &mut out,
        &[
            "sent",
            "delivered",
            "late",
            "lost",
            "duplicates",
            "bounced",
            "stale",
            "delivered/s",
            "p50",
            "p99",
            "p99.9",
            "max",
            "late p50",
            "late p99",
        ],
        &[vec![
            g.sent.to_string(),
            g.delivered.to_string(),
            g.delivered_late.to_string(),
            g.lost.to_string(),
            g.duplicates.to_string(),
            g.bounced.to_string(),
            g.stale.to_string(),
            format!("{:.1}", g.delivered_per_sec),
            ms(g.latency_ms.p50),
            ms(g.latency_ms.p99),
            ms(g.latency_ms.p999),
            ms(g.latency_ms.max),
            ms(g.late_latency_ms.p50),
            ms(g.late_latency_ms.p99),
        ]],
    );
    let r = &m.reconnects;
    out.push_str("### Presence changes, reconnects and sessions\n\n");
    table(
        &mut out,
        &[
            "presence changes",
            "reconnects ok",
            "failed",
            "gave up",
            "abrupt drops",
            "login p50",
            "login p99",
            "failures",
            "online min–max",
            "online at end",
            "gen CPU (s)",
            "gen CPU µs/message",
        ],
        &[vec![
            m.presences.sent.to_string(),
            r.ok.to_string(),
            r.failed.to_string(),
            r.gave_up.to_string(),
            r.abrupt.to_string(),
            ms(r.latency_ms.p50),
            ms(r.latency_ms.p99),
            failures(&r.failures),
            format!("{}–{}", m.online.min, m.online.max),
            m.online.end.to_string(),
            format!("{:.2}", m.generator_cpu_secs),
            format!("{:.1}", m.generator_cpu_us_per_message),
        ]],
    );
    out
}

/// The scenario's charts, as (file name, SVG).
pub fn charts(m: &MixedSummary) -> Vec<(&'static str, String)> {
    if m.timeline.is_empty() {
        return Vec::new();
    }
    let series = |name: &str, value: fn(&MixedPoint) -> f64| Series {
        name: name.into(),
        points: m.timeline.iter().map(|p| (p.t, value(p))).collect(),
    };
    let over_time = |title, y| Labels {
        title,
        x: "time (s)",
        y,
    };
    let throughput = [
        series("delivered/s", |p| p.delivered as f64),
        series("presences/s", |p| p.presences as f64),
        series("logins/s", |p| p.logins_ok as f64),
        series("login failures/s", |p| p.logins_failed as f64),
        series("bounced/s", |p| p.bounced as f64),
    ];
    let online = [series("online", |p| p.online as f64)];
    let busy: Vec<&MixedPoint> = m.timeline.iter().filter(|p| p.p50_ms > 0.0).collect();
    let latency = ["p50", "p99"].map(|name| Series {
        name: name.into(),
        points: busy
            .iter()
            .map(|p| (p.t, if name == "p50" { p.p50_ms } else { p.p99_ms }))
            .collect(),
    });
    vec![
        (
            "throughput.svg",
            line_chart(
                &over_time("mixed: events per second", "per second"),
                &throughput,
            ),
        ),
        (
            "sessions.svg",
            line_chart(&over_time("mixed: sessions online", "sessions"), &online),
        ),
        (
            "latency.svg",
            line_chart(
                &over_time("mixed: on-time message latency per second", "latency (ms)"),
                &latency,
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MixedSummary {
        let point = |t: f64| MixedPoint {
            t,
            delivered: 20,
            bounced: 0,
            p50_ms: 1.5,
            p99_ms: 4.0,
            presences: 19,
            logins_ok: 2,
            logins_failed: 0,
            online: 18,
        };
        MixedSummary {
            schedule: Schedule {
                duration_secs: 6,
                drain_secs: 10,
                message_interval_secs: Some(1.0),
                presence_interval_secs: Some(1.5),
                reconnect_interval_secs: None,
                body_bytes: 100,
                drop_percent: 10,
                pause_min_ms: 1000,
                pause_max_ms: 5000,
            },
            users: 20,
            elapsed_secs: 7.5,
            drain_waited_secs: 1.5,
            messages: Messages {
                sent: 120,
                delivered: 118,
                delivered_late: 6,
                lost: 1,
                duplicates: 0,
                bounced: 1,
                stale: 0,
                delivered_per_sec: 17.2,
                latency_ms: Distribution::from_micros(vec![1000, 2000]),
                late_latency_ms: Distribution::from_micros(vec![3_000_000]),
            },
            presences: Presences { sent: 90 },
            reconnects: Reconnects {
                ok: 12,
                failed: 1,
                failures: [("timeout".to_string(), 1)].into(),
                gave_up: 0,
                abrupt: 2,
                per_sec: 1.6,
                latency_ms: Distribution::from_micros(vec![5000]),
            },
            online: Online {
                start: 20,
                min: 15,
                max: 20,
                end: 20,
            },
            generator_cpu_secs: 0.3,
            generator_cpu_us_per_message: 2542.4,
            timeline: vec![point(0.0), point(1.0)],
        }
    }

    #[test]
    fn sections_and_charts() {
        let m = sample();
        let md = sections(&m);
        assert!(md.contains("| 120 | 118 | 6 | 1 | 0 | 1 | 0 | 17.2 | 1.00 | 2.00 | 2.00 | 2.00 | 3000.00 | 3000.00 |"));
        assert!(md.contains(
            "| 90 | 12 | 1 | 0 | 2 | 5.00 | 5.00 | 1 × timeout | 15–20 | 20 | 0.30 | 2542.4 |"
        ));
        assert!(md.contains("reconnects never"));
        let names: Vec<&str> = charts(&m).iter().map(|c| c.0).collect();
        assert_eq!(names, ["throughput.svg", "sessions.svg", "latency.svg"]);
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["message_interval_secs"], 1.0);
        assert_eq!(json["reconnect_interval_secs"], serde_json::Value::Null);
        assert_eq!(json["messages"]["delivered_late"], 6);
        assert_eq!(json["reconnects"]["ok"], 12);
        assert_eq!(json["timeline"][1]["online"], 18);
    }
}
