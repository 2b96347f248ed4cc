//! `--report DIR`: `report.md` (tables a person reads) and the SVG charts it links to.

use std::fmt::Write;
use std::path::Path;

use anyhow::Context;

use crate::report::{Distribution, Summary};
use crate::svg::{bar_chart, line_chart, Labels, Series};

/// Write `report.md` and its charts into `dir` (created if needed).
pub fn write_report(dir: &Path, s: &Summary) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut charts = Vec::new();
    for (file, svg) in charts_for(s) {
        let path = dir.join(file);
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        charts.push(file);
    }
    let path = dir.join("report.md");
    std::fs::write(&path, markdown(s, &charts))
        .with_context(|| format!("writing {}", path.display()))
}

pub(crate) fn row(cells: &[String]) -> String {
    format!("| {} |\n", cells.join(" | "))
}

pub(crate) fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    out.push_str(&row(&header
        .iter()
        .map(|h| h.to_string())
        .collect::<Vec<_>>()));
    out.push_str(&row(&vec!["---".to_string(); header.len()]));
    for r in rows {
        out.push_str(&row(r));
    }
    out.push('\n');
}

pub(crate) fn ms(v: f64) -> String {
    format!("{v:.2}")
}

fn latency_cells(d: &Distribution) -> Vec<String> {
    vec![ms(d.p50), ms(d.p90), ms(d.p99), ms(d.max)]
}

/// Reasons and counts for a table cell.
pub(crate) fn failures(map: &std::collections::BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    let parts: Vec<String> = map.iter().map(|(r, n)| format!("{n} × {r}")).collect();
    parts.join("; ").replace('|', "\\|")
}

