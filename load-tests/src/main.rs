//! switchboard-loadgen: logs many simulated users into a Switchboard node over loopback and
//! measures what it costs (scenario `idle`) or how fast messages flow (scenario `chat`).
//!
//! Raw XML on the wire: a tiny scanner reads the few server replies a client needs.

#![forbid(unsafe_code)]

mod chat;
mod conn;
mod idle;
mod login;
mod ramp;
mod report;
mod scram;
mod system;
mod tls;
mod xml;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use clap::{Args, Parser, Subcommand};

use crate::login::{Mech, Target, TlsMode};
use crate::ramp::Plan;
use crate::report::Summary;
use crate::tls::Trust;

/// Upper bound for every duration option: one day.
const MAX_SECS: u64 = 86_400;

#[derive(Parser)]
#[command(
    name = "switchboard-loadgen",
    version,
    about = "XMPP traffic generator for Switchboard (loopback targets only)"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    #[command(flatten)]
    common: Common,
}

#[derive(Subcommand)]
enum Scenario {
    /// Log N users in, hold the sessions, report the server's memory per session.
    Idle {
        /// Seconds to hold all sessions open before measuring and closing.
        #[arg(long, default_value_t = 10)]
        hold_secs: u64,
    },
    /// Log N users in; each sends --messages messages to random other users.
    Chat {
        /// Messages each user sends.
        #[arg(long, default_value_t = 100)]
        messages: u32,
        /// Milliseconds between two messages of one user (first one at a random offset).
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
        /// Upper bound on the exchange, sending and waiting for deliveries.
        #[arg(long, default_value_t = 60)]
        duration_secs: u64,
    },
}

#[derive(Args)]
struct Common {
    /// Server c2s address (the tls_listen port with --tls direct); loopback only.
    #[arg(long, global = true, default_value = "127.0.0.1:5222")]
    server: SocketAddr,
    /// Local addresses to connect from, round-robin: "127.0.1.1-127.0.1.20,127.0.2.1";
    /// "" lets the kernel choose. Spreading avoids running out of ephemeral ports.
    #[arg(long, global = true, default_value = "127.0.1.1-127.0.1.20")]
    source_ips: String,
    /// XMPP domain of the accounts (the stream's `to`).
    #[arg(long, global = true, default_value = "localhost")]
    domain: String,
    /// Number of users (one connection each).
    #[arg(long, short = 'n', global = true, default_value_t = 100)]
    users: u32,
    /// Index of the first user; lets several processes split a user range.
    #[arg(long, global = true, default_value_t = 1)]
    first: u32,
    /// Usernames are this prefix followed by the index: user1, user2...
    #[arg(long, global = true, default_value = "user")]
    user_prefix: String,
    /// Password of every user.
    #[arg(long, global = true, default_value = "secret")]
    password: String,
    /// How the stream is secured.
    #[arg(long, global = true, value_enum, default_value_t = TlsMode::Starttls)]
    tls: TlsMode,
    /// SASL mechanism.
    #[arg(long, global = true, value_enum, default_value_t = Mech::Plain)]
    mech: Mech,
    /// Accept any server certificate (the default unless --ca is given; targets are loopback).
    #[arg(long, global = true, conflicts_with = "ca")]
    insecure: bool,
    /// Trust only the certificates in this PEM file, e.g. <data_dir>/tls/cert.pem.
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// Logins in progress at once.
    #[arg(long, global = true, default_value_t = 200)]
    concurrency: usize,
    /// A login (connect to presence sent) taking longer than this fails.
    #[arg(long, global = true, default_value_t = 30)]
    login_timeout_secs: u64,
    /// On close, seconds to wait for the server's </stream:stream>.
    #[arg(long, global = true, default_value_t = 5)]
    close_grace_secs: u64,
    /// Server process to read VmRSS from (/proc/PID/status).
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Also write the summary as JSON to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
}

fn secs(value: u64, what: &str) -> anyhow::Result<Duration> {
    ensure!(
        (1..=MAX_SECS).contains(&value),
        "{what} must be between 1 and {MAX_SECS} seconds"
    );
    Ok(Duration::from_secs(value))
}

