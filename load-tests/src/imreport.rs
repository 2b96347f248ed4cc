//! Summaries of the scenarios with a part of their own (the IM-data scenarios `roster-writes`
//! and `offline-store`, `mixed`, `pep` and `muc`): the common part (logins, sessions) is the
//! usual [`Summary`]; the scenario's own part is added to its stdout lines, its JSON (under
//! `roster_writes`, `offline_store`, `mixed`, `pep` or `muc`) and its `report.md`, with charts
//! of its own.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::markdown::{self, ms, table};
use crate::mixedreport::{self, MixedSummary};
use crate::muc::{self, MucSummary};
use crate::pep::{self, PepSummary};
use crate::report::{reasons, CloseSummary, Distribution, LoginSummary, Summary};
use crate::rosterwrites::rate_name;
use crate::svg::{bar_chart, line_chart, Labels, Series};
use crate::timeline::Point;

/// The scenario-specific part of a run.
#[derive(Debug, Serialize)]
pub enum Extra {
    #[serde(rename = "roster_writes")]
    Roster(Box<RosterWritesSummary>),
    #[serde(rename = "offline_store")]
    Offline(Box<OfflineStoreSummary>),
    #[serde(rename = "mixed")]
    Mixed(Box<MixedSummary>),
    #[serde(rename = "pep")]
    Pep(Box<PepSummary>),
    #[serde(rename = "muc")]
    Muc(Box<MucSummary>),
}

#[derive(Debug, Serialize)]
pub struct RosterWritesSummary {
    /// Roster sets in flight per user at most.
    pub outstanding: u32,
    pub step_secs: u64,
    pub drain_secs: u64,
    pub duration_secs: u64,
    pub contact_domain: String,
    pub sent: u64,
    /// Answered with `type='result'` before the end of their step's drain.
    pub acked: u64,
    /// Error replies by condition, `type='wait'` ones excluded.
    pub errors: BTreeMap<String, u64>,
    /// Error replies of `type='wait'` (retryable) by condition.
    pub wait_errors: BTreeMap<String, u64>,
    /// Not answered by the end of their step's drain.
    pub unanswered: u64,
    /// Roster pushes received (and answered).
    pub pushes: u64,
    /// Highest acked/s of a step without (non-wait) errors.
    pub best_acked_per_sec: f64,
    /// IQ round trip of every acknowledged write.
    pub latency_ms: Distribution,
    pub steps: Vec<IqStepSummary>,
    /// Per second: acknowledged writes (`ok`, with latency) and error replies (`failed`).
    pub timeline: Vec<Point>,
}

#[derive(Debug, Serialize)]
pub struct IqStepSummary {
    /// Aggregate writes/s wanted; `null`: as fast as the window allows.
    pub target_rate: Option<u32>,
    /// The step's length (the last one may be cut by `--duration-secs`).
    pub secs: f64,
    pub sent: u64,
    pub offered_per_sec: f64,
    pub acked: u64,
    /// `acked` over the step's length, or to its last result if that came later.
    pub acked_per_sec: f64,
    pub errors: BTreeMap<String, u64>,
    pub wait_errors: BTreeMap<String, u64>,
    pub unanswered: u64,
    /// Answered after the drain (counted unanswered).
    pub late: u64,
    pub drain_waited_secs: f64,
    pub latency_ms: Distribution,
}

