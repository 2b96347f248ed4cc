//! switchboard-loadgen: logs many simulated users into a Switchboard node over loopback and
//! measures what it costs (`idle`), how fast messages flow (`chat`), how many logins per
//! second it takes (`login`), how presence fans out to contacts (`presence`), and how it
//! copes with users that keep reconnecting (`churn`); how fast it writes per-user IM
//! data: roster sets (`roster-writes`) and messages stored for offline users
//! (`offline-store`); and how it carries a mobile carrier's mix of messages, presence
//! changes and reconnects (`mixed`); how PEP notifications fan out to contacts next to
//! presence (`pep`); and how one group chat room fans out its messages (`muc`).
//!
//! Raw XML on the wire: a tiny scanner reads the few server replies a client needs.

#![forbid(unsafe_code)]

mod chat;
mod chatstep;
mod churn;
mod conn;
mod fanout;
mod idle;
mod imreport;
mod login;
mod markdown;
mod mixed;
mod mixedreport;
mod muc;
mod offlinestore;
mod pep;
mod presence;
mod probe;
mod ramp;
mod report;
mod rosterwrites;
mod scram;
mod scrape;
mod storm;
mod svg;
mod system;
mod timeline;
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
use crate::presence::Rosters;
use crate::ramp::Plan;
use crate::report::{GeneratorCpu, Summary};
use crate::system::{cpu_percent, CpuMeter};
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
        /// Send only to users connected to another --server (needs at least two).
        #[arg(long)]
        cross_node_only: bool,
        /// Stepped chat: aggregate messages/s offered by all users together, one step each
        /// (replaces --messages and --interval-ms).
        #[arg(long)]
        rates: Option<String>,
        /// Length of every message body: `lg FROM SEQ SENT_US` padded with `x`.
        #[arg(long, default_value_t = 100)]
        body_bytes: usize,
        /// Log every user in a second time and enable Message Carbons (XEP-0280) there, so
        /// each message is also carbon-copied (compare the server CPU per message with
        /// --server-pid against a run without).
        #[arg(long)]
        carbons: bool,
        /// Enable Stream Management (XEP-0198) on every session and answer the server's
        /// `<r/>` with `<a h/>`, as a mobile client does (compare the server CPU per message
        /// with --server-pid against a run without).
        #[arg(long)]
        sm: bool,
        /// Flaky network: this share of the users (percent) enable resumable stream
        /// management and now and then drop their TCP connection without closing the
        /// stream, then resume the session (XEP-0198) on the next --server; the report
        /// counts drops, resumptions and the messages lost or duplicated.
        #[arg(long, default_value_t = 0)]
        flaky_percent: u32,
        /// With --flaky-percent: mean seconds between two drops of one flaky user.
        #[arg(long, default_value_t = 5)]
        flaky_every_secs: u64,
        #[command(flatten)]
        steps: StepArgs,
    },
    /// Login storm: open connections at each target rate in turn (login, bind, presence,
    /// close); users are reused round-robin, each connection with its own resource.
    Login {
        /// Target logins per second, one step each.
        #[arg(long, default_value = "100,200,400")]
        rates: String,
        /// Length of each step: a step opens rate × step-secs connections.
        #[arg(long, default_value_t = 10)]
        step_secs: u64,
    },
    /// Groups of --group mutual contacts (subscribed through the protocol) each change
    /// presence --changes times; measures the fan-out to the contacts.
    Presence {
        /// Users per group of mutual contacts (user1..userK, userK+1..user2K, ...).
        #[arg(long, default_value_t = 10)]
        group: u32,
        /// protocol: subscribe the group members to each other; provisioned: the rosters
        /// were imported beforehand (ROSTER_GROUP=K load-tests/provision.sh), only check them.
        #[arg(long, value_enum, default_value_t = Rosters::Protocol)]
        rosters: Rosters,
        /// Presence changes each user sends.
        #[arg(long, default_value_t = 10)]
        changes: u32,
        /// Milliseconds between two changes of one user (first one at a random offset).
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Upper bound on setting up the subscriptions.
        #[arg(long, default_value_t = 60)]
        setup_secs: u64,
        /// Upper bound on the changes and their deliveries.
        #[arg(long, default_value_t = 60)]
        duration_secs: u64,
        /// Share of the sessions (0-100, spread evenly) that send Client State Indication's
        /// `<inactive/>` (XEP-0352) before the changes start; bytes received are reported
        /// for inactive and active sessions.
        #[arg(long, default_value_t = 0)]
        csi_inactive_percent: u32,
    },
    /// Groups of --group mutual contacts, logged in with entity capabilities asking for tune
    /// notifications; at stepped aggregate rates the users publish tunes (PEP, XEP-0163) or,
    /// with --event presence, change presence; measures the notifications' fan-out.
    Pep {
        /// Users per group of mutual contacts (user1..userK, ...): each has K-1 contacts.
        #[arg(long, default_value_t = 21)]
        group: u32,
        /// protocol: subscribe the group members to each other; provisioned: the rosters
        /// were imported beforehand (ROSTER_GROUP=K load-tests/provision.sh), only check them.
        #[arg(long, value_enum, default_value_t = Rosters::Protocol)]
        rosters: Rosters,
        /// What each event is: a PEP publish (tune) or a presence change.
        #[arg(long, value_enum, default_value_t = pep::EventKind::Pep)]
        event: pep::EventKind,
        /// Aggregate events/s offered by all users together, one step each.
        #[arg(long, default_value = "100,200,400")]
        rates: String,
        /// Upper bound on setting up the subscriptions.
        #[arg(long, default_value_t = 60)]
        setup_secs: u64,
        #[command(flatten)]
        steps: StepArgs,
    },
    /// All users join one group chat room (XEP-0045; the first creates it as an instant
    /// room); at stepped aggregate rates they send groupchat messages, and every occupant
    /// measures the latency of each message the room reflects (the sender's own included).
    Muc {
        /// The room's bare JID (default: bench@conference.<domain>).
        #[arg(long)]
        room: Option<String>,
        /// Aggregate groupchat messages/s offered by all occupants together, one step each.
        #[arg(long, default_value = "10,20,50,100")]
        rates: String,
        /// Upper bound on all users joining the room.
        #[arg(long, default_value_t = 60)]
        setup_secs: u64,
        /// Server processes whose CPU is summed per delivered message (a cluster's nodes,
        /// comma-separated); default: --server-pid.
        #[arg(long, value_delimiter = ',')]
        server_pids: Vec<u32>,
        /// Occupants that send (the first ones); the others only receive.
        #[arg(long, default_value_t = 10)]
        senders: u32,
        #[command(flatten)]
        steps: StepArgs,
    },
    /// Users reconnecting in cycles: login, online for a random pause, disconnect, offline
    /// for a random pause, again.
    Churn {
        /// Login/disconnect cycles per user.
        #[arg(long, default_value_t = 5)]
        cycles: u32,
        /// Shortest online or offline pause, in milliseconds.
        #[arg(long, default_value_t = 500)]
        min_pause_ms: u64,
        /// Longest online or offline pause, in milliseconds.
        #[arg(long, default_value_t = 5000)]
        max_pause_ms: u64,
        /// Share of disconnects (0-100) that drop the TCP connection without closing the
        /// stream, like a phone losing its network.
        #[arg(long, default_value_t = 0)]
        drop_percent: u8,
        /// No login starts after this.
        #[arg(long, default_value_t = 300)]
        duration_secs: u64,
    },
    /// Every user adds new contacts to its roster (jabber:iq:roster sets) with up to
    /// --outstanding in flight; counts acknowledged writes/s, errors and latency.
    RosterWrites {
        /// Roster sets in flight per user at most.
        #[arg(long, default_value_t = 4)]
        outstanding: u32,
        /// Aggregate target writes/s, one step each; "max" for as fast as the window allows
        /// (e.g. 500,1000,max). Without it: one step as fast as possible for --duration-secs.
        #[arg(long)]
        rates: Option<String>,
        /// With --rates: length of each step.
        #[arg(long, default_value_t = 5)]
        step_secs: u64,
        /// Longest wait after each step for its replies in flight.
        #[arg(long, default_value_t = 5)]
        drain_secs: u64,
        /// Upper bound on all steps together (without --rates: the length of the run).
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        /// Domain of the contacts added (nothing is sent to them).
        #[arg(long, default_value = "bench.example")]
        contact_domain: String,
    },
    /// Logged-in senders send messages to --recipients accounts that are not logged in (the
    /// users after the senders' range), so the server stores them; then the recipients log
    /// in and count what is delivered.
    OfflineStore {
        /// Recipient accounts (user<first+users> onwards); provisioned, not logged in.
        #[arg(long, default_value_t = 100)]
        recipients: u32,
        /// Messages each sender sends.
        #[arg(long, default_value_t = 10)]
        messages: u32,
        /// Aggregate messages/s over all senders (default: as fast as possible).
        #[arg(long)]
        rate: Option<u32>,
        /// Length of each message body.
        #[arg(long, default_value_t = 100)]
        body_bytes: usize,
        /// Upper bound on sending.
        #[arg(long, default_value_t = 60)]
        duration_secs: u64,
        /// Upper bound on waiting, after sending, for the server to deal with every message.
        #[arg(long, default_value_t = 30)]
        drain_secs: u64,
        /// Upper bound on the recipients' logins and deliveries.
        #[arg(long, default_value_t = 60)]
        verify_secs: u64,
        /// The server's im.max_offline_messages: a plan putting more on one recipient is
        /// refused.
        #[arg(long, default_value_t = 500)]
        offline_quota: u32,
        /// Prometheus endpoints (http://IP:PORT/metrics, loopback) whose
        /// switchboard_routed_total{destination="offline"} is read during the run.
        #[arg(long, value_delimiter = ',')]
        metrics: Vec<String>,
        /// Messages to one recipient before the vCard query that acknowledges them.
        #[arg(long, default_value_t = 10)]
        batch: u32,
        /// Unacknowledged batches per sender at most (0: no limit).
        #[arg(long, default_value_t = 2)]
        window: u32,
    },
    /// A mobile carrier's users: each one, at random (exponential) intervals, sends a chat
    /// message to a random other user, changes its presence, and reconnects.
    Mixed {
        /// Mean seconds between two messages of one user (fractions allowed; 0: none).
        #[arg(long, default_value_t = 600.0)]
        message_interval_secs: f64,
        /// Mean seconds between two presence changes of one user (0: none).
        #[arg(long, default_value_t = 600.0)]
        presence_interval_secs: f64,
        /// Mean seconds from a login to the user's next reconnect (0: none).
        #[arg(long, default_value_t = 600.0)]
        reconnect_interval_secs: f64,
        /// Length of every message body.
        #[arg(long, default_value_t = 100)]
        body_bytes: usize,
        /// Share of reconnects (0-100) that drop the TCP connection without closing the
        /// stream.
        #[arg(long, default_value_t = 0)]
        drop_percent: u8,
        /// Shortest pause away before logging in again (and shortest session after it), in
        /// milliseconds.
        #[arg(long, default_value_t = 1000)]
        min_pause_ms: u64,
        /// Longest pause away before logging in again, in milliseconds.
        #[arg(long, default_value_t = 5000)]
        max_pause_ms: u64,
        /// No event starts after this.
        #[arg(long, default_value_t = 300)]
        duration_secs: u64,
        /// Longest wait after the events for messages in flight and users logging in again.
        #[arg(long, default_value_t = 10)]
        drain_secs: u64,
    },
}