fn plan(c: &Common) -> anyhow::Result<Plan> {
    system::check_loopback(c.server)?;
    let sources = system::parse_sources(&c.source_ips)?;
    if c.server.is_ipv6() && !sources.is_empty() {
        bail!("--source-ips are IPv4; pass --source-ips '' for an IPv6 server");
    }
    ensure!(c.users >= 1, "--users must be at least 1");
    c.first
        .checked_add(c.users)
        .context("--first plus --users overflows")?;
    ensure!(
        (1..=10_000).contains(&c.concurrency),
        "--concurrency must be between 1 and 10000"
    );
    if c.tls == TlsMode::None && c.mech == Mech::Plain {
        bail!("the server offers PLAIN over TLS only: use --mech scram-sha-256 with --tls none");
    }
    system::check_open_files(u64::from(c.users))?;
    let tls_config = match c.tls {
        TlsMode::None => None,
        mode => {
            let trust = match &c.ca {
                Some(path) => Trust::Roots(path.clone()),
                None => Trust::AnyCertificate,
            };
            Some(tls::client_config(&trust, mode == TlsMode::Direct)?)
        }
    };
    let target = Target {
        server: c.server,
        sources,
        domain: c.domain.clone(),
        user_prefix: c.user_prefix.clone(),
        password: c.password.clone(),
        tls: c.tls,
        tls_config,
        mech: c.mech,
        salted: Default::default(),
    };
    Ok(Plan {
        target: Arc::new(target),
        first: c.first,
        users: c.users,
        concurrency: c.concurrency,
        login_timeout: secs(c.login_timeout_secs, "--login-timeout-secs")?,
        close_grace: secs(c.close_grace_secs, "--close-grace-secs")?,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchboard-loadgen: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A scenario with its validated options.
enum Work {
    Idle { hold: Duration },
    Chat(chat::ChatPlan),
}

fn work(scenario: &Scenario) -> anyhow::Result<Work> {
    Ok(match *scenario {
        Scenario::Idle { hold_secs } => Work::Idle {
            hold: secs(hold_secs, "--hold-secs")?,
        },
        Scenario::Chat {
            messages,
            interval_ms,
            duration_secs,
        } => {
            ensure!(messages <= 1_000_000, "--messages must be at most 1000000");
            ensure!(
                (1..=MAX_SECS * 1000).contains(&interval_ms),
                "--interval-ms must be between 1 and {}",
                MAX_SECS * 1000
            );
            Work::Chat(chat::ChatPlan {
                messages,
                interval: Duration::from_millis(interval_ms),
                duration: secs(duration_secs, "--duration-secs")?,
            })
        }
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let c = &cli.common;
    let work = work(&cli.scenario)?;
    let plan = plan(c)?;
    let tls_name = match (c.tls, &c.ca) {
        (TlsMode::None, _) => "none".to_string(),
        (mode, Some(ca)) => format!("{mode:?} (trusting {})", ca.display()).to_lowercase(),
        (mode, None) => format!("{mode:?} (any certificate)").to_lowercase(),
    };
    eprintln!(
        "switchboard-loadgen: {} users {}{}..{}{} at {} via {}, tls {tls_name}, {}",
        c.users,
        c.user_prefix,
        c.first,
        c.user_prefix,
        c.first + c.users - 1,
        c.domain,
        c.server,
        c.mech.sasl_name()
    );
    let (name, outcome) = match work {
        Work::Idle { hold } => ("idle", idle::run(&plan, hold, c.server_pid).await?),
        Work::Chat(chat_plan) => ("chat", chat::run(&plan, chat_plan).await?),
    };
    let summary = Summary {
        scenario: name,
        server: c.server.to_string(),
        tls: format!("{:?}", c.tls).to_lowercase(),
        mech: c.mech.sasl_name().to_string(),
        users: c.users,
        outcome,
    };
    summary.print();
    if let Some(path) = &c.json {
        summary.write_json(path)?;
    }
    Ok(())
}