#[derive(Debug, Serialize)]
pub struct OfflineStoreSummary {
    /// Logged-in senders.
    pub senders: u64,
    pub recipients: u32,
    /// Index of the first recipient account (right after the senders').
    pub recipient_first: u32,
    pub messages_per_sender: u32,
    /// Aggregate messages/s wanted; `null`: as fast as possible.
    pub target_rate: Option<u32>,
    pub body_bytes: usize,
    /// The server's per-account cap the run was planned against.
    pub quota: u32,
    /// Most messages the plan puts on one recipient.
    pub per_recipient_max: u64,
    pub sent: u64,
    /// From the first message to the last one sent.
    pub send_secs: f64,
    pub offered_per_sec: f64,
    /// Messages returned as errors (all types).
    pub bounced: u64,
    /// Bounces by condition, `type='wait'` ones excluded.
    pub bounces: BTreeMap<String, u64>,
    /// Bounces of `type='wait'` (retryable) by condition.
    pub wait_bounces: BTreeMap<String, u64>,
    /// `sent - bounced`: the messages the server took for storage.
    pub accepted: u64,
    /// Messages to one recipient before the vCard query that acknowledges them.
    pub batch: u32,
    /// Unacknowledged batches per sender at most (0: no limit).
    pub window: u32,
    /// vCard queries sent (one per batch) and answered (with a result, or an error that is
    /// not of `type='wait'`): the batches acknowledged.
    pub barriers: u64,
    pub barriers_answered: u64,
    /// vCard queries answered with a `type='wait'` error (the server could not reach the
    /// account's data in time), by condition: their batches stay unacknowledged.
    pub barrier_refusals: BTreeMap<String, u64>,
    /// Messages of answered batches, bounced ones excluded: stores acknowledged.
    pub acked: u64,
    /// From the first message to the last vCard answer.
    pub acked_secs: f64,
    /// `acked / acked_secs`.
    pub acked_per_sec: f64,
    /// Per batch, from its first message to the answer to its vCard query.
    pub ack_latency_ms: Distribution,
    /// From `--metrics`: `switchboard_routed_total{destination="offline"}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counter: Option<CounterSummary>,
    pub verify: VerifySummary,
    /// Per second: stores acknowledged (`ok`, with their batch's latency) and bounces
    /// received (`failed`).
    pub timeline: Vec<Point>,
}

#[derive(Debug, Serialize)]
pub struct CounterSummary {
    pub endpoints: Vec<String>,
    /// Increase of the counter (summed over the endpoints) since just before the first message.
    pub stored: u64,
    /// From the first message to the first reading at the final value.
    pub secs: f64,
    pub stores_per_sec: f64,
    /// Highest rate between two readings at least a second apart.
    pub peak_per_sec: f64,
    pub scrape_failures: u64,
    /// (seconds from the first message, stores/s since the previous point).
    pub per_sec: Vec<(f64, f64)>,
}

#[derive(Debug, Serialize)]
pub struct VerifySummary {
    /// The recipients' logins.
    pub login: LoginSummary,
    /// `accepted`.
    pub expected: u64,
    /// Distinct messages of this run delivered, bounced ones excluded.
    pub delivered: u64,
    /// Delivered with an XEP-0203 delay stamp (from storage).
    pub delayed: u64,
    pub duplicates: u64,
    /// `expected - delivered`.
    pub lost: u64,
    /// Delivered although the sender got a bounce for it.
    pub delivered_bounced: u64,
    /// Messages not from this run (an earlier run's leftovers, other senders).
    pub stale: u64,
    /// Recipients that got fewer of this run's messages than were stored for them.
    pub recipients_short: u64,
    /// The first few of them: `userK: GOT of STORED (via server N)`.
    pub short_examples: Vec<String>,
    /// From the first recipient login to the end of the wait.
    pub waited_secs: f64,
    /// From the first recipient login to the last delivery.
    pub last_delivery_secs: f64,
    pub delivered_per_sec: f64,
    pub dropped: BTreeMap<String, u64>,
    pub close: CloseSummary,
}

#[derive(Serialize)]
struct Full<'a> {
    #[serde(flatten)]
    base: &'a Summary,
    #[serde(flatten)]
    extra: &'a Extra,
}