/// The steps of a stepped run: `chat --rates` (there only with --rates) and `pep`.
#[derive(Args)]
#[command(next_help_heading = "Steps (chat: only with --rates)")]
struct StepArgs {
    /// Length of each step.
    #[arg(long, default_value_t = 5)]
    step_secs: u64,
    /// Longest wait after each step for its messages or notifications in flight.
    #[arg(long, default_value_t = 5)]
    drain_secs: u64,
    /// A step is sustained if its p99 latency is below this.
    #[arg(long, default_value_t = 100)]
    p99_limit_ms: u64,
    /// Stop after this many steps in a row not sustained (0: run all).
    #[arg(long, default_value_t = 2)]
    stop_after: u32,
    /// Stepped chat: a node's Prometheus endpoint (http://IP:PORT/metrics, loopback; once per
    /// node). A step during which `switchboard_mam_not_archived_total` grew (the archive did
    /// not keep every message) is not sustained.
    #[arg(long = "archive-metrics")]
    archive_metrics: Vec<String>,
}

impl StepArgs {
    /// The steps at `rates` ("100,200,400"), checked against
    /// [`chatstep::MAX_MESSAGES`] `events` ("messages") in all.
    fn plan(&self, rates: &str, events: &str) -> anyhow::Result<chatstep::StepPlan> {
        let rates = storm::parse_rates(rates)?;
        let step = secs(self.step_secs, "--step-secs")?;
        let total: u64 = rates.iter().map(|&r| u64::from(r) * self.step_secs).sum();
        ensure!(
            total <= chatstep::MAX_MESSAGES,
            "the steps would send {total} {events}; at most {}",
            chatstep::MAX_MESSAGES
        );
        Ok(chatstep::StepPlan {
            rates,
            step,
            drain: secs(self.drain_secs, "--drain-secs")?,
            p99_limit: millis(self.p99_limit_ms, "--p99-limit-ms")?,
            stop_after: self.stop_after,
            archive_metrics: self
                .archive_metrics
                .iter()
                .map(|m| scrape::Endpoint::parse(m))
                .collect::<anyhow::Result<_>>()?,
        })
    }
}