pub fn markdown(s: &Summary, charts: &[&str]) -> String {
    let o = &s.outcome;
    let mut out = format!("# switchboard-loadgen: `{}`\n\n", s.scenario);
    let mut params = vec![
        vec!["server".into(), s.server.clone()],
        vec!["tls".into(), s.tls.clone()],
        vec!["mechanism".into(), s.mech.clone()],
        vec!["users".into(), s.users.to_string()],
    ];
    if let Some(st) = &o.storm {
        let rates: Vec<String> = st.steps.iter().map(|p| p.target_rate.to_string()).collect();
        params.push(vec!["rates (logins/s)".into(), rates.join(", ")]);
        params.push(vec!["step (s)".into(), st.step_secs.to_string()]);
    }
    if let Some(p) = &o.presence {
        params.push(vec!["group size".into(), p.group_size.to_string()]);
        params.push(vec!["rosters".into(), p.rosters.into()]);
        params.push(vec!["changes per user".into(), p.changes.to_string()]);
        params.push(vec!["interval (ms)".into(), p.interval_ms.to_string()]);
    }
    if let Some(c) = &o.churn {
        params.push(vec!["cycles".into(), c.cycles.to_string()]);
        params.push(vec![
            "pause (ms)".into(),
            format!("{}–{}", c.pause_min_ms, c.pause_max_ms),
        ]);
        params.push(vec![
            "dropped connections (%)".into(),
            c.drop_percent.to_string(),
        ]);
    }
    if let Some(i) = &o.idle {
        params.push(vec!["hold (s)".into(), i.hold_secs.to_string()]);
    }
    if let Some(c) = &o.chat {
        params.push(vec![
            "messages per user".into(),
            c.messages_per_user.to_string(),
        ]);
        params.push(vec!["interval (ms)".into(), c.interval_ms.to_string()]);
        params.push(vec!["body (bytes)".into(), c.body_bytes.to_string()]);
        if c.cross_node_only {
            params.push(vec!["recipients".into(), "on another server only".into()]);
        }
    }
    out.push_str("## Parameters\n\n");
    table(&mut out, &["parameter", "value"], &params);

    let l = &o.login;
    out.push_str("## Logins\n\nLatency from connect to bound-and-present, in milliseconds.\n\n");
    let mut r = vec![
        l.succeeded.to_string(),
        l.failed.to_string(),
        format!("{:.2}", l.elapsed_secs),
        format!("{:.0}", l.rate_per_sec),
    ];
    r.extend(latency_cells(&l.latency_ms));
    r.push(failures(&l.failures));
    table(
        &mut out,
        &[
            "ok", "failed", "time (s)", "logins/s", "p50", "p90", "p99", "max", "failures",
        ],
        &[r],
    );

    if let Some(st) = &o.storm {
        out.push_str("## Login storm steps\n\n");
        let rows: Vec<Vec<String>> = st
            .steps
            .iter()
            .map(|p| {
                let mut r = vec![
                    p.target_rate.to_string(),
                    p.attempts.to_string(),
                    p.succeeded.to_string(),
                    p.failed.to_string(),
                    format!("{:.1}", p.achieved_per_sec),
                ];
                r.extend(latency_cells(&p.latency_ms));
                r.push(failures(&p.failures));
                r
            })
            .collect();
        table(
            &mut out,
            &[
                "target/s",
                "attempts",
                "ok",
                "failed",
                "achieved/s",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "max ms",
                "failures",
            ],
            &rows,
        );
    }
    if let Some(p) = &o.presence {
        out.push_str("## Presence fan-out\n\nLatency from sending a change to its receipt at each contact, in milliseconds.\n\n");
        let mut r = vec![
            format!("{}/{}", p.ready, p.ready + p.not_ready),
            format!("{:.2}", p.setup_secs),
            p.sent.to_string(),
            p.expected.to_string(),
            p.delivered.to_string(),
            p.lost.to_string(),
            p.duplicates.to_string(),
            format!("{:.0}", p.deliveries_per_sec),
        ];
        r.extend(latency_cells(&p.latency_ms));
        table(
            &mut out,
            &[
                "ready",
                "setup (s)",
                "changes sent",
                "expected",
                "delivered",
                "lost",
                "duplicates",
                "deliveries/s",
                "p50",
                "p90",
                "p99",
                "max",
            ],
            &[r],
        );
    }
    if let Some(c) = &o.churn {
        out.push_str("## Churn\n\n");
        table(
            &mut out,
            &[
                "logins",
                "reconnects",
                "failed",
                "time (s)",
                "logins/s",
                "reconnects/s",
                "abrupt drops",
            ],
            &[vec![
                l.succeeded.to_string(),
                c.reconnects.to_string(),
                l.failed.to_string(),
                format!("{:.2}", c.elapsed_secs),
                format!("{:.1}", c.logins_per_sec),
                format!("{:.1}", c.reconnects_per_sec),
                c.abrupt.to_string(),
            ]],
        );
    }
    if let Some(c) = &o.chat {
        out.push_str("## Messages\n\n");
        let mut r = vec![
            c.sent.to_string(),
            c.cross_node.to_string(),
            c.received.to_string(),
            format!("{:.0}", c.received_per_sec),
            c.lost.to_string(),
            c.duplicates.to_string(),
            c.bounced.to_string(),
        ];
        r.extend(latency_cells(&c.latency_ms));
        r.push(format!("{:.2}", c.generator_cpu_secs));
        r.push(format!("{:.1}", c.generator_cpu_us_per_message));
        table(
            &mut out,
            &[
                "sent",
                "to another server",
                "received",
                "received/s",
                "lost",
                "duplicates",
                "bounced",
                "p50",
                "p90",
                "p99",
                "max",
                "gen CPU (s)",
                "gen CPU µs/message",
            ],
            &[r],
        );
        if let Some(st) = &c.stepped {
            let _ = writeln!(
                out,
                "## Steps

Each step offers the target rate for {} s, then waits at most {} s for its \
                 messages in flight (later ones count as lost). Sustained: p99 < {} ms, nothing lost or \
                 bounced, at least 90 % of the target offered. Latency in milliseconds; gen CPU % \
                 is the generator's CPU over the step's wall time (100: one core busy); server CPU \
                 (with `--server-pid`) is the server's from the step's start to the end of its \
                 drain, as % of that time and in µs per delivered message.\n",
                st.step_secs, st.drain_secs, st.p99_limit_ms
            );
            let rows: Vec<Vec<String>> = st
                .steps
                .iter()
                .map(|p| {
                    vec![
                        p.target_rate.to_string(),
                        format!("{:.0}", p.offered_per_sec),
                        format!("{:.0}", p.delivered_per_sec),
                        p.lost.to_string(),
                        p.late.to_string(),
                        p.duplicates.to_string(),
                        p.bounced.to_string(),
                        ms(p.latency_ms.p50),
                        ms(p.latency_ms.p99),
                        ms(p.latency_ms.p999),
                        ms(p.latency_ms.max),
                        format!("{:.0}", p.generator_cpu_percent),
                        p.server_cpu_percent
                            .map_or("–".into(), |v| format!("{v:.0}")),
                        p.server_cpu_us_per_message
                            .map_or("–".into(), |v| format!("{v:.1}")),
                        if p.sustained { "yes" } else { "no" }.into(),
                    ]
                })
                .collect();
            table(
                &mut out,
                &[
                    "target/s",
                    "offered/s",
                    "delivered/s",
                    "lost",
                    "late",
                    "duplicates",
                    "bounced",
                    "p50",
                    "p99",
                    "p99.9",
                    "max",
                    "gen CPU %",
                    "server CPU %",
                    "server µs/message",
                    "sustained",
                ],
                &rows,
            );
            let _ = writeln!(
                out,
                "Sustainable rate: **{} messages/s** ({:.0} delivered/s).\n",
                st.sustainable_rate, st.sustainable_delivered_per_sec
            );
        }
    }
    if let Some(i) = &o.idle {
        out.push_str("## Idle sessions\n\n");
        let rss = i.rss.as_ref();
        table(
            &mut out,
            &[
                "sessions",
                "RSS before (KiB)",
                "RSS after (KiB)",
                "KiB/session",
            ],
            &[vec![
                i.sessions.to_string(),
                rss.map_or("-".into(), |r| r.before_kib.to_string()),
                rss.map_or("-".into(), |r| r.after_kib.to_string()),
                rss.map_or("-".into(), |r| format!("{:.1}", r.per_session_kib)),
            ]],
        );
    }
    let g = &s.generator;
    out.push_str("## Generator\n\nThe generator's own CPU (user + system) over the whole run; 100 % is one core busy.\n\n");
    table(
        &mut out,
        &["CPU (s)", "wall (s)", "CPU %", "cores"],
        &[vec![
            format!("{:.2}", g.generator_cpu_secs),
            format!("{:.2}", g.generator_wall_secs),
            format!("{:.0}", g.generator_cpu_percent),
            g.generator_cores.to_string(),
        ]],
    );
    out.push_str("## Sessions\n\n");
    table(
        &mut out,
        &["closed cleanly", "closed uncleanly", "dropped by server"],
        &[vec![
            o.close.clean.to_string(),
            o.close.unclean.to_string(),
            failures(&o.dropped),
        ]],
    );
    if !charts.is_empty() {
        out.push_str("## Charts\n\n");
        for c in charts {
            let _ = writeln!(out, "![{c}]({c})\n");
        }
    }
    out
}