/// Print, and write the JSON and report if asked: the usual summary plus `extra`.
pub fn output(
    summary: &Summary,
    extra: &Extra,
    json: Option<&Path>,
    report: Option<&Path>,
) -> anyhow::Result<()> {
    summary.print();
    print(extra);
    if let Some(path) = json {
        let mut text = serde_json::to_string_pretty(&Full {
            base: summary,
            extra,
        })?;
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(dir) = report {
        write_report(dir, summary, extra)?;
        eprintln!("report: {}", dir.join("report.md").display());
    }
    Ok(())
}

fn print(extra: &Extra) {
    match extra {
        Extra::Mixed(m) => mixedreport::print(m),
        Extra::Pep(p) => pep::print(p),
        Extra::Muc(m) => muc::print(m),
        Extra::Roster(r) => {
            for s in &r.steps {
                println!(
                    "step {} for {:.1} s: {} sent ({:.0}/s offered), {} acked = {:.0} writes/s, {} unanswered ({} late), drain {:.2} s; {}; errors: {}; wait errors: {}",
                    rate_name(&s.target_rate), s.secs, s.sent, s.offered_per_sec, s.acked,
                    s.acked_per_sec, s.unanswered, s.late, s.drain_waited_secs,
                    s.latency_ms.line(), reasons(&s.errors), reasons(&s.wait_errors)
                );
            }
            println!(
                "roster writes: {} sent, {} acked, {} unanswered, {} pushes; best {:.0} acked writes/s (up to {} in flight per user)",
                r.sent, r.acked, r.unanswered, r.pushes, r.best_acked_per_sec, r.outstanding
            );
            println!("roster write latency: {}", r.latency_ms.line());
            println!(
                "roster write errors: {}; wait (retryable): {}",
                reasons(&r.errors),
                reasons(&r.wait_errors)
            );
        }
        Extra::Offline(o) => {
            println!(
                "offline messages: {} sent in {:.2} s = {:.0}/s offered, {} bounced, {} accepted; {} acknowledged ({}/{} batches of {} answered) by {:.2} s = {:.0} stores/s acknowledged",
                o.sent, o.send_secs, o.offered_per_sec, o.bounced, o.accepted, o.acked,
                o.barriers_answered, o.barriers, o.batch, o.acked_secs, o.acked_per_sec
            );
            println!(
                "bounces: {}; wait (retryable): {}; vCard queries refused (wait): {}",
                reasons(&o.bounces),
                reasons(&o.wait_bounces),
                reasons(&o.barrier_refusals)
            );
            println!("batch acknowledgement latency: {}", o.ack_latency_ms.line());
            if let Some(c) = &o.counter {
                println!(
                    "server counter routed_total{{destination=\"offline\"}}: +{} in {:.2} s = {:.0} stores/s (peak {:.0}/s), {} failed readings",
                    c.stored, c.secs, c.stores_per_sec, c.peak_per_sec, c.scrape_failures
                );
            }
            let v = &o.verify;
            println!(
                "verify: {} of {} recipients logged in ({} failed: {}); {} of {} stored messages delivered ({} with delay stamps), {} lost, {} duplicates, {} delivered despite a bounce, {} stale; last at {:.2} s = {:.0} deliveries/s",
                v.login.succeeded, o.recipients, v.login.failed, reasons(&v.login.failures),
                v.delivered, v.expected, v.delayed, v.lost, v.duplicates, v.delivered_bounced,
                v.stale, v.last_delivery_secs, v.delivered_per_sec
            );
            if v.recipients_short > 0 {
                println!(
                    "recipients short of messages: {} ({})",
                    v.recipients_short,
                    v.short_examples.join(", ")
                );
            }
            println!(
                "recipients: dropped {}; close {} clean, {} unclean",
                reasons(&v.dropped),
                v.close.clean,
                v.close.unclean
            );
        }
    }
}

fn cell(map: &BTreeMap<String, u64>) -> String {
    reasons(map).replace('|', "\\|")
}

/// The scenario's own sections of `report.md`.
pub fn sections(extra: &Extra) -> String {
    let mut out = String::new();
    match extra {
        Extra::Mixed(m) => out.push_str(&mixedreport::sections(m)),
        Extra::Pep(p) => out.push_str(&pep::sections(p)),
        Extra::Muc(m) => out.push_str(&muc::sections(m)),
        Extra::Roster(r) => {
            let _ = writeln!(
                out,
                "## Roster writes\n\nEach write is a `jabber:iq:roster` set adding a new contact \
                 (`@{}`), at most {} in flight per user; a step is followed by at most {} s \
                 waiting for its replies. Acked/s counts `type='result'` replies over the step \
                 (or to its last result). Latency is the IQ round trip, in milliseconds.\n",
                r.contact_domain, r.outstanding, r.drain_secs
            );
            let rows: Vec<Vec<String>> = r
                .steps
                .iter()
                .map(|s| {
                    vec![
                        rate_name(&s.target_rate),
                        format!("{:.1}", s.secs),
                        s.sent.to_string(),
                        format!("{:.0}", s.offered_per_sec),
                        s.acked.to_string(),
                        format!("{:.0}", s.acked_per_sec),
                        cell(&s.errors),
                        cell(&s.wait_errors),
                        s.unanswered.to_string(),
                        ms(s.latency_ms.p50),
                        ms(s.latency_ms.p99),
                        ms(s.latency_ms.max),
                    ]
                })
                .collect();
            table(
                &mut out,
                &[
                    "target",
                    "time (s)",
                    "sent",
                    "offered/s",
                    "acked",
                    "acked/s",
                    "errors",
                    "wait errors",
                    "unanswered",
                    "p50",
                    "p99",
                    "max",
                ],
                &rows,
            );
            let _ = writeln!(
                out,
                "Best: **{:.0} acknowledged roster writes/s**; {} roster pushes received.\n",
                r.best_acked_per_sec, r.pushes
            );
        }
        Extra::Offline(o) => {
            let _ = writeln!(
                out,
                "## Offline stores\n\n{} senders, {} messages each ({}-byte bodies, {}), to {} \
                 recipients that are not logged in (at most {} each, server cap {}), in \
                 batches of {} to one recipient, each acknowledged by the answer to a vCard \
                 query sent after it, at most {} unacknowledged batches per sender. \
                 Acknowledged stores: messages of answered batches, bounced ones excluded; \
                 latency from a batch's first message to its answer, in milliseconds.\n",
                o.senders,
                o.messages_per_sender,
                o.body_bytes,
                o.target_rate
                    .map_or("as fast as possible".into(), |r| format!("{r}/s in all")),
                o.recipients,
                o.per_recipient_max,
                o.quota,
                o.batch,
                match o.window {
                    0 => "any number of".to_string(),
                    w => w.to_string(),
                }
            );
            table(
                &mut out,
                &[
                    "sent",
                    "offered/s",
                    "bounced",
                    "accepted",
                    "batches answered",
                    "acknowledged",
                    "time to last (s)",
                    "stores/s acknowledged",
                    "p50",
                    "p99",
                    "bounces",
                    "wait bounces",
                    "vCard queries refused",
                ],
                &[vec![
                    o.sent.to_string(),
                    format!("{:.0}", o.offered_per_sec),
                    o.bounced.to_string(),
                    o.accepted.to_string(),
                    format!("{}/{}", o.barriers_answered, o.barriers),
                    o.acked.to_string(),
                    format!("{:.2}", o.acked_secs),
                    format!("{:.0}", o.acked_per_sec),
                    ms(o.ack_latency_ms.p50),
                    ms(o.ack_latency_ms.p99),
                    cell(&o.bounces),
                    cell(&o.wait_bounces),
                    cell(&o.barrier_refusals),
                ]],
            );
            if let Some(c) = &o.counter {
                out.push_str(
                    "### Server counter\n\n`switchboard_routed_total{destination=\"offline\"}`, \
                     summed over the endpoints, from just before the first message.\n\n",
                );
                table(
                    &mut out,
                    &[
                        "endpoints",
                        "stored",
                        "time (s)",
                        "stores/s",
                        "peak/s",
                        "failed readings",
                    ],
                    &[vec![
                        c.endpoints.join(", "),
                        c.stored.to_string(),
                        format!("{:.2}", c.secs),
                        format!("{:.0}", c.stores_per_sec),
                        format!("{:.0}", c.peak_per_sec),
                        c.scrape_failures.to_string(),
                    ]],
                );
            }
            let v = &o.verify;
            out.push_str(
                "### Verification\n\nThe recipients log in (initial presence) and count the \
                 messages of this run delivered from storage.\n\n",
            );
            table(
                &mut out,
                &[
                    "logged in",
                    "expected",
                    "delivered",
                    "with delay",
                    "lost",
                    "duplicates",
                    "delivered despite bounce",
                    "stale",
                    "recipients short",
                    "last (s)",
                    "deliveries/s",
                ],
                &[vec![
                    format!("{}/{}", v.login.succeeded, o.recipients),
                    v.expected.to_string(),
                    v.delivered.to_string(),
                    v.delayed.to_string(),
                    v.lost.to_string(),
                    v.duplicates.to_string(),
                    v.delivered_bounced.to_string(),
                    v.stale.to_string(),
                    v.recipients_short.to_string(),
                    format!("{:.2}", v.last_delivery_secs),
                    format!("{:.0}", v.delivered_per_sec),
                ]],
            );
            if v.recipients_short > 0 {
                let _ = writeln!(
                    out,
                    "Recipients short of their stored messages: {}, e.g. {}.\n",
                    v.recipients_short,
                    v.short_examples.join("; ")
                );
            }
        }
    }
    out
}

/// The scenario's charts, as (file name, SVG).
pub fn charts(extra: &Extra) -> Vec<(&'static str, String)> {
    let mut charts = Vec::new();
    match extra {
        Extra::Mixed(m) => charts = mixedreport::charts(m),
        Extra::Pep(p) => charts = pep::charts(p),
        Extra::Muc(m) => charts = muc::charts(m),
        Extra::Roster(r) => {
            if !r.timeline.is_empty() {
                let acked = Series {
                    name: "acked/s".into(),
                    points: r.timeline.iter().map(|p| (p.t, p.ok as f64)).collect(),
                };
                let failed = Series {
                    name: "errors/s".into(),
                    points: r.timeline.iter().map(|p| (p.t, p.failed as f64)).collect(),
                };
                let labels = Labels {
                    title: "roster writes acknowledged per second",
                    x: "time (s)",
                    y: "per second",
                };
                charts.push(("writes.svg", line_chart(&labels, &[acked, failed])));
            }
            if !r.steps.is_empty() {
                let categories: Vec<String> =
                    r.steps.iter().map(|s| rate_name(&s.target_rate)).collect();
                let pick = |f: fn(&Distribution) -> f64| -> Vec<f64> {
                    r.steps.iter().map(|s| f(&s.latency_ms)).collect()
                };
                let values = [pick(|d| d.p50), pick(|d| d.p90), pick(|d| d.p99)];
                let labels = Labels {
                    title: "roster set round trip per step",
                    x: "target rate (writes/s)",
                    y: "latency (ms)",
                };
                charts.push((
                    "write-latency.svg",
                    bar_chart(&labels, &categories, &["p50", "p90", "p99"], &values),
                ));
            }
        }
        Extra::Offline(o) => {
            let mut series = Vec::new();
            if !o.timeline.is_empty() {
                series.push(Series {
                    name: "acked/s".into(),
                    points: o.timeline.iter().map(|p| (p.t, p.ok as f64)).collect(),
                });
                series.push(Series {
                    name: "bounced/s".into(),
                    points: o.timeline.iter().map(|p| (p.t, p.failed as f64)).collect(),
                });
            }
            if let Some(c) = o.counter.as_ref().filter(|c| !c.per_sec.is_empty()) {
                series.push(Series {
                    name: "counter/s".into(),
                    points: c.per_sec.clone(),
                });
            }
            if !series.is_empty() {
                let labels = Labels {
                    title: "offline messages per second",
                    x: "time (s)",
                    y: "per second",
                };
                charts.push(("stores.svg", line_chart(&labels, &series)));
            }
        }
    }
    charts
}

fn write_report(dir: &Path, summary: &Summary, extra: &Extra) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut names = Vec::new();
    for (file, svg) in charts(extra) {
        let path = dir.join(file);
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        names.push(file);
    }
    let path = dir.join("report.md");
    std::fs::write(&path, markdown_with(summary, extra, &names))
        .with_context(|| format!("writing {}", path.display()))
}