#[derive(Args)]
struct Common {
    /// Server c2s address (the tls_listen port with --tls direct); loopback only. Several
    /// (comma-separated or repeated) spread the users: user i connects to the (i mod n)-th.
    #[arg(
        long,
        global = true,
        value_name = "ADDR",
        value_delimiter = ',',
        default_value = "127.0.0.1:5222"
    )]
    server: Vec<SocketAddr>,
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
    /// Server process to read VmRSS (idle, /proc/PID/status) and CPU time (chat,
    /// /proc/PID/stat) from.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Also write the summary as JSON to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Write report.md and SVG charts into this directory.
    #[arg(long, global = true)]
    report: Option<PathBuf>,
}

fn secs(value: u64, what: &str) -> anyhow::Result<Duration> {
    ensure!(
        (1..=MAX_SECS).contains(&value),
        "{what} must be between 1 and {MAX_SECS} seconds"
    );
    Ok(Duration::from_secs(value))
}

fn plan(c: &Common, initial_presence: String) -> anyhow::Result<Plan> {
    ensure!(!c.server.is_empty(), "--server needs at least one address");
    for (i, server) in c.server.iter().enumerate() {
        system::check_loopback(*server)?;
        ensure!(
            !c.server[..i].contains(server),
            "--server {server} is given twice"
        );
    }
    let sources = system::parse_sources(&c.source_ips)?;
    if c.server.iter().any(SocketAddr::is_ipv6) && !sources.is_empty() {
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
    // PLAIN over --tls none is the server's call: Switchboard offers PLAIN over TLS only (the
    // login then fails with "PLAIN not offered"), Prosody and ejabberd can be set to offer it.
    // The generator's own CPU is in every summary.
    system::process_cpu_time()?;
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
        servers: c.server.clone(),
        sources,
        domain: c.domain.clone(),
        user_prefix: c.user_prefix.clone(),
        password: c.password.clone(),
        tls: c.tls,
        tls_config,
        mech: c.mech,
        salted: Default::default(),
        initial_presence,
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

/// Upper bound on the connections a login storm opens in all.
const MAX_STORM_ATTEMPTS: u64 = 10_000_000;

/// A scenario with its validated options.
enum Work {
    Idle { hold: Duration },
    Chat(chat::ChatPlan),
    Login(storm::StormPlan),
    Presence(presence::PresencePlan),
    Churn(churn::ChurnPlan),
    RosterWrites(rosterwrites::RosterPlan),
    OfflineStore(offlinestore::OfflinePlan),
    Mixed(mixed::MixedPlan),
    Pep(pep::PepPlan),
    Muc(muc::MucPlan),
}

fn millis(value: u64, what: &str) -> anyhow::Result<Duration> {
    ensure!(
        (1..=MAX_SECS * 1000).contains(&value),
        "{what} must be between 1 and {}",
        MAX_SECS * 1000
    );
    Ok(Duration::from_millis(value))
}

/// `--body-bytes`, checked.
fn body_bytes(value: usize) -> anyhow::Result<usize> {
    ensure!(
        (probe::MIN_BODY..=probe::MAX_BODY).contains(&value),
        "--body-bytes must be between {} and {}",
        probe::MIN_BODY,
        probe::MAX_BODY
    );
    Ok(value)
}

/// A mean interval in seconds for `mixed`: 0 turns the event off; otherwise 0.01 s to a day,
/// and at most [`mixed::MAX_EVENTS`] such events for `users` over `duration`.
fn mean_interval(
    value: f64,
    what: &str,
    users: u32,
    duration: Duration,
) -> anyhow::Result<Option<Duration>> {
    if value == 0.0 {
        return Ok(None);
    }
    ensure!(
        value.is_finite() && (0.01..=MAX_SECS as f64).contains(&value),
        "{what} must be 0 (off) or between 0.01 and {MAX_SECS} seconds"
    );
    let events = f64::from(users) * duration.as_secs_f64() / value;
    ensure!(
        events <= mixed::MAX_EVENTS,
        "{what} {value} for {users} users over {} s plans about {events:.0} events; at most {}",
        duration.as_secs(),
        mixed::MAX_EVENTS
    );
    Ok(Some(Duration::from_secs_f64(value)))
}

fn work(
    scenario: &Scenario,
    servers: usize,
    users: u32,
    server_pid: Option<u32>,
    domain: &str,
) -> anyhow::Result<Work> {
    Ok(match *scenario {
        Scenario::Idle { hold_secs } => Work::Idle {
            hold: secs(hold_secs, "--hold-secs")?,
        },
        Scenario::Chat {
            messages,
            interval_ms,
            duration_secs,
            cross_node_only,
            ref rates,
            ref steps,
            body_bytes: body,
            carbons,
            sm,
            flaky_percent,
            flaky_every_secs,
        } => {
            ensure!(messages <= 1_000_000, "--messages must be at most 1000000");
            ensure!(
                flaky_percent <= 100,
                "--flaky-percent must be between 0 and 100"
            );
            let flaky = (flaky_percent > 0)
                .then(|| -> anyhow::Result<chat::FlakyPlan> {
                    Ok(chat::FlakyPlan {
                        percent: flaky_percent,
                        every: secs(flaky_every_secs, "--flaky-every-secs")?,
                    })
                })
                .transpose()?;
            ensure!(
                !cross_node_only || servers >= 2,
                "--cross-node-only needs at least two --server addresses"
            );
            ensure!(
                (1..=MAX_SECS * 1000).contains(&interval_ms),
                "--interval-ms must be between 1 and {}",
                MAX_SECS * 1000
            );
            let steps = match rates {
                None => None,
                Some(rates) => {
                    ensure!(
                        !cross_node_only,
                        "--rates does not support --cross-node-only"
                    );
                    ensure!(!carbons, "--rates does not support --carbons");
                    ensure!(!sm, "--rates does not support --sm");
                    ensure!(flaky.is_none(), "--rates does not support --flaky-percent");
                    Some(steps.plan(rates, "messages")?)
                }
            };
            Work::Chat(chat::ChatPlan {
                messages,
                interval: Duration::from_millis(interval_ms),
                duration: secs(duration_secs, "--duration-secs")?,
                cross_node_only,
                steps,
                body_bytes: body_bytes(body)?,
                carbons,
                sm,
                flaky,
                server_pid,
            })
        }
        Scenario::Login {
            ref rates,
            step_secs,
        } => {
            let rates = storm::parse_rates(rates)?;
            let step = secs(step_secs, "--step-secs")?;
            let attempts: u64 = rates.iter().map(|&r| u64::from(r) * step_secs).sum();
            ensure!(
                attempts <= MAX_STORM_ATTEMPTS,
                "the storm would open {attempts} connections; at most {MAX_STORM_ATTEMPTS}"
            );
            Work::Login(storm::StormPlan { rates, step })
        }
        Scenario::Presence {
            group,
            rosters,
            changes,
            interval_ms,
            setup_secs,
            duration_secs,
            csi_inactive_percent,
        } => {
            ensure!(
                csi_inactive_percent <= 100,
                "--csi-inactive-percent must be at most 100"
            );
            ensure!(
                (2..=1000).contains(&group),
                "--group must be between 2 and 1000"
            );
            ensure!(changes <= 1_000_000, "--changes must be at most 1000000");
            Work::Presence(presence::PresencePlan {
                group,
                rosters,
                changes,
                interval: millis(interval_ms, "--interval-ms")?,
                setup: secs(setup_secs, "--setup-secs")?,
                duration: secs(duration_secs, "--duration-secs")?,
                csi_inactive_percent,
            })
        }
        Scenario::Pep {
            group,
            rosters,
            event,
            ref rates,
            ref steps,
            setup_secs,
        } => {
            ensure!(
                (2..=1000).contains(&group),
                "--group must be between 2 and 1000"
            );
            Work::Pep(pep::PepPlan {
                group,
                rosters,
                event,
                steps: steps.plan(rates, "events")?,
                setup: secs(setup_secs, "--setup-secs")?,
                server_pid,
            })
        }
        Scenario::Muc {
            ref room,
            ref rates,
            setup_secs,
            ref server_pids,
            senders,
            ref steps,
        } => {
            ensure!(senders >= 1, "--senders must be at least 1");
            let room = room
                .clone()
                .unwrap_or_else(|| format!("bench@conference.{domain}"));
            ensure!(
                room.contains('@') && !room.contains('/'),
                "--room must be a bare JID (room@service)"
            );
            let server_pids = if server_pids.is_empty() {
                server_pid.into_iter().collect()
            } else {
                server_pids.clone()
            };
            Work::Muc(muc::MucPlan {
                room,
                steps: steps.plan(rates, "messages")?,
                setup: secs(setup_secs, "--setup-secs")?,
                server_pids,
                senders,
            })
        }
        Scenario::Churn {
            cycles,
            min_pause_ms,
            max_pause_ms,
            drop_percent,
            duration_secs,
        } => {
            ensure!(
                (1..=1_000_000).contains(&cycles),
                "--cycles must be between 1 and 1000000"
            );
            ensure!(
                min_pause_ms <= max_pause_ms,
                "--min-pause-ms must not exceed --max-pause-ms"
            );
            ensure!(drop_percent <= 100, "--drop-percent must be at most 100");
            Work::Churn(churn::ChurnPlan {
                cycles,
                pause_min: Duration::from_millis(min_pause_ms),
                pause_max: millis(max_pause_ms, "--max-pause-ms")?,
                drop_percent,
                duration: secs(duration_secs, "--duration-secs")?,
            })
        }
        Scenario::RosterWrites {
            outstanding,
            ref rates,
            step_secs,
            drain_secs,
            duration_secs,
            ref contact_domain,
        } => {
            ensure!(
                (1..=1000).contains(&outstanding),
                "--outstanding must be between 1 and 1000"
            );
            ensure!(
                !contact_domain.is_empty()
                    && contact_domain
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'),
                "--contact-domain must be a plain domain name"
            );
            let duration = secs(duration_secs, "--duration-secs")?;
            let (rates, step) = match rates {
                Some(list) => (
                    rosterwrites::parse_rates(list)?,
                    secs(step_secs, "--step-secs")?,
                ),
                None => (vec![None], duration),
            };
            Work::RosterWrites(rosterwrites::RosterPlan {
                outstanding,
                rates,
                step,
                drain: secs(drain_secs, "--drain-secs")?,
                duration,
                contact_domain: contact_domain.clone(),
            })
        }
        Scenario::OfflineStore {
            recipients,
            messages,
            rate,
            body_bytes: body,
            duration_secs,
            drain_secs,
            verify_secs,
            offline_quota,
            ref metrics,
            batch,
            window,
        } => {
            ensure!(
                (1..=100_000).contains(&batch),
                "--batch must be between 1 and 100000"
            );
            ensure!(window <= 100_000, "--window must be at most 100000");
            ensure!(
                (1..=1_000_000).contains(&recipients),
                "--recipients must be between 1 and 1000000"
            );
            ensure!(
                (1..=1_000_000).contains(&messages),
                "--messages must be between 1 and 1000000"
            );
            if let Some(rate) = rate {
                ensure!(
                    (1..=1_000_000).contains(&rate),
                    "--rate must be between 1 and 1000000"
                );
            }
            ensure!(offline_quota >= 1, "--offline-quota must be at least 1");
            let metrics = metrics
                .iter()
                .map(|m| scrape::Endpoint::parse(m))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Work::OfflineStore(offlinestore::OfflinePlan {
                recipients,
                messages,
                rate,
                body_bytes: body_bytes(body)?,
                duration: secs(duration_secs, "--duration-secs")?,
                drain: secs(drain_secs, "--drain-secs")?,
                verify: secs(verify_secs, "--verify-secs")?,
                quota: offline_quota,
                metrics,
                batch,
                window,
            })
        }
        Scenario::Mixed {
            message_interval_secs,
            presence_interval_secs,
            reconnect_interval_secs,
            body_bytes: body,
            drop_percent,
            min_pause_ms,
            max_pause_ms,
            duration_secs,
            drain_secs,
        } => {
            let duration = secs(duration_secs, "--duration-secs")?;
            let interval = |value, what| mean_interval(value, what, users, duration);
            let plan = mixed::MixedPlan {
                message_interval: interval(message_interval_secs, "--message-interval-secs")?,
                presence_interval: interval(presence_interval_secs, "--presence-interval-secs")?,
                reconnect_interval: interval(reconnect_interval_secs, "--reconnect-interval-secs")?,
                body_bytes: body_bytes(body)?,
                drop_percent,
                pause_min: Duration::from_millis(min_pause_ms),
                pause_max: millis(max_pause_ms, "--max-pause-ms")?,
                duration,
                drain: secs(drain_secs, "--drain-secs")?,
            };
            ensure!(
                plan.message_interval.is_some()
                    || plan.presence_interval.is_some()
                    || plan.reconnect_interval.is_some(),
                "every interval is 0: mixed has nothing to do"
            );
            ensure!(drop_percent <= 100, "--drop-percent must be at most 100");
            ensure!(
                min_pause_ms <= max_pause_ms,
                "--min-pause-ms must not exceed --max-pause-ms"
            );
            Work::Mixed(plan)
        }
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let c = &cli.common;
    let work = work(
        &cli.scenario,
        c.server.len(),
        c.users,
        c.server_pid,
        &c.domain,
    )?;
    // `pep`'s clients announce their entity capabilities from the start (XEP-0115 §4).
    let initial_presence = match work {
        Work::Pep(_) => pep::Caps::new().initial_presence(),
        _ => "<presence/>".to_string(),
    };
    let plan = plan(c, initial_presence)?;
    let servers = c
        .server
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(",");
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
        servers,
        c.mech.sasl_name()
    );
    // The IM-data scenarios and `mixed` add a part of their own to the summary.
    let mut extra = None;
    let meter = CpuMeter::start();
    let (name, outcome) = match work {
        Work::Idle { hold } => ("idle", idle::run(&plan, hold, c.server_pid).await?),
        Work::Chat(chat_plan) => ("chat", chat::run(&plan, chat_plan).await?),
        Work::Login(storm_plan) => ("login", storm::run(&plan, storm_plan).await?),
        Work::Presence(presence_plan) => ("presence", presence::run(&plan, presence_plan).await?),
        Work::Churn(churn_plan) => ("churn", churn::run(plan, churn_plan).await?),
        Work::RosterWrites(roster_plan) => {
            let (outcome, summary) = rosterwrites::run(&plan, roster_plan).await?;
            extra = Some(imreport::Extra::Roster(Box::new(summary)));
            ("roster-writes", outcome)
        }
        Work::OfflineStore(offline_plan) => {
            let (outcome, summary) = offlinestore::run(&plan, offline_plan).await?;
            extra = Some(imreport::Extra::Offline(Box::new(summary)));
            ("offline-store", outcome)
        }
        Work::Pep(pep_plan) => {
            let (outcome, summary) = pep::run(&plan, pep_plan).await?;
            extra = Some(imreport::Extra::Pep(Box::new(summary)));
            ("pep", outcome)
        }
        Work::Muc(muc_plan) => {
            let (outcome, summary) = muc::run(&plan, muc_plan).await?;
            extra = Some(imreport::Extra::Muc(Box::new(summary)));
            ("muc", outcome)
        }
        Work::Mixed(mixed_plan) => {
            let (outcome, summary) = mixed::run(&plan, mixed_plan).await?;
            extra = Some(imreport::Extra::Mixed(Box::new(summary)));
            ("mixed", outcome)
        }
    };
    let (cpu, wall) = (meter.cpu(), meter.wall());
    let generator = GeneratorCpu {
        generator_cpu_secs: cpu.as_secs_f64(),
        generator_wall_secs: wall.as_secs_f64(),
        generator_cpu_percent: cpu_percent(cpu, wall),
        generator_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let summary = Summary {
        scenario: name,
        server: servers,
        tls: format!("{:?}", c.tls).to_lowercase(),
        mech: c.mech.sasl_name().to_string(),
        users: c.users,
        generator,
        outcome,
    };
    if let Some(extra) = &extra {
        return imreport::output(&summary, extra, c.json.as_deref(), c.report.as_deref());
    }
    summary.print();
    if let Some(path) = &c.json {
        summary.write_json(path)?;
    }
    if let Some(dir) = &c.report {
        markdown::write_report(dir, &summary)?;
        eprintln!("report: {}", dir.join("report.md").display());
    }
    Ok(())
}
