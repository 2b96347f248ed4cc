//! Scenario `idle`: log N users in, hold the sessions, and measure the server's memory per
//! session.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::ramp::{join_ends, login_all, tally, Plan};
use crate::report::{IdleSummary, Outcome, RssSummary};
use crate::system::rss_kib;

pub async fn run(plan: &Plan, hold: Duration, server_pid: Option<u32>) -> anyhow::Result<Outcome> {
    let before = server_pid.map(rss_kib).transpose()?;
    let ramp = login_all(plan).await;
    let after_login = server_pid.map(rss_kib).transpose()?;
    let logged_in = ramp.sessions.len() as u64;

    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for session in ramp.sessions {
        tasks.spawn(session.hold(stopped.clone(), plan.close_grace));
    }
    eprintln!("  holding {logged_in} sessions for {} s", hold.as_secs());
    tokio::time::sleep(hold).await;
    let after = server_pid.map(rss_kib).transpose()?;
    let _ = stop.send(true);
    let ends = join_ends(tasks).await;
    let (dropped, close) = tally(ends);
    let sessions = logged_in - dropped.values().sum::<u64>();

    let rss = match (server_pid, before, after_login, after) {
        (Some(pid), Some(before), Some(after_login), Some(after)) => Some(RssSummary {
            server_pid: pid,
            before_kib: before,
            after_login_kib: after_login,
            after_kib: after,
            per_session_kib: if sessions > 0 {
                (after as f64 - before as f64) / sessions as f64
            } else {
                0.0
            },
        }),
        _ => None,
    };
    Ok(Outcome {
        login: ramp.summary,
        idle: Some(IdleSummary {
            hold_secs: hold.as_secs(),
            sessions,
            rss,
        }),
        chat: None,
        dropped,
        close,
        ..Outcome::default()
    })
}