/// The usual report with the scenario's sections before "Sessions" and its charts.
pub fn markdown_with(summary: &Summary, extra: &Extra, charts: &[&str]) -> String {
    let base = markdown::markdown(summary, &[]);
    let ours = sections(extra);
    let mut out = match base.find("## Sessions") {
        Some(i) => format!("{}{ours}{}", &base[..i], &base[i..]),
        None => format!("{base}{ours}"),
    };
    if !charts.is_empty() {
        out.push_str("## Charts\n\n");
        for c in charts {
            let _ = writeln!(out, "![{c}]({c})\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Outcome;

    fn base(scenario: &'static str) -> Summary {
        Summary {
            scenario,
            server: "127.0.0.1:5222".into(),
            tls: "none".into(),
            mech: "SCRAM-SHA-256".into(),
            users: 4,
            generator: Default::default(),
            outcome: Outcome::default(),
        }
    }

    #[test]
    fn roster_report_and_json() {
        let step = |rate| IqStepSummary {
            target_rate: rate,
            secs: 1.0,
            sent: 10,
            offered_per_sec: 10.0,
            acked: 9,
            acked_per_sec: 9.0,
            errors: BTreeMap::new(),
            wait_errors: [("resource-constraint".to_string(), 1)].into(),
            unanswered: 0,
            late: 0,
            drain_waited_secs: 0.1,
            latency_ms: Distribution::from_micros(vec![1000, 3000]),
        };
        let extra = Extra::Roster(Box::new(RosterWritesSummary {
            outstanding: 4,
            step_secs: 1,
            drain_secs: 1,
            duration_secs: 10,
            contact_domain: "bench.example".into(),
            sent: 20,
            acked: 18,
            errors: BTreeMap::new(),
            wait_errors: [("resource-constraint".to_string(), 2)].into(),
            unanswered: 0,
            pushes: 18,
            best_acked_per_sec: 9.0,
            latency_ms: Distribution::default(),
            steps: vec![step(Some(10)), step(None)],
            timeline: Vec::new(),
        }));
        let s = base("roster-writes");
        let names: Vec<&str> = charts(&extra).iter().map(|c| c.0).collect();
        assert_eq!(names, ["write-latency.svg"]);
        let md = markdown_with(&s, &extra, &names);
        assert!(md.contains("| 10/s | 1.0 | 10 | 10 | 9 | 9 | none | 1 × resource-constraint | 0 | 1.00 | 3.00 | 3.00 |"));
        assert!(md.contains("| max | 1.0 |"));
        assert!(md.find("## Roster writes").unwrap() < md.find("## Sessions").unwrap());
        assert!(md.contains("![write-latency.svg](write-latency.svg)"));
        let json = serde_json::to_value(Full {
            base: &s,
            extra: &extra,
        })
        .unwrap();
        assert_eq!(json["scenario"], "roster-writes");
        assert_eq!(json["roster_writes"]["acked"], 18);
        assert_eq!(
            json["roster_writes"]["steps"][1]["target_rate"],
            serde_json::Value::Null
        );
        assert!(json["login"].is_object());
    }
}