/// The charts for this summary, as (file name, SVG).
fn charts_for(s: &Summary) -> Vec<(&'static str, String)> {
    let o = &s.outcome;
    let mut charts = Vec::new();
    let per_sec = if o.presence.is_some() {
        "deliveries"
    } else {
        "logins"
    };
    if !o.timeline.is_empty() {
        let title = format!("{}: {per_sec} per second", s.scenario);
        let ok = Series {
            name: format!("{per_sec}/s"),
            points: o.timeline.iter().map(|p| (p.t, p.ok as f64)).collect(),
        };
        let failed = Series {
            name: "failed/s".into(),
            points: o.timeline.iter().map(|p| (p.t, p.failed as f64)).collect(),
        };
        let labels = Labels {
            title: &title,
            x: "time (s)",
            y: "per second",
        };
        charts.push(("throughput.svg", line_chart(&labels, &[ok, failed])));
    }
    if let Some(st) = o.chat.as_ref().and_then(|c| c.stepped.as_ref()) {
        let categories: Vec<String> = st
            .steps
            .iter()
            .map(|p| format!("{}/s", p.target_rate))
            .collect();
        let pick = |f: fn(&Distribution) -> f64| -> Vec<f64> {
            st.steps.iter().map(|p| f(&p.latency_ms)).collect()
        };
        let values = [pick(|d| d.p50), pick(|d| d.p99), pick(|d| d.p999)];
        let labels = Labels {
            title: "message latency per step",
            x: "offered rate (messages/s)",
            y: "latency (ms)",
        };
        charts.push((
            "latency.svg",
            bar_chart(&labels, &categories, &["p50", "p99", "p99.9"], &values),
        ));
        let line = |name: &str, f: fn(&crate::report::ChatStepSummary) -> f64| Series {
            name: name.into(),
            points: st
                .steps
                .iter()
                .map(|p| (f64::from(p.target_rate), f(p)))
                .collect(),
        };
        let labels = Labels {
            title: "delivered vs offered messages/s",
            x: "target (messages/s)",
            y: "messages/s",
        };
        charts.push((
            "rates.svg",
            line_chart(
                &labels,
                &[
                    line("target", |p| f64::from(p.target_rate)),
                    line("offered", |p| p.offered_per_sec),
                    line("delivered", |p| p.delivered_per_sec),
                ],
            ),
        ));
        return charts;
    }
    if let Some(st) = &o.storm {
        let categories: Vec<String> = st
            .steps
            .iter()
            .map(|p| format!("{}/s", p.target_rate))
            .collect();
        let pick = |f: fn(&Distribution) -> f64| -> Vec<f64> {
            st.steps.iter().map(|p| f(&p.latency_ms)).collect()
        };
        let values = [pick(|d| d.p50), pick(|d| d.p90), pick(|d| d.p99)];
        let labels = Labels {
            title: "login latency per step",
            x: "target rate (logins/s)",
            y: "latency (ms)",
        };
        charts.push((
            "latency.svg",
            bar_chart(&labels, &categories, &["p50", "p90", "p99"], &values),
        ));
        let achieved = Series {
            name: "achieved".into(),
            points: st
                .steps
                .iter()
                .map(|p| (f64::from(p.target_rate), p.achieved_per_sec))
                .collect(),
        };
        let wanted = Series {
            name: "target".into(),
            points: st
                .steps
                .iter()
                .map(|p| (f64::from(p.target_rate), f64::from(p.target_rate)))
                .collect(),
        };
        let labels = Labels {
            title: "achieved vs target login rate",
            x: "target (logins/s)",
            y: "logins/s",
        };
        charts.push(("rates.svg", line_chart(&labels, &[wanted, achieved])));
    } else if !o.timeline.is_empty() {
        let busy: Vec<_> = o.timeline.iter().filter(|p| p.ok > 0).collect();
        let p50 = Series {
            name: "p50".into(),
            points: busy.iter().map(|p| (p.t, p.p50_ms)).collect(),
        };
        let p99 = Series {
            name: "p99".into(),
            points: busy.iter().map(|p| (p.t, p.p99_ms)).collect(),
        };
        let title = format!("{}: latency per second", s.scenario);
        let labels = Labels {
            title: &title,
            x: "time (s)",
            y: "latency (ms)",
        };
        charts.push(("latency.svg", line_chart(&labels, &[p50, p99])));
    } else {
        let mut categories = vec!["login".to_string()];
        let mut dists = vec![&o.login.latency_ms];
        if let Some(c) = &o.chat {
            categories.push("message".into());
            dists.push(&c.latency_ms);
        }
        let pick =
            |f: fn(&Distribution) -> f64| -> Vec<f64> { dists.iter().map(|d| f(d)).collect() };
        let values = [
            pick(|d| d.p50),
            pick(|d| d.p90),
            pick(|d| d.p99),
            pick(|d| d.max),
        ];
        let title = format!("{}: latency percentiles", s.scenario);
        let labels = Labels {
            title: &title,
            x: "",
            y: "latency (ms)",
        };
        charts.push((
            "latency.svg",
            bar_chart(&labels, &categories, &["p50", "p90", "p99", "max"], &values),
        ));
    }
    charts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Outcome, StepSummary, StormSummary};

    #[test]
    fn storm_report_has_a_row_per_step_and_charts() {
        let step = |rate| StepSummary {
            target_rate: rate,
            attempts: 10,
            succeeded: 10,
            failed: 0,
            failures: Default::default(),
            elapsed_secs: 1.0,
            achieved_per_sec: 9.5,
            latency_ms: Distribution::from_micros(vec![1000, 2000]),
        };
        let s = Summary {
            scenario: "login",
            server: "127.0.0.1:5222".into(),
            tls: "none".into(),
            mech: "SCRAM-SHA-256".into(),
            users: 10,
            generator: Default::default(),
            outcome: Outcome {
                storm: Some(StormSummary {
                    step_secs: 1,
                    steps: vec![step(10), step(20)],
                }),
                ..Outcome::default()
            },
        };
        let charts = charts_for(&s);
        let names: Vec<&str> = charts.iter().map(|c| c.0).collect();
        assert_eq!(names, ["latency.svg", "rates.svg"]);
        let md = markdown(&s, &names);
        assert!(md.contains("| 10 | 10 | 10 | 0 | 9.5 | 1.00 | 2.00 | 2.00 | 2.00 | none |"));
        assert!(md.contains("| 20 | 10 |"));
        assert!(md.contains("![rates.svg](rates.svg)"));
    }

    #[test]
    fn stepped_chat_report_has_a_row_per_step() {
        use crate::report::{ChatStepSummary, ChatStepsSummary, ChatSummary};
        let step = |rate: u32, sustained| ChatStepSummary {
            target_rate: rate,
            sent: u64::from(rate),
            offered_per_sec: f64::from(rate),
            received: u64::from(rate),
            delivered_per_sec: f64::from(rate),
            lost: 0,
            late: 0,
            duplicates: 0,
            bounced: 0,
            drain_waited_secs: 0.01,
            latency_ms: Distribution::from_micros(vec![1000, 2000]),
            generator_cpu_secs: 0.25,
            generator_cpu_percent: 25.0,
            server_cpu_secs: Some(0.5),
            server_cpu_us_per_message: Some(20.0),
            server_cpu_percent: Some(50.0),
            not_archived: None,
            sustained,
        };
        let s = Summary {
            scenario: "chat",
            server: "127.0.0.1:5222".into(),
            tls: "starttls".into(),
            mech: "PLAIN".into(),
            users: 10,
            generator: Default::default(),
            outcome: Outcome {
                chat: Some(ChatSummary {
                    messages_per_user: 0,
                    interval_ms: 0,
                    body_bytes: 100,
                    cross_node_only: false,
                    sent: 30,
                    cross_node: 0,
                    received: 30,
                    lost: 0,
                    duplicates: 0,
                    bounced: 0,
                    elapsed_secs: 2.0,
                    last_delivery_secs: 2.0,
                    received_per_sec: 15.0,
                    latency_ms: Distribution::default(),
                    generator_cpu_secs: 0.5,
                    generator_cpu_us_per_message: 16.7,
                    carbons: None,
                    flaky: None,
                    server_cpu: None,
                    stepped: Some(ChatStepsSummary {
                        step_secs: 1,
                        drain_secs: 1,
                        p99_limit_ms: 100.0,
                        steps: vec![step(10, true), step(20, false)],
                        sustainable_rate: 10,
                        sustainable_delivered_per_sec: 10.0,
                    }),
                }),
                ..Outcome::default()
            },
        };
        let charts = charts_for(&s);
        let names: Vec<&str> = charts.iter().map(|c| c.0).collect();
        assert_eq!(names, ["latency.svg", "rates.svg"]);
        let md = markdown(&s, &names);
        assert!(md.contains(
            "| 10 | 10 | 10 | 0 | 0 | 0 | 0 | 1.00 | 2.00 | 2.00 | 2.00 | 25 | 50 | 20.0 | yes |"
        ));
        assert!(md.contains("| body (bytes) | 100 |"));
        assert!(md.contains("| 0.50 | 16.7 |"));
        assert!(md.contains("## Generator"));
        assert!(md.contains("| 20 | 20 | 20 |"));
        assert!(md.contains("Sustainable rate: **10 messages/s**"));
    }
}
